//! Encoders for arrow-json's writer where its own ones spend the CPU: object keys and
//! strings.
//!
//! arrow-json escapes every key of every object through `serde_json` again for each row
//! (10 keys a record: 8% of a JSON lines -> JSON lines pipeline's instructions), and
//! every string value byte by byte through an escape table (another 7%). Keys are the
//! same in every row, so [`FastEncoders`] escapes them once per batch. A string column
//! whose bytes hold nothing to escape (no `"`, `\` or control byte, which one vectorised
//! pass over its values buffer tells) is copied value by value between quotes; any other
//! column keeps arrow-json's encoder. The output is byte for byte arrow-json's.

use arrow_array::cast::AsArray;
use arrow_array::{Array, GenericStringArray, OffsetSizeTrait};
use arrow_json::writer::{make_encoder, Encoder, EncoderFactory, EncoderOptions, NullableEncoder};
use arrow_json::StructMode;
use arrow_schema::{ArrowError, DataType, FieldRef};

/// Hands arrow-json's writer the object and string encoders of this module.
#[derive(Debug)]
pub(crate) struct FastEncoders;

impl EncoderFactory for FastEncoders {
    fn make_default_encoder<'a>(
        &self,
        _field: &'a FieldRef,
        array: &'a dyn Array,
        options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        let encoder: Box<dyn Encoder + 'a> = match array.data_type() {
            DataType::Struct(fields) if options.struct_mode() == StructMode::ObjectOnly => {
                let members = fields
                    .iter()
                    .zip(array.as_struct().columns())
                    .map(|(field, column)| {
                        Ok(Member {
                            key: key(field.name()),
                            value: make_encoder(field, column.as_ref(), options)?,
                        })
                    })
                    .collect::<Result<_, ArrowError>>()?;
                Box::new(Object {
                    members,
                    explicit_nulls: options.explicit_nulls(),
                })
            }
            DataType::Utf8 => match clean(array.as_string::<i32>()) {
                Some(strings) => strings,
                None => return Ok(None),
            },
            DataType::LargeUtf8 => match clean(array.as_string::<i64>()) {
                Some(strings) => strings,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(Some(NullableEncoder::new(encoder, array.nulls().cloned())))
    }
}

/// `"name":` as arrow-json writes it.
fn key(name: &str) -> Vec<u8> {
    // serde_json's escaping, as arrow-json's; writing into a Vec cannot fail
    let mut out = serde_json::to_vec(name).unwrap_or_default();
    out.push(b':');
    out
}

struct Member<'a> {
    key: Vec<u8>,
    value: NullableEncoder<'a>,
}

/// A struct (or the batch's row) as a JSON object, its keys escaped once.
struct Object<'a> {
    members: Vec<Member<'a>>,
    explicit_nulls: bool,
}

impl Encoder for Object<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for m in &mut self.members {
            let null = m.value.is_null(idx);
            if null && !self.explicit_nulls {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&m.key);
            if null {
                out.extend_from_slice(b"null");
            } else {
                m.value.encode(idx, out);
            }
        }
        out.push(b'}');
    }
}

/// Strings of an array with nothing to escape, copied between quotes.
struct CleanStrings<'a, O: OffsetSizeTrait>(&'a GenericStringArray<O>);

impl<O: OffsetSizeTrait> Encoder for CleanStrings<'_, O> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let s = self.0.value(idx).as_bytes();
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    }
}

