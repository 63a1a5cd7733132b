//! Key templates: `orders/dt={event_date}/region={region}/`.
//!
//! A template is literal text with placeholders: `{column}` (the row's value),
//! `{column:FORMAT}` (a date or timestamp column formatted with strftime, in UTC: event
//! time) and `{@now:FORMAT}` (the clock when the batch is written: processing time).
//! Values come from data, so they are escaped to stay inside their path segment: every
//! byte outside `A-Z a-z 0-9 - _ . ~` is percent-encoded (`/` too), a value of only dots
//! is encoded whole, and a null or empty value is `__HIVE_DEFAULT_PARTITION__`, the
//! name Hive, Spark and pyarrow read back as null. Formatted times keep `/` (the format
//! comes from the pipeline file, not from data), so `{ts:%Y/%m/%d}` makes folders.

use std::collections::HashMap;
use std::fmt::Write as _;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, TimeUnit};
use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Utc};
use connector_api::{Error, Result};

/// The name of a null or empty partition value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Literal(String),
    Column {
        name: String,
        format: Option<String>,
    },
    Now(String),
}

/// A parsed key template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

impl Template {
    /// Parses `text`; errors name the problem.
    pub fn parse(text: &str) -> Result<Template> {
        let mut segments = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    segments.push(Segment::Literal(rest.to_string()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(Error::config(format!(
                        "prefix \"{text}\": '}}' without an opening '{{'"
                    )))
                }
                Some(i) => {
                    if i > 0 {
                        segments.push(Segment::Literal(rest[..i].to_string()));
                    }
                    let close = rest[i..].find('}').ok_or_else(|| {
                        Error::config(format!("prefix \"{text}\": '{{' is never closed"))
                    })? + i;
                    let inner = &rest[i + 1..close];
                    let (name, format) = match inner.split_once(':') {
                        Some((n, f)) => (n.trim(), Some(f.to_string())),
                        None => (inner.trim(), None),
                    };
                    if name.is_empty() || name.contains('{') {
                        return Err(Error::config(format!(
                            "prefix \"{text}\": empty placeholder \"{{{inner}}}\""
                        )));
                    }
                    if let Some(f) = &format {
                        if StrftimeItems::new(f).any(|item| matches!(item, Item::Error)) {
                            return Err(Error::config(format!(
                                "prefix \"{text}\": \"{f}\" is not a valid strftime format"
                            )));
                        }
                    }
                    segments.push(match (name, format) {
                        ("@now", Some(f)) => Segment::Now(f),
                        ("@now", None) => {
                            return Err(Error::config(format!(
                                "prefix \"{text}\": {{@now}} needs a format, e.g. {{@now:%Y-%m-%d}}"
                            )))
                        }
                        (n, _) if n.starts_with('@') => {
                            return Err(Error::config(format!(
                                "prefix \"{text}\": unknown placeholder \"{n}\" (only @now)"
                            )))
                        }
                        (n, format) => Segment::Column {
                            name: n.to_string(),
                            format,
                        },
                    });
                    rest = &rest[close + 1..];
                }
            }
        }
        if text.starts_with('/') {
            return Err(Error::config(format!(
                "prefix \"{text}\" must not start with '/'"
            )));
        }
        for s in &segments {
            if let Segment::Literal(l) = s {
                if l.split('/').any(|part| part == "..") {
                    return Err(Error::config(format!(
                        "prefix \"{text}\" must not contain \"..\""
                    )));
                }
            }
        }
        Ok(Template { segments })
    }

    /// True when some placeholder takes its value from the records.
    pub fn uses_columns(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Column { .. }))
    }

    /// The literal start of every key the template renders, cut after its last `/`:
    /// where the sink's objects (and its state) live.
    pub fn static_prefix(&self) -> String {
        let lit = match self.segments.first() {
            Some(Segment::Literal(l)) if self.segments.len() == 1 => folder(l),
            Some(Segment::Literal(l)) => l.clone(),
            _ => String::new(),
        };
        match lit.rfind('/') {
            Some(i) => lit[..=i].to_string(),
            None => String::new(),
        }
    }

    /// How many `/` the folders the template renders have after the static prefix: a
    /// value is one path segment, but a time format may hold `/` (and its null, one
    /// segment, none).
    pub fn depths(&self) -> std::ops::RangeInclusive<usize> {
        let mut text = String::new();
        let mut in_formats = 0;
        for s in &self.segments {
            match s {
                Segment::Literal(l) => text.push_str(l),
                Segment::Now(f)
                | Segment::Column {
                    format: Some(f), ..
                } => {
                    in_formats += f.matches('/').count();
                    text.push('x');
                }
                Segment::Column { .. } => text.push('x'),
            }
        }
        let least = folder(&text).matches('/').count() - self.static_prefix().matches('/').count();
        least..=least + in_formats
    }

    /// The folder of each row of `batch`, grouped: folder -> row indices, in order of
    /// first appearance. A template without columns gives one group.
    pub fn render(
        &self,
        batch: &RecordBatch,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, Vec<u32>)>> {
        let rows = batch.num_rows();
        if !self.uses_columns() {
            let mut key = String::new();
            for s in &self.segments {
                match s {
                    Segment::Literal(l) => key.push_str(l),
                    Segment::Now(f) => escape_time(&mut key, &now.format(f).to_string()),
                    Segment::Column { .. } => unreachable!("checked by uses_columns"),
                }
            }
            return Ok(vec![(folder(&key), (0..rows as u32).collect())]);
        }
        let mut columns = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            columns.push(match s {
                Segment::Column { name, format } => {
                    let array = batch.column_by_name(name).ok_or_else(|| {
                        Error::schema(format!(
                            "prefix names column \"{name}\", which the records do not have"
                        ))
                    })?;
                    Some(ColumnValues::new(name, array, format.as_deref())?)
                }
                _ => None,
            });
        }
        let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut key = String::new();
        for row in 0..rows {
            key.clear();
            for (s, col) in self.segments.iter().zip(&columns) {
                match (s, col) {
                    (Segment::Literal(l), _) => key.push_str(l),
                    (Segment::Now(f), _) => escape_time(&mut key, &now.format(f).to_string()),
                    (Segment::Column { .. }, Some(c)) => c.write(&mut key, row)?,
                    (Segment::Column { .. }, None) => unreachable!("built above"),
                }
            }
            let k = folder(&key);
            match index.get(&k) {
                Some(&i) => groups[i].1.push(row as u32),
                None => {
                    index.insert(k.clone(), groups.len());
                    groups.push((k, vec![row as u32]));
                }
            }
        }
        Ok(groups)
    }
}

