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

/// The error code of a `{ok: 0}` reply body. Read on every forwarded reply, so it walks the
/// top-level elements as bytes and decodes only `ok` and `code`.
pub fn reply_error_code(body: &RawDocument) -> Option<i32> {
    let (mut failed, mut code) = (false, None);
    for element in scan::elements(body.as_bytes()).ok()? {
        let element = element.ok()?;
        match element.key {
            b"ok" => {
                failed = match element.kind {
                    scan::kind::DOUBLE | scan::kind::INT32 | scan::kind::INT64 => {
                        element.as_i64() == Some(0)
                            || (element.kind == scan::kind::DOUBLE
                                && element.value == 0f64.to_le_bytes())
                    }
                    scan::kind::BOOLEAN => element.as_bool() == Some(false),
                    _ => false,
                }
            }
            b"code" => code = element.as_i64().map(|c| c as i32),
            _ => {}
        }
    }
    if failed {
        code
    } else {
        None
    }
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
        for ok in [
            rawdoc! { "ok": 0, "code": 13 },
            rawdoc! { "code": 13, "ok": false },
            rawdoc! { "ok": 0i64, "code": 13.0 },
        ] {
            assert_eq!(reply_error_code(&ok), Some(13), "{ok:?}");
        }
        for ok in [
            rawdoc! { "ok": 1, "code": 13 },
            rawdoc! { "ok": 0.5, "code": 13 },
            rawdoc! { "ok": "0", "code": 13 },
            rawdoc! { "code": 13 },
        ] {
            assert_eq!(reply_error_code(&ok), None, "{ok:?}");
        }
        assert_eq!(reply_cursor(&e), None);
    }
}
