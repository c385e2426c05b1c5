//! Whole wire messages: the standard header, OP_MSG with one kind-0 body, reading one message
//! off a stream, and walking the sections of an OP_MSG.
//!
//! Format: MongoDB Wire Protocol, "Standard Message Header" (four little-endian int32:
//! messageLength, requestID, responseTo, opCode) and "OP_MSG" (opCode 2013: flagBits, then
//! sections; kind 0 = one BSON body, kind 1 = size, identifier, documents; flag bit 0 = a CRC-32C
//! trails the sections).
//!
//! What it must never do: trust a length before checking it against the bytes present or the
//! caller's bound. Tests that send malformed bytes on purpose build them by hand and use only
//! [`read_message`] from here.

use bson::Document;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{Error, Result};

pub const OP_REPLY: i32 = 1;
pub const OP_QUERY: i32 = 2004;
pub const OP_COMPRESSED: i32 = 2012;
pub const OP_MSG: i32 = 2013;
pub const HEADER_LEN: usize = 16;
/// maxMessageSizeBytes of MongoDB (48 MB), the default bound on a message read.
pub const MAX_MESSAGE: usize = 48_000_000;
/// OP_MSG flag bit 0: a CRC-32C checksum trails the sections.
pub const CHECKSUM_PRESENT: u32 = 1;

/// The standard message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub length: i32,
    pub request_id: i32,
    pub response_to: i32,
    pub op_code: i32,
}

impl Header {
    /// The header at the start of `msg`, if it is at least [`HEADER_LEN`] bytes long.
    pub fn parse(msg: &[u8]) -> Option<Header> {
        let field = |i: usize| Some(i32::from_le_bytes(msg.get(i..i + 4)?.try_into().ok()?));
        Some(Header {
            length: field(0)?,
            request_id: field(4)?,
            response_to: field(8)?,
            op_code: field(12)?,
        })
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (i, v) in [self.length, self.request_id, self.response_to, self.op_code]
            .into_iter()
            .enumerate()
        {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        out
    }
}

/// A frame: a header with the right length, then `body`.
pub fn frame(op_code: i32, request_id: i32, response_to: i32, body: &[u8]) -> Result<Vec<u8>> {
    let length = i32::try_from(HEADER_LEN + body.len())
        .map_err(|_| Error::Malformed(format!("body of {} bytes", body.len())))?;
    let header = Header {
        length,
        request_id,
        response_to,
        op_code,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// `cmd` as an OP_MSG with flag bits 0 and one kind-0 section.
pub fn encode_op_msg(request_id: i32, cmd: &Document) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&0u32.to_le_bytes()); // flagBits
    body.push(0); // section kind 0: body
    cmd.to_writer(&mut body)?;
    frame(OP_MSG, request_id, 0, &body)
}

/// Read one whole message (header included), at most `max` bytes long.
///
/// `Ok(None)` when the connection ends (EOF, reset or abort) before a whole length prefix
/// arrived: a peer that closed instead of answering. A length below [`HEADER_LEN`] or above
/// `max`, or a connection that ends inside the message, is an error. There is no deadline
/// here: callers wrap this in theirs.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    if let Err(e) = r.read_exact(&mut len).await {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => Ok(None),
            _ => Err(e.into()),
        };
    }
    let length = i32::from_le_bytes(len);
    let size = usize::try_from(length)
        .ok()
        .filter(|n| (HEADER_LEN..=max).contains(n))
        .ok_or_else(|| Error::Malformed(format!("message length {length} (bound {max})")))?;
    let mut msg = vec![0u8; size];
    msg[..4].copy_from_slice(&len);
    r.read_exact(&mut msg[4..]).await?;
    Ok(Some(msg))
}

/// The sections of an OP_MSG, from the part after its header. Yields each section's kind byte
/// and its bytes, size prefix included; every size is checked against the bytes present.
pub struct Sections<'a> {
    rest: &'a [u8],
}

/// The flag bits of an OP_MSG and an iterator over its sections (`rest`: the bytes after the
/// header). The trailing checksum, if flagged, is skipped, not verified.
pub fn msg_sections(rest: &[u8]) -> Result<(u32, Sections<'_>)> {
    let flags = rest
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .filter(|_| rest.len() >= 5)
        .ok_or_else(|| Error::Malformed("OP_MSG too short".into()))?;
    let end = if flags & CHECKSUM_PRESENT != 0 {
        rest.len().checked_sub(4)
    } else {
        Some(rest.len())
    };
    let end = end
        .filter(|end| *end >= 4)
        .ok_or_else(|| Error::Malformed("OP_MSG too short for its checksum".into()))?;
    Ok((
        flags,
        Sections {
            rest: &rest[4..end],
        },
    ))
}

