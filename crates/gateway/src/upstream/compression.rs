//! Wire compression on the gateway's pooled upstream connections (source/compression/
//! OP_COMPRESSED.md): choosing a compressor from the server's `hello`, wrapping requests in
//! OP_COMPRESSED and unwrapping compressed replies into the plain messages they carry.
//!
//! Why: the gateway→database hop often crosses availability zones, where transfer is billed by
//! the byte, and documents compress well. Only this hop is compressed; clients are never offered
//! compression (session/dispatch.rs answers their OP_COMPRESSED with 115), so nothing here runs
//! on the client side.
//!
//! The envelope's layout is the wire crate's ([`OpCompressed`]); the codecs are maintained
//! crates (`snap`, `flate2`, `zstd`), none written here. This module must never:
//! - compress a command the specification lists as never compressed ([`never_compressed`]: the
//!   handshake and authentication), whatever was negotiated;
//! - size a buffer from a declared length before that length is checked: the envelope's
//!   `uncompressedSize` is bounded by [`MAX_MESSAGE_SIZE`] when it is parsed, and a codec whose
//!   stream states its own length (snappy, zstd) must agree before anything is allocated;
//! - hand on a reply whose decompressed length is not exactly the declared one.
//!
//! A reply that fails any of these is an upstream protocol error: the caller drops the
//! connection ([`super::UpstreamError::Decompress`]).

use std::error::Error as StdError;
use std::io::Write;

use bson::Document;
use bytes::BytesMut;
use mongomux_wire::{
    CompressorId, Header, OpCode, OpCompressed, OpMsg, WireError, HEADER_LEN, MAX_MESSAGE_SIZE,
};

/// A compressor both sides can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    /// Snappy (id 1), raw block format.
    Snappy,
    /// zlib (id 2): deflate with the zlib header and checksum.
    Zlib,
    /// Zstandard (id 3).
    Zstd,
}

/// Commands that travel uncompressed whatever was negotiated (OP_COMPRESSED.md, "Messages
/// that must not be compressed"), lower-cased: the spec's list, in which `isMaster` also
/// covers its lower-case spelling.
const NEVER_COMPRESSED: &[&str] = &[
    "hello",
    "ismaster",
    "saslstart",
    "saslcontinue",
    "getnonce",
    "authenticate",
    "createuser",
    "updateuser",
    "copydbsaslstart",
    "copydbgetnonce",
    "copydb",
];

/// Whether a command must never be sent compressed. Case-insensitive: erring towards sending
/// a message plain is always safe.
pub fn never_compressed(command: &str) -> bool {
    NEVER_COMPRESSED
        .iter()
        .any(|n| n.eq_ignore_ascii_case(command))
}