/// The longest object key S3 takes, in bytes of UTF-8.
pub const MAX_KEY: usize = 1024;

/// The rows of `groups` (from [`Template::render`]) whose object key, the folder plus
/// a file name of `name_len` bytes, would be longer than S3 takes: each a reject naming
/// the folder, with the row as JSON. AWS answers such a key with KeyTooLongError (some
/// S3 APIs take it), so it is refused before anything of the batch is written.
pub fn too_long(
    groups: &[(String, Vec<u32>)],
    name_len: usize,
    batch: &RecordBatch,
) -> Result<Vec<(usize, connector_api::Reject)>> {
    let mut out = Vec::new();
    let mut texts = None;
    for (folder, rows) in groups {
        let len = folder.len() + name_len;
        if len <= MAX_KEY {
            continue;
        }
        let texts = match &mut texts {
            Some(t) => t,
            None => texts.insert(sluice_formats::row_texts(batch)?),
        };
        let shown: String = folder.chars().take(100).collect();
        for &row in rows {
            let error = Error::data(format!(
                "the object key would be {len} bytes, over the {MAX_KEY} S3 takes: shorten the prefix template or the partition values"
            ));
            out.push((
                row as usize,
                connector_api::Reject::new(
                    folder.clone(),
                    format!("folder \"{shown}...\" row {row} of the write"),
                    std::mem::take(&mut texts[row as usize]).unwrap_or_default(),
                    error,
                ),
            ));
        }
    }
    Ok(out)
}

/// `key` as a folder: ends with `/` unless empty.
fn folder(key: &str) -> String {
    if key.is_empty() || key.ends_with('/') {
        key.to_string()
    } else {
        format!("{key}/")
    }
}

enum ColumnValues<'a> {
    Display(ArrayFormatter<'a>, &'a ArrayRef),
    Time(ArrayRef, String),
}

impl<'a> ColumnValues<'a> {
    fn new(name: &str, array: &'a ArrayRef, format: Option<&str>) -> Result<Self> {
        let Some(format) = format else {
            let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
            return Ok(ColumnValues::Display(f, array));
        };
        match array.data_type() {
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => {
                let micros = arrow_cast::cast(
                    array,
                    &DataType::Timestamp(TimeUnit::Microsecond, None),
                )?;
                Ok(ColumnValues::Time(micros, format.to_string()))
            }
            other => Err(Error::schema(format!(
                "prefix formats column \"{name}\" as a time, but it is {other}: a format needs a date or timestamp column"
            ))),
        }
    }

    fn write(&self, out: &mut String, row: usize) -> Result<()> {
        match self {
            ColumnValues::Display(f, array) => {
                if array.is_null(row) {
                    out.push_str(NULL_PARTITION);
                } else {
                    let mut value = String::new();
                    write!(value, "{}", f.value(row))
                        .map_err(|e| Error::internal("partition value").with_source(e))?;
                    escape(out, &value);
                }
            }
            ColumnValues::Time(micros, format) => {
                let a = micros.as_primitive::<TimestampMicrosecondType>();
                if a.is_null(row) {
                    out.push_str(NULL_PARTITION);
                } else {
                    let t = DateTime::from_timestamp_micros(a.value(row)).ok_or_else(|| {
                        Error::data(format!("timestamp {} is out of range", a.value(row)))
                    })?;
                    escape_time(out, &t.format(format).to_string());
                }
            }
        }
        Ok(())
    }
}

