//! Byte plumbing between the format codecs and S3: a buffer the encoder fills and the
//! uploader drains part by part, and gzip/zstd on the way in and out.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use connector_api::{Error, Result};
use flate2::write::{GzEncoder, MultiGzDecoder};

use crate::config::Compression;

/// Bytes written by an encoder and not yet uploaded. The sink keeps a clone and takes
/// a part out whenever enough has accumulated, so an object of any size needs at most
/// about one part of memory.
#[derive(Clone, Default)]
pub struct PartBuffer(Arc<Mutex<Vec<u8>>>);

impl PartBuffer {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Takes everything waiting.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.lock())
    }
}

impl Write for PartBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The encoder's output, compressed or not, into a [`PartBuffer`].
pub enum Compressor {
    /// As is.
    Plain(PartBuffer),
    /// gzip.
    Gzip(GzEncoder<PartBuffer>),
    /// Zstandard.
    Zstd(zstd::stream::write::Encoder<'static, PartBuffer>),
}

impl Compressor {
    /// A compressor writing `compression` into `out`.
    pub fn new(compression: Compression, out: PartBuffer) -> Result<Self> {
        Ok(match compression {
            Compression::Auto | Compression::None => Compressor::Plain(out),
            Compression::Gzip => Compressor::Gzip(GzEncoder::new(out, flate2::Compression::fast())),
            Compression::Zstd => Compressor::Zstd(
                zstd::stream::write::Encoder::new(out, 3)
                    .map_err(|e| Error::internal("zstd encoder").with_source(e))?,
            ),
        })
    }

    /// Writes the compressed stream's trailer.
    pub fn finish(self) -> Result<()> {
        match self {
            Compressor::Plain(_) => {}
            Compressor::Gzip(g) => {
                g.finish()?;
            }
            Compressor::Zstd(z) => {
                z.finish()?;
            }
        }
        Ok(())
    }
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Compressor::Plain(w) => w.write(buf),
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Compressor::Plain(w) => w.flush(),
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
        }
    }
}

/// Decompresses a stream pushed to it chunk by chunk.
pub enum Decompressor {
    /// As is.
    Plain,
    /// gzip (several members in a row are one stream, as `gzip` writes them).
    Gzip(Box<MultiGzDecoder<Vec<u8>>>),
    /// Zstandard.
    Zstd(Box<zstd::stream::write::Decoder<'static, Vec<u8>>>),
}

impl Decompressor {
    /// A decompressor for `compression` (not `Auto`: resolve it from the name first).
    pub fn new(compression: Compression) -> Result<Self> {
        Ok(match compression {
            Compression::Auto | Compression::None => Decompressor::Plain,
            Compression::Gzip => Decompressor::Gzip(Box::new(MultiGzDecoder::new(Vec::new()))),
            Compression::Zstd => Decompressor::Zstd(Box::new(
                zstd::stream::write::Decoder::new(Vec::new())
                    .map_err(|e| Error::internal("zstd decoder").with_source(e))?,
            )),
        })
    }

    /// Appends what `input` decompresses to onto `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            Decompressor::Plain => out.extend_from_slice(input),
            Decompressor::Gzip(d) => {
                d.write_all(input)?;
                out.append(d.get_mut());
            }
            Decompressor::Zstd(d) => {
                d.write_all(input)?;
                d.flush()?;
                out.append(d.get_mut());
            }
        }
        Ok(())
    }

    /// The end of the input: errors when the compressed stream is cut short.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            Decompressor::Plain => {}
            Decompressor::Gzip(d) => {
                d.try_finish()?;
                out.append(d.get_mut());
            }
            Decompressor::Zstd(d) => {
                d.flush()?;
                out.append(d.get_mut());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(c: Compression) {
        let buf = PartBuffer::default();
        let mut w = Compressor::new(c, buf.clone()).unwrap();
        let text: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("{{\"id\":{i}}}\n").into_bytes())
            .collect();
        w.write_all(&text).unwrap();
        let mut parts = buf.take();
        w.finish().unwrap();
        parts.extend(buf.take());
        let mut d = Decompressor::new(c).unwrap();
        let mut out = Vec::new();
        for chunk in parts.chunks(777) {
            d.push(chunk, &mut out).unwrap();
        }
        d.finish(&mut out).unwrap();
        assert_eq!(out, text);
    }

    #[test]
    fn compresses_and_decompresses_in_chunks() {
        roundtrip(Compression::None);
        roundtrip(Compression::Gzip);
        roundtrip(Compression::Zstd);
    }

    #[test]
    fn a_cut_gzip_stream_is_an_error() {
        let buf = PartBuffer::default();
        let mut w = Compressor::new(Compression::Gzip, buf.clone()).unwrap();
        w.write_all(&[b'x'; 10_000]).unwrap();
        w.finish().unwrap();
        let all = buf.take();
        let mut d = Decompressor::new(Compression::Gzip).unwrap();
        let mut out = Vec::new();
        d.push(&all[..all.len() / 2], &mut out).unwrap();
        assert!(d.finish(&mut out).is_err());
    }
}
