//! The few fields of a client command the gateway routes on, read once from the raw body
//! without decoding the rest (`bson::RawDocument` lookups). Everything else is forwarded as
//! bytes untouched.

use bson::{RawBsonRef, RawDocument, RawDocumentBuf};
use mongomux_wire::{scan, OpMsg};

use crate::error::GatewayError;

/// Routing facts about one OP_MSG request.
#[derive(Debug)]
pub struct RequestInfo {
    /// The client's requestID, echoed in the reply's responseTo.
    pub request_id: i32,
    /// First key of the body.
    pub command: String,
    /// `$db`.
    pub db: String,
    /// The client expects no reply.
    pub more_to_come: bool,
    /// The logical session, if any.
    pub lsid: Option<RawDocumentBuf>,
    /// `txnNumber`, present on retryable writes and transaction commands.
    pub txn_number: Option<i64>,
    /// `autocommit: false`: the command belongs to a multi-statement transaction.
    pub in_transaction: bool,
    /// `startTransaction: true`.
    pub start_transaction: bool,
    /// The cursor id of a `getMore`.
    pub get_more_id: Option<i64>,
}

impl RequestInfo {
    /// Reads the routing fields of a parsed message.
    pub fn from_msg(msg: &OpMsg<'_>) -> Result<RequestInfo, GatewayError> {
        let body = msg.body;
        let mut info = RequestInfo {
            request_id: msg.header.request_id,
            command: String::new(),
            db: String::new(),
            more_to_come: msg.flags.more_to_come(),
            lsid: None,
            txn_number: None,
            in_transaction: false,
            start_transaction: false,
            get_more_id: None,
        };
        let mut first = true;
        // A byte-level walk (mongomux_wire::scan): only the few fields routed on are decoded; the
        // filter, documents and the rest of the command are forwarded without being looked at.
        let fields = scan::elements(body.as_bytes())
            .map_err(|e| GatewayError::InvalidBson(e.to_string()))?;
        for element in fields {
            let element = element.map_err(|e| GatewayError::InvalidBson(e.to_string()))?;
            if first {
                first = false;
                info.command = std::str::from_utf8(element.key)
                    .map_err(|_| GatewayError::InvalidBson("command name is not UTF-8".into()))?
                    .to_string();
                if element.key == b"getMore" {
                    info.get_more_id = element.as_i64();
                }
                continue;
            }
            match element.key {
                b"$db" => {
                    if let Some(db) = element.as_str() {
                        info.db = db.to_string();
                    }
                }
                b"lsid" => {
                    if let Some(d) = element.as_document() {
                        let d = RawDocument::from_bytes(d)
                            .map_err(|e| GatewayError::InvalidBson(e.to_string()))?;
                        info.lsid = Some(d.to_raw_document_buf());
                    }
                }
                b"txnNumber" => info.txn_number = element.as_i64(),
                b"autocommit" => info.in_transaction = element.as_bool() == Some(false),
                b"startTransaction" => info.start_transaction = element.as_bool() == Some(true),
                _ => {}
            }
        }
        if first {
            return Err(GatewayError::BadCommand("empty command document".into()));
        }
        if info.db.is_empty() {
            return Err(GatewayError::BadCommand(
                "OP_MSG command is missing the $db field".into(),
            ));
        }
        Ok(info)
    }

    /// Whether this command ends the transaction it belongs to.
    pub fn ends_transaction(&self) -> bool {
        matches!(
            self.command.as_str(),
            "commitTransaction" | "abortTransaction"
        )
    }
}

/// Reads an integer field as i64 whatever its BSON width.
pub fn as_i64(v: RawBsonRef<'_>) -> Option<i64> {
    match v {
        RawBsonRef::Int64(n) => Some(n),
        RawBsonRef::Int32(n) => Some(n as i64),
        RawBsonRef::Double(f) if f.fract() == 0.0 => Some(f as i64),
        _ => None,
    }
}

/// `cursor.id` and `cursor.ns` of a reply body, when it carries a cursor.
///
/// On every forwarded reply, so it walks elements once and decodes only `cursor`, `id` and `ns`
/// (keyed lookups would walk the cursor document once per key and decode the batch on the way).
pub fn reply_cursor(body: &RawDocument) -> Option<(i64, &str)> {
    let cursor = scan::elements(body.as_bytes())
        .ok()?
        .map_while(Result::ok)
        .find(|e| e.key == b"cursor")?
        .as_document()?;
    let (mut id, mut ns) = (None, "");
    for element in scan::elements(cursor).ok()? {
        let element = element.ok()?;
        match element.key {
            b"id" => id = element.as_i64(),
            b"ns" => ns = element.as_str().unwrap_or(""),
            _ => {}
        }
    }
    Some((id?, ns))
}

/// The error code of a `{ok: 0}` reply body.
pub fn reply_error_code(body: &RawDocument) -> Option<i32> {
    let ok = body.get("ok").ok()??;
    let failed = match ok {
        RawBsonRef::Double(f) => f == 0.0,
        RawBsonRef::Int32(n) => n == 0,
        RawBsonRef::Int64(n) => n == 0,
        RawBsonRef::Boolean(b) => !b,
        _ => false,
    };
    if !failed {
        return None;
    }
    body.get("code").ok()?.and_then(as_i64).map(|c| c as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{rawdoc, spec::BinarySubtype, Binary};
    use mongomux_wire::encode_op_msg;

    #[test]
    fn reads_routing_fields() {
        let lsid = rawdoc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] } };
        let body = rawdoc! {
            "insert": "c", "lsid": lsid.clone(), "txnNumber": 3i64, "autocommit": false,
            "startTransaction": true, "$db": "app",
        };
        let bytes = encode_op_msg(9, 0, 0, body.as_bytes(), &[]);
        let msg = OpMsg::parse(&bytes).unwrap();
        let info = RequestInfo::from_msg(&msg).unwrap();
        assert_eq!(info.command, "insert");
        assert_eq!(info.db, "app");
        assert_eq!(info.txn_number, Some(3));
        assert!(info.in_transaction && info.start_transaction);
        assert_eq!(info.lsid.unwrap().as_bytes(), lsid.as_bytes());
    }

    #[test]
    fn missing_db_is_an_error() {
        let body = rawdoc! { "find": "c" };
        let bytes = encode_op_msg(1, 0, 0, body.as_bytes(), &[]);
        let msg = OpMsg::parse(&bytes).unwrap();
        assert!(RequestInfo::from_msg(&msg).is_err());
    }

    #[test]
    fn cursor_and_error_of_replies() {
        let r = rawdoc! { "cursor": { "id": 5i64, "ns": "a.b", "firstBatch": [] }, "ok": 1.0 };
        assert_eq!(reply_cursor(&r), Some((5, "a.b")));
        assert_eq!(reply_error_code(&r), None);
        let e = rawdoc! { "ok": 0.0, "code": 43, "errmsg": "x" };
        assert_eq!(reply_error_code(&e), Some(43));
    }
}
