//! Compression of text input and output (gzip, Zstandard), chosen by name or option.

use std::io::Read;

use connector_api::{Error, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// Compression of JSON lines and CSV files and objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// From the file or object name when reading (`.gz`, `.zst`); none when writing.
    #[default]
    Auto,
    /// Not compressed.
    None,
    /// gzip.
    Gzip,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The compression of a file or object named `key` under this option.
    pub fn for_key(self, key: &str) -> Compression {
        match self {
            Compression::Auto if key.ends_with(".gz") || key.ends_with(".gzip") => {
                Compression::Gzip
            }
            Compression::Auto if key.ends_with(".zst") || key.ends_with(".zstd") => {
                Compression::Zstd
            }
            Compression::Auto => Compression::None,
            c => c,
        }
    }

    /// The file name suffix, with its dot ("" for none).
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
            Compression::Auto | Compression::None => "",
        }
    }
}

/// Reads `input` decompressed as `compression` says (`Auto` and `None`: as is).
pub fn decompressing<R: Read + Send + 'static>(
    compression: Compression,
    input: R,
) -> Result<Box<dyn Read + Send>> {
    Ok(match compression {
        Compression::Auto | Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(input)
                .map_err(|e| Error::internal("zstd decoder").with_source(e))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_and_zstd_read_back_as_written_and_plain_as_is() {
        let text = b"{\"id\": 1}\n{\"id\": 2}\n".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::stream::encode_all(&text[..], 1).unwrap();
        for (name, bytes) in [
            ("a.jsonl.gz", gz),
            ("a.jsonl.zst", zst),
            ("a.jsonl", text.clone()),
        ] {
            let mut out = Vec::new();
            decompressing(Compression::Auto.for_key(name), std::io::Cursor::new(bytes))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, text, "{name}");
        }
    }
}
