//! Request and response bodies of the Data API: JSON text to BSON and back.
//!
//! Requests, as `application/json` or `application/ejson`, may use canonical or relaxed MongoDB
//! Extended JSON (`{"$oid": ...}`, `{"$date": ...}`), as the retired Atlas Data API allowed.
//! A key given twice in any object is refused: JSON parsers disagree on which value wins, and a
//! filter must not mean one thing to a proxy that inspected it and another to the database.
//!
//! Responses are canonical Extended JSON for `Accept: application/ejson` (every BSON type kept)
//! and plain JSON otherwise: ObjectId as its hex string, dates as ISO-8601 strings, integers
//! and doubles as numbers, decimals as strings, binary data as base64; the rarer types
//! (timestamps, regular expressions, code, min/max keys) keep their relaxed Extended JSON form.

use std::collections::HashSet;
use std::fmt;

use bson::{Bson, Document};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::error::GatewayError;

/// How a response body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain JSON (`application/json`).
    Json,
    /// Canonical Extended JSON (`application/ejson`).
    Ejson,
}

impl Format {
    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ejson => "application/ejson",
        }
    }
}

/// Walks a JSON text and fails on an object with a repeated key, at any depth.
struct NoRepeats;

impl<'de> de::Deserialize<'de> for NoRepeats {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NoRepeats, D::Error> {
        d.deserialize_any(NoRepeatsVisitor)
    }
}

struct NoRepeatsVisitor;

impl<'de> Visitor<'de> for NoRepeatsVisitor {
    type Value = NoRepeats;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoRepeats, E> {
        Ok(NoRepeats)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoRepeats, E> {
        Ok(NoRepeats)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoRepeats, E> {
        Ok(NoRepeats)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoRepeats, E> {
        Ok(NoRepeats)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoRepeats, E> {
        Ok(NoRepeats)
    }
    fn visit_unit<E>(self) -> Result<NoRepeats, E> {
        Ok(NoRepeats)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoRepeats, A::Error> {
        while seq.next_element::<NoRepeats>()?.is_some() {}
        Ok(NoRepeats)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoRepeats, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!(
                    "the key {:?} appears twice in one object",
                    crate::text::bounded_prefix(&key, 64)
                )));
            }
            map.next_value::<NoRepeats>()?;
        }
        Ok(NoRepeats)
    }
}

/// Parses a request body: one JSON object, no repeated keys, Extended JSON values decoded.
pub fn parse_body(bytes: &[u8]) -> Result<Document, GatewayError> {
    let bad = |why: String| GatewayError::BadCommand(format!("invalid request body: {why}"));
    serde_json::from_slice::<NoRepeats>(bytes).map_err(|e| bad(e.to_string()))?;
    let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad("it must be a JSON object".into()));
    }
    match Bson::try_from(value) {
        Ok(Bson::Document(doc)) => Ok(doc),
        Ok(_) => Err(bad(
            "the body is a single Extended JSON value, not an object of fields".into(),
        )),
        Err(e) => Err(bad(format!("bad Extended JSON: {e}"))),
    }
}

/// Writes a response document in `format`. The answer's own counts (`matchedCount`, ...) are
/// plain numbers in both formats: they are the API's, not the database's values.
pub fn render(doc: Document, format: Format) -> Vec<u8> {
    let value = match format {
        Format::Ejson => Value::Object(
            doc.into_iter()
                .map(|(k, v)| match v {
                    Bson::Int32(_) | Bson::Int64(_) if k.ends_with("Count") => (k, plain(v)),
                    v => (k, v.into_canonical_extjson()),
                })
                .collect(),
        ),
        Format::Json => plain(Bson::Document(doc)),
    };
    serde_json::to_vec(&value).expect("JSON values serialize")
}

/// A BSON value as plain JSON (see the module docs).
fn plain(value: Bson) -> Value {
    use base64::Engine;
    match value {
        Bson::Document(doc) => Value::Object(doc.into_iter().map(|(k, v)| (k, plain(v))).collect()),
        Bson::Array(items) => Value::Array(items.into_iter().map(plain).collect()),
        Bson::String(s) => Value::String(s),
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Int32(n) => n.into(),
        Bson::Int64(n) => n.into(),
        Bson::Double(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.to_string())),
        Bson::ObjectId(id) => Value::String(id.to_hex()),
        Bson::DateTime(d) => match d.try_to_rfc3339_string() {
            Ok(s) => Value::String(s),
            Err(_) => Value::from(d.timestamp_millis()),
        },
        Bson::Decimal128(d) => Value::String(d.to_string()),
        Bson::Binary(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b.bytes)),
        other => other.into_relaxed_extjson(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId, DateTime};

    #[test]
    fn bodies_take_extended_json_and_refuse_repeats() {
        let doc = parse_body(
            br#"{"filter": {"_id": {"$oid": "64b7f1f1f1f1f1f1f1f1f1f1"}, "n": {"$numberLong": "5"}, "d": {"$date": "2024-01-02T03:04:05Z"}}}"#,
        )
        .expect("body");
        let filter = doc.get_document("filter").unwrap();
        assert!(matches!(filter.get("_id"), Some(Bson::ObjectId(_))));
        assert_eq!(filter.get("n"), Some(&Bson::Int64(5)));
        assert!(matches!(filter.get("d"), Some(Bson::DateTime(_))));
        for bad in [
            &br#"{"a": 1, "a": 2}"#[..],
            br#"{"f": {"x": {"y": 1, "y": 1}}}"#,
            br#"{"f": [{"k": 1, "k": 2}]}"#,
            br#"[1, 2]"#,
            br#"{"a": "#,
            br#"{"$oid": "64b7f1f1f1f1f1f1f1f1f1f1"}"#,
            b"",
        ] {
            assert!(parse_body(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn responses_are_plain_json_or_canonical_extended_json() {
        let id = ObjectId::parse_str("64b7f1f1f1f1f1f1f1f1f1f1").unwrap();
        let doc = doc! {
            "_id": id, "i": 7, "l": 7_i64, "f": 1.5,
            "d": DateTime::from_millis(1_641_954_803_067), "s": "x\n\"y",
            "dec": "9823.1297".parse::<bson::Decimal128>().unwrap(),
        };
        let json: Value = serde_json::from_slice(&render(doc.clone(), Format::Json)).unwrap();
        assert_eq!(json["_id"], "64b7f1f1f1f1f1f1f1f1f1f1");
        assert_eq!((json["i"].as_i64(), json["l"].as_i64()), (Some(7), Some(7)));
        assert_eq!(json["d"], "2022-01-12T02:33:23.067Z");
        assert_eq!(json["dec"], "9823.1297");
        assert_eq!(json["s"], "x\n\"y");
        let counts: Value =
            serde_json::from_slice(&render(doc! { "deletedCount": 3_i64 }, Format::Ejson)).unwrap();
        assert_eq!(
            counts["deletedCount"], 3,
            "the API's counts are plain numbers"
        );
        let ejson: Value = serde_json::from_slice(&render(doc, Format::Ejson)).unwrap();
        assert_eq!(ejson["_id"]["$oid"], "64b7f1f1f1f1f1f1f1f1f1f1");
        assert_eq!(ejson["i"]["$numberInt"], "7");
        assert_eq!(ejson["l"]["$numberLong"], "7");
        assert_eq!(ejson["d"]["$date"]["$numberLong"], "1641954803067");
    }
}