fn safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// Appends `value` as one path segment.
pub fn escape(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push_str(NULL_PARTITION);
        return;
    }
    let only_dots = value.bytes().all(|b| b == b'.');
    for b in value.bytes() {
        if safe(b) && !only_dots {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Appends a formatted time: like [`escape`], but `/` stays (folders from the format).
fn escape_time(out: &mut String, value: &str) {
    for (i, part) in value.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        escape(out, part);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Date32Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow_schema::{Field, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("region", DataType::Utf8, true),
            Field::new("day", DataType::Date32, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("n", DataType::Int64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("eu"),
                    Some("../../etc"),
                    None,
                    Some("eu"),
                    Some(".."),
                    Some(""),
                ])),
                Arc::new(Date32Array::from(vec![
                    Some(19_000),
                    Some(19_001),
                    None,
                    Some(19_000),
                    Some(0),
                    Some(0),
                ])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        Some(1_700_000_000_000_000),
                        None,
                        Some(0),
                        Some(1_700_000_000_000_000),
                        Some(0),
                        Some(0),
                    ])
                    .with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from(vec![1, 2, 3, 1, 5, 6])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn groups_rows_by_rendered_folder_and_escapes_values() {
        let t = Template::parse("orders/dt={day}/region={region}").unwrap();
        let groups = t.render(&batch(), Utc::now()).unwrap();
        let keys: Vec<&str> = groups.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "orders/dt=2022-01-08/region=eu/",
                "orders/dt=2022-01-09/region=..%2F..%2Fetc/",
                "orders/dt=__HIVE_DEFAULT_PARTITION__/region=__HIVE_DEFAULT_PARTITION__/",
                "orders/dt=1970-01-01/region=%2E%2E/",
                "orders/dt=1970-01-01/region=__HIVE_DEFAULT_PARTITION__/",
            ]
        );
        assert_eq!(groups[0].1, [0, 3]);
        assert_eq!(t.static_prefix(), "orders/");
        assert_eq!(t.depths(), 2..=2);
        let t = Template::parse("y={ts:%Y}/{ts:%m/%d}/n={n}/{@now:%Y}").unwrap();
        assert_eq!(t.depths(), 4..=5);
        assert_eq!(Template::parse("e/").unwrap().depths(), 0..=0);
    }

    #[test]
    fn formats_event_and_processing_time() {
        let t = Template::parse("y={ts:%Y}/{ts:%m/%d}/n={n}/{@now:%Y}").unwrap();
        let now = DateTime::from_timestamp(0, 0).unwrap();
        let groups = t.render(&batch(), now).unwrap();
        assert_eq!(groups[0].0, "y=2023/11/14/n=1/1970/");
        assert_eq!(
            groups[1].0,
            "y=__HIVE_DEFAULT_PARTITION__/__HIVE_DEFAULT_PARTITION__/n=2/1970/"
        );
    }

    #[test]
    fn rejects_bad_templates_with_a_reason() {
        for (t, want) in [
            ("/abs/", "must not start with '/'"),
            ("a/../b/", "\"..\""),
            ("a/{x", "never closed"),
            ("a/}x", "without an opening"),
            ("a/{}/", "empty placeholder"),
            ("a/{@now}/", "needs a format"),
            ("a/{@then:%Y}/", "unknown placeholder"),
            ("a/{ts:%Q}/", "not a valid strftime"),
        ] {
            let e = Template::parse(t).unwrap_err();
            assert!(e.to_string().contains(want), "{t}: {e}");
        }
        let t = Template::parse("a/{missing}/").unwrap();
        let e = t.render(&batch(), Utc::now()).unwrap_err();
        assert!(e.to_string().contains("\"missing\""), "{e}");
        let t = Template::parse("a/{region:%Y}/").unwrap();
        assert!(t.render(&batch(), Utc::now()).is_err());
    }

    #[test]
    fn a_key_longer_than_s3_takes_refuses_its_rows_only() {
        let long = "x".repeat(1000);
        let batch = RecordBatch::try_from_iter(vec![(
            "region",
            std::sync::Arc::new(arrow_array::StringArray::from(vec![
                "eu",
                long.as_str(),
                "us",
            ])) as ArrayRef,
        )])
        .unwrap();
        let t = Template::parse("data/region={region}/").unwrap();
        let groups = t.render(&batch, Utc::now()).unwrap();
        let refused = too_long(&groups, 40, &batch).unwrap();
        assert_eq!(refused.len(), 1);
        let (row, reject) = &refused[0];
        assert_eq!(*row, 1);
        assert!(
            reject.error.message().contains("1,024") || reject.error.message().contains("1024"),
            "{}",
            reject.error
        );
        assert!(reject.raw.contains(&long), "{}", reject.raw);
    }

    #[test]
    fn static_templates_have_one_group() {
        let t = Template::parse("exports/daily").unwrap();
        let groups = t.render(&batch(), Utc::now()).unwrap();
        assert_eq!(
            groups,
            vec![("exports/daily/".to_string(), (0..6).collect())]
        );
        assert_eq!(t.static_prefix(), "exports/daily/");
        assert_eq!(Template::parse("").unwrap().static_prefix(), "");
    }
}