/// The clean-string encoder for `array`, or `None` when a value in it needs escaping.
fn clean<'a, O: OffsetSizeTrait>(
    array: &'a GenericStringArray<O>,
) -> Option<Box<dyn Encoder + 'a>> {
    let offsets = array.value_offsets();
    let (first, last) = (offsets[0].as_usize(), offsets[offsets.len() - 1].as_usize());
    let bytes = &array.values()[first..last];
    // fixed-size chunks without an early exit inside them, so the test vectorises
    let dirty = bytes.chunks(64).any(|chunk| {
        chunk.iter().fold(false, |acc, &b| {
            acc | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    });
    (!dirty).then(|| Box::new(CleanStrings(array)) as Box<dyn Encoder + 'a>)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{ArrayRef, Int32Array, RecordBatch, StringArray, StructArray};
    use arrow_schema::Field;
    use std::sync::Arc;

    fn write(batch: &RecordBatch, fast: bool, explicit_nulls: bool) -> String {
        let mut b = arrow_json::WriterBuilder::new().with_explicit_nulls(explicit_nulls);
        if fast {
            b = b.with_encoder_factory(Arc::new(FastEncoders));
        }
        let mut w = b.build::<_, arrow_json::writer::LineDelimited>(Vec::new());
        w.write(batch).unwrap();
        w.finish().unwrap();
        String::from_utf8(w.into_inner()).unwrap()
    }

    fn assert_same(batch: &RecordBatch) {
        for explicit_nulls in [true, false] {
            for offset in 0..batch.num_rows() {
                let b = batch.slice(offset, batch.num_rows() - offset);
                assert_eq!(
                    write(&b, true, explicit_nulls),
                    write(&b, false, explicit_nulls)
                );
            }
        }
    }

    #[test]
    fn every_byte_in_a_string_is_written_as_arrow_json_writes_it() {
        let values: Vec<String> = (0u8..0x80)
            .map(char::from)
            .chain(['é', '€', '😀'])
            .map(|c| format!("ab{c}cd"))
            .collect();
        let batch =
            RecordBatch::try_from_iter([("s", Arc::new(StringArray::from(values)) as ArrayRef)])
                .unwrap();
        assert_same(&batch);
    }

    #[test]
    fn objects_lists_nulls_and_escaped_keys_are_written_as_arrow_json_writes_them() {
        let clean = StringArray::from(vec![Some("plain"), None, Some(""), Some("é€")]);
        // one value to escape, in a slice that can leave it out
        let dirty = StringArray::from(vec![Some("q\"u\\o\nte\u{1}"), Some("x"), None, Some("y")]);
        let large = arrow_array::LargeStringArray::from(vec![Some("a"), None, Some("b\tc"), None]);
        let mut tags = ListBuilder::new(StringBuilder::new());
        for row in [vec!["a\"b", "c"], vec![], vec!["\u{2}"], vec!["d"]] {
            for t in row {
                tags.values().append_value(t);
            }
            tags.append(true);
        }
        let inner = StructArray::from(vec![
            (
                Arc::new(Field::new("n\"ested", arrow_schema::DataType::Int32, true)),
                Arc::new(Int32Array::from(vec![Some(1), None, Some(3), Some(4)])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("s", arrow_schema::DataType::Utf8, true)),
                Arc::new(clean.clone()) as ArrayRef,
            ),
        ]);
        let inner = StructArray::new(
            inner.fields().clone(),
            inner.columns().to_vec(),
            Some(vec![true, false, true, true].into()),
        );
        let batch = RecordBatch::try_from_iter([
            ("clean", Arc::new(clean) as ArrayRef),
            ("dirty", Arc::new(dirty) as _),
            ("large", Arc::new(large) as _),
            ("tags", Arc::new(tags.finish()) as _),
            ("obj\\ect", Arc::new(inner) as _),
        ])
        .unwrap();
        assert_same(&batch);
    }

    #[test]
    fn a_string_array_is_clean_only_without_bytes_to_escape() {
        assert!(clean(&StringArray::from(vec!["a", "é", "\u{7f}", "/"])).is_some());
        for bad in ["\"", "\\", "\n", "\u{0}", "\u{1f}"] {
            let long = format!("{}{bad}", "x".repeat(100));
            assert!(
                clean(&StringArray::from(vec!["a", bad])).is_none(),
                "{bad:?}"
            );
            assert!(clean(&StringArray::from(vec![long])).is_none(), "{bad:?}");
        }
        // a slice is judged by its own values only
        let a = StringArray::from(vec!["\"", "fine"]);
        assert!(clean(&a.slice(1, 1)).is_some());
    }
}
