//! OP_COMPRESSED (source/compression/OP_COMPRESSED.md): `int32 originalOpcode,
//! int32 uncompressedSize, uint8 compressorId, compressed bytes`. This module frames the
//! envelope and implements the `noop` compressor; real codecs live with the caller so that
//! this crate stays dependency-free. The declared uncompressed size is checked against the
//! message limit before any buffer is sized from it.

use crate::header::{take_i32, Header, OpCode, HEADER_LEN};
use crate::{Result, WireError, MAX_MESSAGE_SIZE};

/// Compressor ids from the compression specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressorId {
    /// 0: the payload is stored as is.
    Noop,
    /// 1: snappy.
    Snappy,
    /// 2: zlib.
    Zlib,
    /// 3: zstd.
    Zstd,
    /// Anything else.
    Unknown(u8),
}

impl CompressorId {
    /// The id for a raw byte.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => CompressorId::Noop,
            1 => CompressorId::Snappy,
            2 => CompressorId::Zlib,
            3 => CompressorId::Zstd,
            other => CompressorId::Unknown(other),
        }
    }
}

/// A parsed OP_COMPRESSED envelope.
#[derive(Debug, Clone)]
pub struct OpCompressed<'a> {
    /// The header of the envelope.
    pub header: Header,
    /// The opcode of the wrapped message.
    pub original_opcode: OpCode,
    /// Size of the wrapped message without its header, as declared.
    pub uncompressed_size: usize,
    /// Which compressor produced `data`.
    pub compressor: CompressorId,
    /// The compressed bytes.
    pub data: &'a [u8],
}

impl<'a> OpCompressed<'a> {
    /// Parses a whole OP_COMPRESSED message.
    pub fn parse(message: &'a [u8]) -> Result<Self> {
        let header = Header::parse(message)?;
        if header.op_code != OpCode::Compressed {
            return Err(WireError::UnexpectedOpCode(header.op_code.as_i32()));
        }
        if header.length as usize != message.len() || message.len() < HEADER_LEN + 9 {
            return Err(WireError::Truncated("OP_COMPRESSED"));
        }
        let original = take_i32(message, HEADER_LEN, "OP_COMPRESSED originalOpcode")?;
        let size = take_i32(message, HEADER_LEN + 4, "OP_COMPRESSED uncompressedSize")?;
        if size < 0 || size as usize > MAX_MESSAGE_SIZE - HEADER_LEN {
            return Err(WireError::LengthTooLarge {
                len: size as i64,
                max: MAX_MESSAGE_SIZE - HEADER_LEN,
            });
        }
        let original_opcode = OpCode::from_i32(original);
        if original_opcode == OpCode::Compressed {
            return Err(WireError::UnexpectedOpCode(original));
        }
        Ok(OpCompressed {
            header,
            original_opcode,
            uncompressed_size: size as usize,
            compressor: CompressorId::from_u8(message[HEADER_LEN + 8]),
            data: &message[HEADER_LEN + 9..],
        })
    }

    /// Rebuilds the wrapped message (header included) from already-decompressed bytes,
    /// checking that their size matches the declaration.
    pub fn rebuild(&self, uncompressed: &[u8]) -> Result<Vec<u8>> {
        if uncompressed.len() != self.uncompressed_size {
            return Err(WireError::CompressedSizeMismatch);
        }
        let header = Header {
            length: (HEADER_LEN + uncompressed.len()) as i32,
            request_id: self.header.request_id,
            response_to: self.header.response_to,
            op_code: self.original_opcode,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + uncompressed.len());
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(uncompressed);
        Ok(out)
    }

    /// Unwraps a `noop`-compressed message; other compressors are the caller's.
    pub fn decompress_noop(&self) -> Result<Vec<u8>> {
        match self.compressor {
            CompressorId::Noop => self.rebuild(self.data),
            CompressorId::Unknown(id) => Err(WireError::UnsupportedCompressor(id)),
            CompressorId::Snappy => Err(WireError::UnsupportedCompressor(1)),
            CompressorId::Zlib => Err(WireError::UnsupportedCompressor(2)),
            CompressorId::Zstd => Err(WireError::UnsupportedCompressor(3)),
        }
    }

    /// Wraps `message` (header included) in an OP_COMPRESSED envelope with the given
    /// compressor id and already-compressed `data`.
    pub fn encode(
        message_header: &Header,
        uncompressed_size: usize,
        id: u8,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 9 + data.len());
        let header = Header {
            length: (HEADER_LEN + 9 + data.len()) as i32,
            request_id: message_header.request_id,
            response_to: message_header.response_to,
            op_code: OpCode::Compressed,
        };
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(&message_header.op_code.as_i32().to_le_bytes());
        out.extend_from_slice(&(uncompressed_size as i32).to_le_bytes());
        out.push(id);
        out.extend_from_slice(data);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_op_msg, OpMsg};
    use bson::rawdoc;

    #[test]
    fn noop_round_trip() {
        let body = rawdoc! { "ping": 1, "$db": "admin" };
        let msg = encode_op_msg(11, 0, 0, body.as_bytes(), &[]);
        let header = Header::parse(&msg).unwrap();
        let wrapped = OpCompressed::encode(&header, msg.len() - HEADER_LEN, 0, &msg[HEADER_LEN..]);
        let env = OpCompressed::parse(&wrapped).unwrap();
        assert_eq!(env.original_opcode, OpCode::Msg);
        let back = env.decompress_noop().unwrap();
        assert_eq!(back, msg);
        assert_eq!(OpMsg::parse(&back).unwrap().command_name().unwrap(), "ping");
    }

    #[test]
    fn declared_size_checked() {
        let body = rawdoc! { "ping": 1 };
        let msg = encode_op_msg(1, 0, 0, body.as_bytes(), &[]);
        let header = Header::parse(&msg).unwrap();
        let mut wrapped = OpCompressed::encode(&header, 1, 0, &msg[HEADER_LEN..]);
        wrapped[20..24].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(matches!(
            OpCompressed::parse(&wrapped),
            Err(WireError::LengthTooLarge { .. })
        ));
        wrapped[20..24].copy_from_slice(&1i32.to_le_bytes());
        let env = OpCompressed::parse(&wrapped).unwrap();
        assert_eq!(
            env.decompress_noop(),
            Err(WireError::CompressedSizeMismatch)
        );
        wrapped[24] = 1;
        assert!(OpCompressed::parse(&wrapped)
            .unwrap()
            .decompress_noop()
            .is_err());
    }
}