/// Why a compressed reply could not be unwrapped.
#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    /// The envelope itself is malformed, or declares more than the message limit.
    #[error("bad OP_COMPRESSED envelope")]
    Envelope(#[from] WireError),
    /// A compressor id this gateway does not know.
    #[error("unknown compressor id {0}")]
    UnknownCompressor(u8),
    /// The payload decompresses to a length other than the declared one.
    #[error("{compressor} payload holds {actual} bytes, not the declared {declared}")]
    SizeMismatch {
        /// The compressor's name.
        compressor: &'static str,
        /// `uncompressedSize` from the envelope.
        declared: usize,
        /// What the payload holds (or states it holds).
        actual: usize,
    },
    /// The payload holds more than the declared length.
    #[error("{compressor} payload holds more than the declared {declared} bytes")]
    Oversize {
        /// The compressor's name.
        compressor: &'static str,
        /// `uncompressedSize` from the envelope.
        declared: usize,
    },
    /// The codec refused the payload.
    #[error("{compressor} payload does not decompress")]
    Corrupt {
        /// The compressor's name.
        compressor: &'static str,
        /// The codec's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl Compressor {
    /// The compressor a URI or a `hello` names, if this gateway implements it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "snappy" => Some(Compressor::Snappy),
            "zlib" => Some(Compressor::Zlib),
            "zstd" => Some(Compressor::Zstd),
            _ => None,
        }
    }

    /// The name used in URIs and in `hello`.
    pub fn name(self) -> &'static str {
        match self {
            Compressor::Snappy => "snappy",
            Compressor::Zlib => "zlib",
            Compressor::Zstd => "zstd",
        }
    }

    /// The id written in the envelope.
    pub fn id(self) -> u8 {
        match self {
            Compressor::Snappy => 1,
            Compressor::Zlib => 2,
            Compressor::Zstd => 3,
        }
    }

    fn from_id(id: CompressorId) -> Result<Option<Self>, CompressionError> {
        match id {
            CompressorId::Noop => Ok(None),
            CompressorId::Snappy => Ok(Some(Compressor::Snappy)),
            CompressorId::Zlib => Ok(Some(Compressor::Zlib)),
            CompressorId::Zstd => Ok(Some(Compressor::Zstd)),
            CompressorId::Unknown(id) => Err(CompressionError::UnknownCompressor(id)),
        }
    }

    /// Compresses `data` whole. zlib and zstd at their default levels (6 and 3), as drivers do.
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, Box<dyn StdError + Send + Sync>> {
        Ok(match self {
            Compressor::Snappy => snap::raw::Encoder::new().compress_vec(data)?,
            Compressor::Zlib => {
                let out = Vec::with_capacity(data.len() / 2 + 64);
                let mut enc = flate2::write::ZlibEncoder::new(out, flate2::Compression::default());
                enc.write_all(data)?;
                enc.finish()?
            }
            Compressor::Zstd => zstd::bulk::compress(data, zstd::DEFAULT_COMPRESSION_LEVEL)?,
        })
    }

    /// Refuses, before anything is allocated, a payload whose own header states a length
    /// other than `declared` (snappy always states it, zstd usually does).
    fn check_stated_length(self, data: &[u8], declared: usize) -> Result<(), CompressionError> {
        let stated = match self {
            Compressor::Snappy => {
                Some(snap::raw::decompress_len(data).map_err(|e| self.corrupt(e))?)
            }
            Compressor::Zstd => match zstd::zstd_safe::get_frame_content_size(data) {
                Ok(Some(n)) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                Ok(None) => None,
                Err(_) => return Err(self.corrupt("not a zstd frame")),
            },
            Compressor::Zlib => None,
        };
        match stated {
            // A zstd frame states only its own size; several frames may follow each other,
            // so for zstd only "more than declared" is certain before decompressing.
            Some(n) if n > declared => Err(CompressionError::Oversize {
                compressor: self.name(),
                declared,
            }),
            Some(n) if n < declared && self == Compressor::Snappy => {
                Err(CompressionError::SizeMismatch {
                    compressor: self.name(),
                    declared,
                    actual: n,
                })
            }
            _ => Ok(()),
        }
    }

    /// Decompresses `data` into `out`, which is exactly the declared length; returns how many
    /// bytes were written. Writing more than `out` holds is an error, never a reallocation.
    fn decompress_into(self, data: &[u8], out: &mut [u8]) -> Result<usize, CompressionError> {
        match self {
            Compressor::Snappy => snap::raw::Decoder::new()
                .decompress(data, out)
                .map_err(|e| self.corrupt(e)),
            Compressor::Zstd => {
                zstd::bulk::decompress_to_buffer(data, out).map_err(|e| self.corrupt(e))
            }
            Compressor::Zlib => {
                let mut z = flate2::Decompress::new(true);
                let status = z
                    .decompress(data, out, flate2::FlushDecompress::Finish)
                    .map_err(|e| self.corrupt(e))?;
                let written = usize::try_from(z.total_out()).unwrap_or(usize::MAX);
                match status {
                    flate2::Status::StreamEnd => Ok(written),
                    _ if written == out.len() => Err(CompressionError::Oversize {
                        compressor: self.name(),
                        declared: out.len(),
                    }),
                    _ => Err(self.corrupt("zlib stream ends early")),
                }
            }
        }
    }

    fn corrupt(self, e: impl Into<Box<dyn StdError + Send + Sync>>) -> CompressionError {
        CompressionError::Corrupt {
            compressor: self.name(),
            source: e.into(),
        }
    }
}

