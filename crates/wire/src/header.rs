//! The 16-byte standard message header (OP_MSG.md, "Standard Message Header"): messageLength,
//! requestID, responseTo and opCode, four little-endian int32s.

use crate::{Result, WireError};

/// Length of the standard message header.
pub const HEADER_LEN: usize = 16;

/// Operation codes the gateway distinguishes. Anything else is carried as [`OpCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// OP_REPLY (1): legacy reply, only to OP_QUERY.
    Reply,
    /// OP_QUERY (2004): legacy query, only for the handshake nowadays.
    Query,
    /// OP_COMPRESSED (2012).
    Compressed,
    /// OP_MSG (2013).
    Msg,
    /// Any other value, including removed legacy opcodes.
    Other(i32),
}

impl OpCode {
    /// The opcode for a raw int32.
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => OpCode::Reply,
            2004 => OpCode::Query,
            2012 => OpCode::Compressed,
            2013 => OpCode::Msg,
            other => OpCode::Other(other),
        }
    }

    /// The raw int32 value.
    pub fn as_i32(self) -> i32 {
        match self {
            OpCode::Reply => 1,
            OpCode::Query => 2004,
            OpCode::Compressed => 2012,
            OpCode::Msg => 2013,
            OpCode::Other(v) => v,
        }
    }
}

/// A decoded message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total message length including this header.
    pub length: i32,
    /// Sender's id for this message.
    pub request_id: i32,
    /// The requestID this message answers (0 for requests).
    pub response_to: i32,
    /// What follows the header.
    pub op_code: OpCode,
}

impl Header {
    /// Decodes the first 16 bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated("header"));
        }
        Ok(Header {
            length: read_i32(buf, 0),
            request_id: read_i32(buf, 4),
            response_to: read_i32(buf, 8),
            op_code: OpCode::from_i32(read_i32(buf, 12)),
        })
    }

    /// Encodes the header into its 16 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.length.to_le_bytes());
        out[4..8].copy_from_slice(&self.request_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.response_to.to_le_bytes());
        out[12..16].copy_from_slice(&self.op_code.as_i32().to_le_bytes());
        out
    }
}

/// Reads a little-endian i32 at `at`; the caller has checked the bounds.
pub(crate) fn read_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Reads a little-endian i32 at `at`, or reports truncation of `what`.
pub(crate) fn take_i32(buf: &[u8], at: usize, what: &'static str) -> Result<i32> {
    if buf.len() < at + 4 {
        return Err(WireError::Truncated(what));
    }
    Ok(read_i32(buf, at))
}

/// Reads a NUL-terminated UTF-8 string starting at `at`; returns it and the offset after the NUL.
pub(crate) fn take_cstring<'a>(
    buf: &'a [u8],
    at: usize,
    what: &'static str,
) -> Result<(&'a str, usize)> {
    let rest = buf.get(at..).ok_or(WireError::Truncated(what))?;
    let nul = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or(WireError::InvalidCString(what))?;
    let s = std::str::from_utf8(&rest[..nul]).map_err(|_| WireError::InvalidCString(what))?;
    Ok((s, at + nul + 1))
}

/// Borrows the BSON document starting at `at`, checking its length prefix against the buffer
/// before anything else; returns it and the offset after it.
pub(crate) fn take_document<'a>(
    buf: &'a [u8],
    at: usize,
    what: &'static str,
) -> Result<(&'a bson::RawDocument, usize)> {
    let len = take_i32(buf, at, what)?;
    if len < 5 {
        return Err(WireError::InvalidBson(what));
    }
    let end = at
        .checked_add(len as usize)
        .filter(|end| *end <= buf.len())
        .ok_or(WireError::Truncated(what))?;
    let doc =
        bson::RawDocument::from_bytes(&buf[at..end]).map_err(|_| WireError::InvalidBson(what))?;
    Ok((doc, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            length: 42,
            request_id: -7,
            response_to: 9,
            op_code: OpCode::Msg,
        };
        assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
        assert_eq!(OpCode::from_i32(2012), OpCode::Compressed);
        assert_eq!(OpCode::from_i32(2010), OpCode::Other(2010));
    }

    #[test]
    fn short_header_is_truncated() {
        assert_eq!(Header::parse(&[0; 15]), Err(WireError::Truncated("header")));
    }

    #[test]
    fn document_length_checked_before_use() {
        // Declares 1 GiB but carries 5 bytes.
        let buf = [0x00, 0x00, 0x00, 0x40, 0x00];
        assert!(take_document(&buf, 0, "t").is_err());
        let buf = [0xff, 0xff, 0xff, 0xff, 0x00];
        assert!(take_document(&buf, 0, "t").is_err());
    }
}