impl<'a> Iterator for Sections<'a> {
    type Item = Result<(u8, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, after) = self.rest.split_first()?;
        let size = after
            .get(..4)
            .and_then(|b| usize::try_from(i32::from_le_bytes(b.try_into().ok()?)).ok())
            .filter(|size| (4..=after.len()).contains(size));
        let Some(size) = size else {
            self.rest = &[];
            return Some(Err(Error::Malformed("section size out of range".into())));
        };
        self.rest = &after[size..];
        Some(Ok((kind, &after[..size])))
    }
}

/// The kind-0 body of an OP_MSG (`rest`: the bytes after the header); kind-1 sequences skipped.
pub fn op_msg_body(rest: &[u8]) -> Result<Document> {
    for section in msg_sections(rest)?.1 {
        let (kind, bytes) = section?;
        if kind == 0 {
            return Ok(Document::from_reader(bytes)?);
        }
    }
    Err(Error::Malformed("OP_MSG without a kind-0 section".into()))
}

/// Whether a reply says `ok: 1` (as a double, int, long or boolean).
pub fn is_ok(reply: &Document) -> bool {
    match reply.get("ok") {
        Some(bson::Bson::Double(v)) => *v == 1.0,
        Some(bson::Bson::Int32(v)) => *v == 1,
        Some(bson::Bson::Int64(v)) => *v == 1,
        Some(bson::Bson::Boolean(b)) => *b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn encoded_message_round_trips_through_the_decoder() {
        let cmd = doc! {"ping": 1, "$db": "admin"};
        let msg = encode_op_msg(7, &cmd).unwrap();
        let h = Header::parse(&msg).unwrap();
        assert_eq!(h.length as usize, msg.len());
        assert_eq!((h.request_id, h.response_to, h.op_code), (7, 0, OP_MSG));
        assert_eq!(op_msg_body(&msg[HEADER_LEN..]).unwrap(), cmd);
    }

    #[test]
    fn decoder_skips_document_sequences_and_checksums() {
        let body = bson::to_vec(&doc! {"ok": 1.0}).unwrap();
        let mut rest = CHECKSUM_PRESENT.to_le_bytes().to_vec();
        rest.push(1); // kind 1: size, identifier, no documents
        rest.extend_from_slice(&(4 + 2i32).to_le_bytes());
        rest.extend_from_slice(b"x\0");
        rest.push(0);
        rest.extend_from_slice(&body);
        rest.extend_from_slice(&[0, 0, 0, 0]); // checksum (not verified)
        assert!(is_ok(&op_msg_body(&rest).unwrap()));
    }

    #[test]
    fn decoder_rejects_overrunning_and_tiny_sections() {
        let mut rest = 0u32.to_le_bytes().to_vec();
        rest.push(0);
        rest.extend_from_slice(&1000i32.to_le_bytes());
        assert!(op_msg_body(&rest).is_err());
        let mut rest = 0u32.to_le_bytes().to_vec();
        rest.push(1);
        rest.extend_from_slice(&2i32.to_le_bytes());
        assert!(op_msg_body(&rest).is_err());
    }

    #[tokio::test]
    async fn reads_whole_messages_and_tells_close_from_garbage() {
        let msg = encode_op_msg(1, &doc! {"ping": 1}).unwrap();
        let mut two = msg.clone();
        two.extend_from_slice(&msg);
        let mut r = &two[..];
        assert_eq!(
            read_message(&mut r, MAX_MESSAGE).await.unwrap(),
            Some(msg.clone())
        );
        assert_eq!(
            read_message(&mut r, MAX_MESSAGE).await.unwrap(),
            Some(msg.clone())
        );
        assert!(read_message(&mut r, MAX_MESSAGE).await.unwrap().is_none());
        // A partial length prefix is a close too; a partial body is not.
        assert!(read_message(&mut &msg[..2], MAX_MESSAGE)
            .await
            .unwrap()
            .is_none());
        assert!(read_message(&mut &msg[..20], MAX_MESSAGE).await.is_err());
        // Lengths out of bounds are refused before anything is allocated.
        assert!(read_message(&mut &msg[..], msg.len() - 1).await.is_err());
        let tiny = Header {
            length: 10,
            request_id: 1,
            response_to: 0,
            op_code: OP_MSG,
        };
        assert!(read_message(&mut &tiny.to_bytes()[..], MAX_MESSAGE)
            .await
            .is_err());
        let negative = [0xff; 16];
        assert!(read_message(&mut &negative[..], MAX_MESSAGE).await.is_err());
    }
}
