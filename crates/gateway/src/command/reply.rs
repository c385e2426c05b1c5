//! The few facts the gateway reads from an upstream reply: the cursor it opened (`cursor.id`,
//! `cursor.ns`) and the error code of an `{ok: 0}` answer. Read on every forwarded reply, so
//! [`ReplyFacts::read`] walks the top-level elements once, as bytes, and decodes only `ok`,
//! `code` and the cursor's `id` and `ns`; the batch is never decoded.

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

/// What the gateway reads from every forwarded reply, in one walk of its top-level elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyFacts<'a> {
    /// `cursor.id` and `cursor.ns`, when the reply carries a cursor.
    pub cursor: Option<(i64, &'a str)>,
    /// The error code of an `{ok: 0}` reply.
    pub error_code: Option<i32>,
    /// Offset, in the reply body, of `cursor.id` when it is an int64 (for hiding it, `route::cursor_ids`).
    pub cursor_id_at: Option<usize>,
}

impl<'a> ReplyFacts<'a> {
    /// Reads a reply body.
    pub fn read(body: &'a RawDocument) -> ReplyFacts<'a> {
        let (mut failed, mut code, mut cursor, mut cursor_id_at) = (false, None, None, None);
        let bytes = body.as_bytes();
        if let Ok(elements) = scan::elements(bytes) {
            for element in elements.map_while(Result::ok) {
                match element.key {
                    b"ok" => failed = is_zero(&element),
                    b"code" => code = element.as_i64().map(|c| c as i32),
                    b"cursor" => {
                        if let Some(doc) = element.as_document() {
                            if let Some((id, ns, id_at)) = cursor_of(doc) {
                                cursor = Some((id, ns));
                                let doc_at = doc.as_ptr() as usize - bytes.as_ptr() as usize;
                                cursor_id_at = id_at.map(|at| doc_at + at);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        ReplyFacts {
            cursor,
            error_code: if failed { code } else { None },
            cursor_id_at,
        }
    }
}

/// Whether an `ok` field says the command failed.
fn is_zero(element: &scan::Element<'_>) -> bool {
    match element.kind {
        scan::kind::DOUBLE | scan::kind::INT32 | scan::kind::INT64 => element.as_i64() == Some(0),
        scan::kind::BOOLEAN => element.as_bool() == Some(false),
        _ => false,
    }
}

/// `id` and `ns` of a cursor document, and the offset in it of `id` when that is an int64.
fn cursor_of(cursor: &[u8]) -> Option<(i64, &str, Option<usize>)> {
    let (mut id, mut ns, mut id_at) = (None, "", None);
    for element in scan::elements(cursor).ok()? {
        let element = element.ok()?;
        match element.key {
            b"id" => {
                id = element.as_i64();
                id_at = (element.kind == scan::kind::INT64)
                    .then(|| element.value.as_ptr() as usize - cursor.as_ptr() as usize);
            }
            b"ns" => ns = element.as_str().unwrap_or(""),
            _ => {}
        }
    }
    Some((id?, ns, id_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn cursor_and_error_of_replies() {
        let r = rawdoc! { "cursor": { "id": 5i64, "ns": "a.b", "firstBatch": [] }, "ok": 1.0 };
        assert_eq!(ReplyFacts::read(&r).cursor, Some((5, "a.b")));
        let at = ReplyFacts::read(&r).cursor_id_at.unwrap();
        assert_eq!(&r.as_bytes()[at..at + 8], &5i64.to_le_bytes());
        assert_eq!(ReplyFacts::read(&r).error_code, None);
        let e = rawdoc! { "ok": 0.0, "code": 43, "errmsg": "x" };
        assert_eq!(ReplyFacts::read(&e).error_code, Some(43));
        for ok in [
            rawdoc! { "ok": 0, "code": 13 },
            rawdoc! { "code": 13, "ok": false },
            rawdoc! { "ok": 0i64, "code": 13.0 },
        ] {
            assert_eq!(ReplyFacts::read(&ok).error_code, Some(13), "{ok:?}");
        }
        for ok in [
            rawdoc! { "ok": 1, "code": 13 },
            rawdoc! { "ok": 0.5, "code": 13 },
            rawdoc! { "ok": "0", "code": 13 },
            rawdoc! { "code": 13 },
        ] {
            assert_eq!(ReplyFacts::read(&ok).error_code, None, "{ok:?}");
        }
        assert_eq!(ReplyFacts::read(&e).cursor, None);
    }
}
