//! OP_MSG (source/message/OP_MSG.md): `uint32 flagBits`, one kind-0 body section, any number of
//! kind-1 document sequences, and an optional CRC-32C checksum.

use bson::RawDocument;

use crate::crc32c::crc32c;
use crate::header::{take_cstring, take_document, take_i32, Header, OpCode, HEADER_LEN};
use crate::{Result, WireError};

/// OP_MSG flag bits (OP_MSG.md, "Flag Bits").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsgFlags(pub u32);

impl MsgFlags {
    /// Bit 0: a CRC-32C checksum follows the sections.
    pub const CHECKSUM_PRESENT: u32 = 1;
    /// Bit 1: the sender will send another message without waiting for a reply.
    pub const MORE_TO_COME: u32 = 1 << 1;
    /// Bit 16: the client accepts several replies to one request (exhaust cursors, streaming hello).
    pub const EXHAUST_ALLOWED: u32 = 1 << 16;
    /// The low 16 bits are "required": a receiver must reject any it does not know.
    const KNOWN_REQUIRED: u32 = Self::CHECKSUM_PRESENT | Self::MORE_TO_COME;

    /// Whether a checksum is present.
    pub fn checksum_present(self) -> bool {
        self.0 & Self::CHECKSUM_PRESENT != 0
    }
    /// Whether no reply is expected.
    pub fn more_to_come(self) -> bool {
        self.0 & Self::MORE_TO_COME != 0
    }
    /// Whether the sender allows exhaust replies.
    pub fn exhaust_allowed(self) -> bool {
        self.0 & Self::EXHAUST_ALLOWED != 0
    }
}

/// A kind-1 section: a named run of documents (e.g. `documents` of an `insert`).
#[derive(Debug, Clone, Copy)]
pub struct DocSequence<'a> {
    /// The field name the documents stand for.
    pub identifier: &'a str,
    /// The documents, back to back; each was framed when the message was parsed.
    pub documents: &'a [u8],
}

impl<'a> DocSequence<'a> {
    /// Iterates the documents of the sequence.
    pub fn iter(&self) -> impl Iterator<Item = &'a RawDocument> + 'a {
        let buf = self.documents;
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= buf.len() {
                return None;
            }
            // Framing was validated in `OpMsg::parse`, so this cannot fail.
            let (doc, next) = take_document(buf, at, "document sequence").ok()?;
            at = next;
            Some(doc)
        })
    }
}

/// A parsed OP_MSG, borrowing from the message bytes.
#[derive(Debug, Clone)]
pub struct OpMsg<'a> {
    /// The header of the message.
    pub header: Header,
    /// The flag bits.
    pub flags: MsgFlags,
    /// The kind-0 section: the command or reply document.
    pub body: &'a RawDocument,
    /// The kind-1 sections, in wire order.
    pub sequences: Vec<DocSequence<'a>>,
}

impl<'a> OpMsg<'a> {
    /// Parses a whole OP_MSG message (header included), verifying the checksum if present.
    pub fn parse(message: &'a [u8]) -> Result<Self> {
        let header = Header::parse(message)?;
        if header.op_code != OpCode::Msg {
            return Err(WireError::UnexpectedOpCode(header.op_code.as_i32()));
        }
        if header.length as usize != message.len() {
            return Err(WireError::Truncated("OP_MSG"));
        }
        let flags = MsgFlags(take_i32(message, HEADER_LEN, "OP_MSG flags")? as u32);
        let unknown = flags.0 & 0xffff & !MsgFlags::KNOWN_REQUIRED;
        if unknown != 0 {
            return Err(WireError::UnknownRequiredFlags(unknown));
        }
        let mut end = message.len();
        if flags.checksum_present() {
            if end < HEADER_LEN + 8 {
                return Err(WireError::Truncated("OP_MSG checksum"));
            }
            end -= 4;
            let declared = u32::from_le_bytes(message[end..].try_into().expect("4 bytes"));
            if crc32c(&message[..end]) != declared {
                return Err(WireError::ChecksumMismatch);
            }
        }
        let sections = &message[..end];
        let mut at = HEADER_LEN + 4;
        let mut body = None;
        let mut bodies = 0;
        let mut sequences: Vec<DocSequence<'a>> = Vec::new();
        while at < end {
            let kind = sections[at];
            at += 1;
            match kind {
                0 => {
                    let (doc, next) = take_document(sections, at, "OP_MSG body")?;
                    body = Some(doc);
                    bodies += 1;
                    at = next;
                }
                1 => {
                    let (seq, next) = parse_sequence(sections, at)?;
                    if sequences.iter().any(|s| s.identifier == seq.identifier) {
                        return Err(WireError::DuplicateSequence);
                    }
                    sequences.push(seq);
                    at = next;
                }
                other => return Err(WireError::UnknownSectionKind(other)),
            }
        }
        match (body, bodies) {
            (Some(body), 1) => Ok(OpMsg {
                header,
                flags,
                body,
                sequences,
            }),
            (_, n) => Err(WireError::BodyCount(n)),
        }
    }

    /// The command name: the first key of the body.
    pub fn command_name(&self) -> Result<&'a str> {
        match self.body.iter().next() {
            Some(Ok((key, _))) => Ok(key),
            _ => Err(WireError::InvalidBson("OP_MSG body")),
        }
    }
}

