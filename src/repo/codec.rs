//! Compression codecs of stored objects: zstd (streaming, level 1–19), lz4 (frame format) or
//! none. Only byte streams in and out; the object format around them is `frame`'s, and
//! nothing here touches storage or the async runtime (callers run it in `spawn_blocking`).

use std::io::{self, Read, Write};

use serde::Serialize;

/// How an object's payload is compressed; also its stored name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Zstd,
    Lz4,
    None,
}

impl Codec {
    /// Every codec, the order in which stored names are tried after the repo's own.
    pub const ALL: [Codec; 3] = [Codec::Zstd, Codec::Lz4, Codec::None];

    /// Name in config: `zstd`, `lz4` or `none`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
            Codec::None => "none",
        }
    }

    /// The codec named `name` in config.
    pub fn from_name(name: &str) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.name() == name.trim())
    }

    /// Extension appended to keys: `zst`, `lz4` or `raw`.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::Zstd => "zst",
            Codec::Lz4 => "lz4",
            Codec::None => "raw",
        }
    }

    /// The codec whose extension is `ext`.
    pub fn from_extension(ext: &str) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.extension() == ext)
    }

    /// Id in the object header. Stable: stored objects carry it.
    pub(crate) fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
            Codec::Lz4 => 2,
        }
    }

    pub(crate) fn from_id(id: u8) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.id() == id)
    }
}

impl Serialize for Codec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A compressing writer over `W`; [`Encoder::finish`] ends the stream and hands `W` back.
/// `'c`: the [`Compressor`] whose context it borrows, if any.
pub(crate) enum Encoder<'c, W: Write> {
    Zstd(zstd::stream::write::Encoder<'c, W>),
    Lz4(lz4_flex::frame::FrameEncoder<W>),
    None(W),
}

impl<W: Write> Encoder<'static, W> {
    /// An encoder of its own, for one stream. `level` is used by zstd only.
    pub(crate) fn new(codec: Codec, level: i32, inner: W) -> io::Result<Encoder<'static, W>> {
        Ok(match codec {
            Codec::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(inner, level)?),
            Codec::Lz4 => Encoder::Lz4(lz4_flex::frame::FrameEncoder::new(inner)),
            Codec::None => Encoder::None(inner),
        })
    }
}

/// Compresses one stream after another with the same codec, reusing zstd's context: a
/// context holds megabytes of tables, and a bundle of thousands of small files would
/// otherwise allocate and free one per file (time, and a heap fragmented by the churn).
pub(crate) struct Compressor {
    codec: Codec,
    zstd: Option<zstd::zstd_safe::CCtx<'static>>,
}

impl Compressor {
    /// `level` is used by zstd only.
    pub(crate) fn new(codec: Codec, level: i32) -> io::Result<Compressor> {
        let zstd = match codec {
            Codec::Zstd => {
                let mut context = zstd::zstd_safe::CCtx::create();
                context
                    .set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(level))
                    .map_err(|code| {
                        io::Error::other(format!(
                            "zstd level {level}: {}",
                            zstd::zstd_safe::get_error_name(code)
                        ))
                    })?;
                Some(context)
            }
            Codec::Lz4 | Codec::None => None,
        };
        Ok(Compressor { codec, zstd })
    }

    pub(crate) fn codec(&self) -> Codec {
        self.codec
    }

    /// An encoder of one stream into `inner`, borrowing the context until it is finished.
    pub(crate) fn encoder<W: Write>(&mut self, inner: W) -> Encoder<'_, W> {
        match (&mut self.zstd, self.codec) {
            (Some(context), _) => {
                Encoder::Zstd(zstd::stream::write::Encoder::with_context(inner, context))
            }
            (None, Codec::Lz4) => Encoder::Lz4(lz4_flex::frame::FrameEncoder::new(inner)),
            (None, _) => Encoder::None(inner),
        }
    }
}

impl<W: Write> Encoder<'_, W> {
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::Lz4(e) => e.finish().map_err(io::Error::other),
            Encoder::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Lz4(e) => e.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Zstd(e) => e.flush(),
            Encoder::Lz4(e) => e.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}

/// Decompresses one stream after another, reusing zstd's context (its window buffers are
/// megabytes; a bundle of thousands of small files would allocate them once per file).
#[derive(Default)]
pub(crate) struct Decompressor {
    zstd: Option<zstd::zstd_safe::DCtx<'static>>,
}

impl Decompressor {
    /// A decompressing reader over `inner`, borrowing the context until it is dropped.
    pub(crate) fn decoder<'a, R: Read + 'a>(
        &'a mut self,
        codec: Codec,
        inner: R,
    ) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match codec {
            Codec::Zstd => {
                let context = self.zstd.get_or_insert_with(zstd::zstd_safe::DCtx::create);
                let buffered =
                    io::BufReader::with_capacity(zstd::zstd_safe::DCtx::in_size(), inner);
                Box::new(zstd::stream::read::Decoder::with_context(buffered, context))
            }
            Codec::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(inner)),
            Codec::None => Box::new(inner),
        })
    }
}
