//! The few facts the gateway reads from an upstream reply: the cursor it opened (`cursor.id`,
//! `cursor.ns`) and the error code of an `{ok: 0}` answer. Read on every forwarded reply, so the
//! cursor lookup walks elements once and decodes only `cursor`, `id` and `ns`; the batch is never
//! decoded.

use bson::{RawBsonRef, RawDocument};
use mongomux_wire::scan;

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
    use bson::rawdoc;

    #[test]
    fn cursor_and_error_of_replies() {
        let r = rawdoc! { "cursor": { "id": 5i64, "ns": "a.b", "firstBatch": [] }, "ok": 1.0 };
        assert_eq!(reply_cursor(&r), Some((5, "a.b")));
        assert_eq!(reply_error_code(&r), None);
        let e = rawdoc! { "ok": 0.0, "code": 43, "errmsg": "x" };
        assert_eq!(reply_error_code(&e), Some(43));
        assert_eq!(reply_cursor(&e), None);
    }
}
