//! The legacy OP_QUERY / OP_REPLY pair (source/message/OP_MSG.md refers to them; their layout is in
//! the server's "Legacy Opcodes" documentation). Drivers still send their first `hello`/`isMaster`
//! as OP_QUERY on `admin.$cmd`, and expect an OP_REPLY back; nothing else uses them any more.

use bson::RawDocument;

use crate::header::{take_cstring, take_document, take_i32, Header, OpCode, HEADER_LEN};
use crate::{Result, WireError};

/// OP_REPLY responseFlags bit 1: the query failed and the single document is `{$err: ...}`.
pub const REPLY_QUERY_FAILURE: i32 = 1 << 1;

/// A parsed OP_QUERY: `int32 flags, cstring fullCollectionName, int32 numberToSkip,
/// int32 numberToReturn, document query, [document returnFieldsSelector]`.
#[derive(Debug, Clone)]
pub struct OpQuery<'a> {
    /// The header of the message.
    pub header: Header,
    /// Query flags (tailable, secondaryOk, ...).
    pub flags: i32,
    /// `db.collection`; commands use `db.$cmd`.
    pub full_collection_name: &'a str,
    /// Documents to skip.
    pub number_to_skip: i32,
    /// Documents to return in the first batch.
    pub number_to_return: i32,
    /// The query, or for `$cmd` the command document.
    pub query: &'a RawDocument,
    /// Optional projection.
    pub return_fields_selector: Option<&'a RawDocument>,
}

impl<'a> OpQuery<'a> {
    /// Parses a whole OP_QUERY message (header included).
    pub fn parse(message: &'a [u8]) -> Result<Self> {
        let header = Header::parse(message)?;
        if header.op_code != OpCode::Query {
            return Err(WireError::UnexpectedOpCode(header.op_code.as_i32()));
        }
        if header.length as usize != message.len() {
            return Err(WireError::Truncated("OP_QUERY"));
        }
        let flags = take_i32(message, HEADER_LEN, "OP_QUERY flags")?;
        let (name, at) = take_cstring(message, HEADER_LEN + 4, "OP_QUERY collection name")?;
        let number_to_skip = take_i32(message, at, "OP_QUERY numberToSkip")?;
        let number_to_return = take_i32(message, at + 4, "OP_QUERY numberToReturn")?;
        let (query, at) = take_document(message, at + 8, "OP_QUERY query")?;
        let (return_fields_selector, at) = if at < message.len() {
            let (d, next) = take_document(message, at, "OP_QUERY selector")?;
            (Some(d), next)
        } else {
            (None, at)
        };
        if at != message.len() {
            return Err(WireError::TrailingBytes(message.len() - at));
        }
        Ok(OpQuery {
            header,
            flags,
            full_collection_name: name,
            number_to_skip,
            number_to_return,
            query,
            return_fields_selector,
        })
    }

    /// The database part of the collection name.
    pub fn database(&self) -> &'a str {
        self.full_collection_name
            .split_once('.')
            .map_or(self.full_collection_name, |(db, _)| db)
    }

    /// Whether this is a command (`<db>.$cmd`).
    pub fn is_command(&self) -> bool {
        self.full_collection_name.ends_with(".$cmd")
    }
}

/// A parsed OP_REPLY: `int32 responseFlags, int64 cursorID, int32 startingFrom,
/// int32 numberReturned, document* documents`.
#[derive(Debug, Clone)]
pub struct OpReply<'a> {
    /// The header of the message.
    pub header: Header,
    /// Response flags.
    pub response_flags: i32,
    /// Cursor id, 0 when exhausted.
    pub cursor_id: i64,
    /// Position of the first document in the cursor.
    pub starting_from: i32,
    /// The documents.
    pub documents: Vec<&'a RawDocument>,
}

impl<'a> OpReply<'a> {
    /// Parses a whole OP_REPLY message.
    pub fn parse(message: &'a [u8]) -> Result<Self> {
        let header = Header::parse(message)?;
        if header.op_code != OpCode::Reply {
            return Err(WireError::UnexpectedOpCode(header.op_code.as_i32()));
        }
        if header.length as usize != message.len() || message.len() < HEADER_LEN + 20 {
            return Err(WireError::Truncated("OP_REPLY"));
        }
        let response_flags = take_i32(message, HEADER_LEN, "OP_REPLY flags")?;
        let cursor_id = i64::from_le_bytes(
            message[HEADER_LEN + 4..HEADER_LEN + 12]
                .try_into()
                .expect("8 bytes"),
        );
        let starting_from = take_i32(message, HEADER_LEN + 12, "OP_REPLY startingFrom")?;
        let number_returned = take_i32(message, HEADER_LEN + 16, "OP_REPLY numberReturned")?;
        let mut at = HEADER_LEN + 20;
        let mut documents = Vec::new();
        while at < message.len() {
            let (d, next) = take_document(message, at, "OP_REPLY document")?;
            documents.push(d);
            at = next;
        }
        if documents.len() as i64 != number_returned as i64 {
            return Err(WireError::Truncated("OP_REPLY documents"));
        }
        Ok(OpReply {
            header,
            response_flags,
            cursor_id,
            starting_from,
            documents,
        })
    }
}

/// Encodes an OP_REPLY carrying `documents`.
pub fn encode_op_reply(
    request_id: i32,
    response_to: i32,
    response_flags: i32,
    documents: &[&[u8]],
) -> Vec<u8> {
    let size: usize = documents.iter().map(|d| d.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + 20 + size);
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.extend_from_slice(&response_flags.to_le_bytes());
    out.extend_from_slice(&0i64.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&(documents.len() as i32).to_le_bytes());
    for d in documents {
        out.extend_from_slice(d);
    }
    let header = Header {
        length: out.len() as i32,
        request_id,
        response_to,
        op_code: OpCode::Reply,
    };
    out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    /// Builds an OP_QUERY the way a driver's legacy handshake does.
    pub(crate) fn encode_query(name: &str, query: &RawDocument) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_LEN];
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(&(-1i32).to_le_bytes());
        out.extend_from_slice(query.as_bytes());
        let h = Header {
            length: out.len() as i32,
            request_id: 3,
            response_to: 0,
            op_code: OpCode::Query,
        };
        out[..HEADER_LEN].copy_from_slice(&h.to_bytes());
        out
    }

    #[test]
    fn query_parses() {
        let q = rawdoc! { "isMaster": 1, "helloOk": true };
        let bytes = encode_query("admin.$cmd", &q);
        let parsed = OpQuery::parse(&bytes).unwrap();
        assert!(parsed.is_command());
        assert_eq!(parsed.database(), "admin");
        assert_eq!(parsed.number_to_return, -1);
        assert!(parsed.query.get_bool("helloOk").unwrap());
        assert!(parsed.return_fields_selector.is_none());
        for cut in 0..bytes.len() {
            let mut b = bytes[..cut].to_vec();
            if b.len() >= 4 {
                let len = b.len() as i32;
                b[0..4].copy_from_slice(&len.to_le_bytes());
            }
            assert!(OpQuery::parse(&b).is_err());
        }
    }

    #[test]
    fn reply_round_trip() {
        let d = rawdoc! { "ok": 1.0, "msg": "isdbgrid" };
        let bytes = encode_op_reply(5, 3, 0, &[d.as_bytes()]);
        let r = OpReply::parse(&bytes).unwrap();
        assert_eq!(r.header.response_to, 3);
        assert_eq!(r.documents.len(), 1);
        assert_eq!(r.documents[0].get_str("msg").unwrap(), "isdbgrid");
    }
}