/// Parses one kind-1 section starting at its size field.
fn parse_sequence(buf: &[u8], at: usize) -> Result<(DocSequence<'_>, usize)> {
    let size = take_i32(buf, at, "document sequence size")?;
    // The size counts itself but not the kind byte.
    if size < 5 {
        return Err(WireError::Truncated("document sequence"));
    }
    let end = at
        .checked_add(size as usize)
        .filter(|end| *end <= buf.len())
        .ok_or(WireError::Truncated("document sequence"))?;
    let (identifier, mut pos) = take_cstring(&buf[..end], at + 4, "document sequence identifier")?;
    let docs_start = pos;
    while pos < end {
        let (_, next) = take_document(&buf[..end], pos, "document sequence")?;
        pos = next;
    }
    Ok((
        DocSequence {
            identifier,
            documents: &buf[docs_start..end],
        },
        end,
    ))
}

/// Encodes an OP_MSG with the given body and document sequences, without a checksum.
pub fn encode_op_msg(
    request_id: i32,
    response_to: i32,
    flags: u32,
    body: &[u8],
    sequences: &[(&str, &[&[u8]])],
) -> Vec<u8> {
    let flags = flags & !MsgFlags::CHECKSUM_PRESENT;
    let mut out = Vec::with_capacity(HEADER_LEN + 5 + body.len());
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    out.extend_from_slice(body);
    for (identifier, docs) in sequences {
        out.push(1);
        let size_at = out.len();
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(identifier.as_bytes());
        out.push(0);
        for d in *docs {
            out.extend_from_slice(d);
        }
        let size = (out.len() - size_at) as i32;
        out[size_at..size_at + 4].copy_from_slice(&size.to_le_bytes());
    }
    let header = Header {
        length: out.len() as i32,
        request_id,
        response_to,
        op_code: OpCode::Msg,
    };
    out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn sample() -> Vec<u8> {
        let body = rawdoc! { "insert": "c", "$db": "test" };
        let d1 = rawdoc! { "_id": 1 };
        let d2 = rawdoc! { "_id": 2, "x": "y" };
        encode_op_msg(
            7,
            0,
            0,
            body.as_bytes(),
            &[("documents", &[d1.as_bytes(), d2.as_bytes()])],
        )
    }

    #[test]
    fn round_trip_with_sequence() {
        let bytes = sample();
        let msg = OpMsg::parse(&bytes).unwrap();
        assert_eq!(msg.header.request_id, 7);
        assert_eq!(msg.command_name().unwrap(), "insert");
        assert_eq!(msg.body.get_str("$db").unwrap(), "test");
        assert_eq!(msg.sequences.len(), 1);
        assert_eq!(msg.sequences[0].identifier, "documents");
        let ids: Vec<i32> = msg.sequences[0]
            .iter()
            .map(|d| d.get_i32("_id").unwrap())
            .collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn checksum_verified() {
        let mut bytes = sample();
        let flags = MsgFlags::CHECKSUM_PRESENT;
        bytes[16..20].copy_from_slice(&flags.to_le_bytes());
        let len = bytes.len() + 4;
        bytes[0..4].copy_from_slice(&(len as i32).to_le_bytes());
        let crc = crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert!(OpMsg::parse(&bytes).unwrap().flags.checksum_present());
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            OpMsg::parse(&bytes).unwrap_err(),
            WireError::ChecksumMismatch
        );
    }

    #[test]
    fn rejects_unknown_required_flag() {
        let mut bytes = sample();
        bytes[16] = 0b100;
        assert_eq!(
            OpMsg::parse(&bytes).unwrap_err(),
            WireError::UnknownRequiredFlags(4)
        );
        // Optional bits (high 16) are allowed.
        let mut bytes = sample();
        bytes[18] = 1;
        assert!(OpMsg::parse(&bytes).unwrap().flags.exhaust_allowed());
    }

    #[test]
    fn rejects_two_bodies_and_no_body() {
        let body = rawdoc! { "ping": 1, "$db": "admin" };
        let mut bytes = encode_op_msg(1, 0, 0, body.as_bytes(), &[]);
        bytes.push(0);
        bytes.extend_from_slice(body.as_bytes());
        let len = bytes.len() as i32;
        bytes[0..4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(OpMsg::parse(&bytes).unwrap_err(), WireError::BodyCount(2));
        let mut none = encode_op_msg(1, 0, 0, body.as_bytes(), &[]);
        none.truncate(HEADER_LEN + 4);
        none[0..4].copy_from_slice(&20i32.to_le_bytes());
        assert_eq!(OpMsg::parse(&none).unwrap_err(), WireError::BodyCount(0));
    }

    #[test]
    fn rejects_bad_sequence_sizes() {
        let mut bytes = sample();
        // Sequence size field sits right after the body section.
        let body_len = rawdoc! { "insert": "c", "$db": "test" }.as_bytes().len();
        let at = HEADER_LEN + 4 + 1 + body_len + 1;
        bytes[at..at + 4].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(OpMsg::parse(&bytes).is_err());
        bytes[at..at + 4].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(OpMsg::parse(&bytes).is_err());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        // Cutting exactly after the body leaves a valid body-only message.
        let body_end =
            HEADER_LEN + 4 + 1 + rawdoc! { "insert": "c", "$db": "test" }.as_bytes().len();
        for cut in (0..bytes.len()).filter(|c| *c != body_end) {
            let mut b = bytes[..cut].to_vec();
            if b.len() >= 4 {
                let len = b.len() as i32;
                b[0..4].copy_from_slice(&len.to_le_bytes());
            }
            assert!(OpMsg::parse(&b).is_err(), "cut at {cut}");
        }
    }
}