/// The compressor a connection uses: the first of the gateway's `offered` list (the URI's
/// order) that the server's `hello` reply lists under `compression`. None when the server
/// lists none of them (or no `compression` at all): the connection stays uncompressed.
pub fn negotiate(offered: &[String], reply: &Document) -> Option<Compressor> {
    let accepted = reply.get_array("compression").ok()?;
    offered
        .iter()
        .filter(|name| accepted.iter().any(|a| a.as_str() == Some(name.as_str())))
        .find_map(|name| Compressor::from_name(name))
}

/// `message` (a whole OP_MSG, its requestID final) wrapped in OP_COMPRESSED with `c`; None
/// when it must travel as it is: not an OP_MSG whose command can be read, or a command that
/// is never compressed. A codec failure (none is expected on a bounded message) also sends
/// the message plain, which is always valid.
pub fn compress_message(c: Compressor, message: &[u8]) -> Option<Vec<u8>> {
    let msg = OpMsg::parse(message).ok()?;
    if never_compressed(msg.command_name().ok()?) {
        return None;
    }
    let body = &message[HEADER_LEN..];
    match c.compress(body) {
        Ok(data) => Some(OpCompressed::encode(&msg.header, body.len(), c.id(), &data)),
        Err(e) => {
            tracing::warn!(compressor = c.name(), error = %e, "compression failed; sending the request uncompressed");
            None
        }
    }
}

/// The plain message an OP_COMPRESSED `frame` carries, header included, with the envelope's
/// requestID and responseTo. Accepts any compressor this gateway implements (and `noop`),
/// as drivers do: the server answers with the compressor of the request.
pub fn decompress_message(frame: &[u8]) -> Result<BytesMut, CompressionError> {
    // Bounds uncompressedSize by MAX_MESSAGE_SIZE - HEADER_LEN and refuses a nested envelope.
    let env = OpCompressed::parse(frame)?;
    let declared = env.uncompressed_size;
    debug_assert!(declared <= MAX_MESSAGE_SIZE - HEADER_LEN);
    let compressor = Compressor::from_id(env.compressor)?;
    match compressor {
        Some(c) => c.check_stated_length(env.data, declared)?,
        None if env.data.len() != declared => {
            return Err(CompressionError::SizeMismatch {
                compressor: "noop",
                declared,
                actual: env.data.len(),
            })
        }
        None => {}
    }
    let mut out = BytesMut::zeroed(HEADER_LEN + declared);
    let header = Header {
        length: (HEADER_LEN + declared) as i32,
        request_id: env.header.request_id,
        response_to: env.header.response_to,
        op_code: env.original_opcode,
    };
    out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    let written = match compressor {
        Some(c) => c.decompress_into(env.data, &mut out[HEADER_LEN..])?,
        None => {
            out[HEADER_LEN..].copy_from_slice(env.data);
            declared
        }
    };
    if written != declared {
        return Err(CompressionError::SizeMismatch {
            compressor: compressor.map_or("noop", Compressor::name),
            declared,
            actual: written,
        });
    }
    Ok(out)
}

/// Whether `frame` is an OP_COMPRESSED envelope (read from its header only).
pub fn is_compressed(frame: &[u8]) -> bool {
    Header::parse(frame).is_ok_and(|h| h.op_code == OpCode::Compressed)
}

#[cfg(test)]
#[path = "compression_tests.rs"]
mod tests;
