//! A minimal walker over the elements of one BSON document, for the gateway's per-request hot
//! path: it reads each element's type byte, its key as bytes and the extent of its value, and
//! decodes nothing else. `bson::RawDocument` iteration validates every key as UTF-8 and builds a
//! value for every element; on a forwarded `find` that was a fifth of the gateway's own
//! instructions, for the three or four fields it routes on.
//!
//! Follows the BSON specification (bsonspec.org, version 1.1): `document ::= int32 e_list "\x00"`,
//! `element ::= type_byte e_name value`. Every length is checked against the bytes actually
//! present; a malformed document yields an error, never a panic or an out-of-bounds read. Keys
//! are not checked for UTF-8 here: callers compare them as bytes and validate the ones they keep.

use crate::{Result, WireError};

/// One element of a document: its type byte, key bytes (without the NUL) and value bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element<'a> {
    pub kind: u8,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// BSON element type bytes this crate's callers read.
pub mod kind {
    pub const DOUBLE: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const DOCUMENT: u8 = 0x03;
    pub const BOOLEAN: u8 = 0x08;
    pub const INT32: u8 = 0x10;
    pub const INT64: u8 = 0x12;
}

/// The elements of `doc`, which must be exactly one document (its length prefix equal to
/// `doc.len()`, ending in NUL).
pub fn elements(doc: &[u8]) -> Result<Elements<'_>> {
    const WHAT: &str = "BSON document";
    if doc.len() < 5 {
        return Err(WireError::InvalidBson(WHAT));
    }
    let declared = i32::from_le_bytes([doc[0], doc[1], doc[2], doc[3]]);
    if usize::try_from(declared).ok() != Some(doc.len()) || doc[doc.len() - 1] != 0 {
        return Err(WireError::InvalidBson(WHAT));
    }
    Ok(Elements {
        rest: &doc[4..doc.len() - 1],
    })
}

/// Iterator over a document's elements; stops after the first error.
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    rest: &'a [u8],
}

fn read_i32_len(b: &[u8]) -> Result<usize> {
    let raw = b
        .get(..4)
        .ok_or(WireError::InvalidBson("BSON value length"))?;
    let n = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    usize::try_from(n).map_err(|_| WireError::InvalidBson("BSON value length"))
}

fn cstring_len(b: &[u8]) -> Result<usize> {
    b.iter()
        .position(|&c| c == 0)
        .map(|p| p + 1)
        .ok_or(WireError::InvalidCString("BSON element"))
}

/// The size of a value of type `kind` at the start of `b`.
fn value_len(kind: u8, b: &[u8]) -> Result<usize> {
    let len = match kind {
        0x06 | 0x0A | 0x7F | 0xFF => 0, // undefined, null, max key, min key
        0x08 => 1,                      // boolean
        0x10 => 4,                      // int32
        0x01 | 0x09 | 0x11 | 0x12 => 8, // double, datetime, timestamp, int64
        0x07 => 12,                     // ObjectId
        0x13 => 16,                     // decimal128
        0x02 | 0x0D | 0x0E => 4 + nonzero(read_i32_len(b)?)?, // string, JS code, symbol
        0x03 | 0x04 | 0x0F => at_least(read_i32_len(b)?, 5)?, // document, array, code w/ scope
        0x05 => 5 + read_i32_len(b)?,   // binary: length, subtype, bytes
        0x0B => {
            // regex: pattern cstring, options cstring
            let first = cstring_len(b)?;
            first + cstring_len(&b[first..])?
        }
        0x0C => 4 + nonzero(read_i32_len(b)?)? + 12, // DBPointer: string, ObjectId
        _ => return Err(WireError::InvalidBson("unknown BSON element type")),
    };
    if len > b.len() {
        return Err(WireError::InvalidBson("BSON value overruns its document"));
    }
    Ok(len)
}

fn nonzero(n: usize) -> Result<usize> {
    at_least(n, 1)
}

fn at_least(n: usize, min: usize) -> Result<usize> {
    if n < min {
        return Err(WireError::InvalidBson("BSON value length"));
    }
    Ok(n)
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<Element<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, after) = self.rest.split_first()?;
        let parsed = cstring_len(after).and_then(|key_len| {
            let value_at = &after[key_len..];
            let len = value_len(kind, value_at)?;
            Ok((
                Element {
                    kind,
                    key: &after[..key_len - 1],
                    value: &value_at[..len],
                },
                &value_at[len..],
            ))
        });
        match parsed {
            Ok((element, rest)) => {
                self.rest = rest;
                Some(Ok(element))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

impl<'a> Element<'a> {
    /// An integer value of any BSON width (int32, int64, or a double without a fraction).
    pub fn as_i64(&self) -> Option<i64> {
        let v = self.value;
        match self.kind {
            kind::INT32 => Some(i32::from_le_bytes(v.try_into().ok()?) as i64),
            kind::INT64 => Some(i64::from_le_bytes(v.try_into().ok()?)),
            kind::DOUBLE => {
                let f = f64::from_le_bytes(v.try_into().ok()?);
                (f.fract() == 0.0 && f.is_finite()).then_some(f as i64)
            }
            _ => None,
        }
    }

    /// A boolean value.
    pub fn as_bool(&self) -> Option<bool> {
        (self.kind == kind::BOOLEAN).then(|| self.value.first() == Some(&1))
    }

    /// A string value, if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        if self.kind != kind::STRING {
            return None;
        }
        // value = int32 length (including the NUL), bytes, NUL.
        let body = self.value.get(4..self.value.len().checked_sub(1)?)?;
        std::str::from_utf8(body).ok()
    }

    /// An embedded document's bytes (a whole document, length prefix included).
    pub fn as_document(&self) -> Option<&'a [u8]> {
        (self.kind == kind::DOCUMENT).then_some(self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId, spec::BinarySubtype, Binary, Regex, Timestamp};

    fn all(bytes: &[u8]) -> Vec<Element<'_>> {
        elements(bytes)
            .unwrap()
            .collect::<Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn walks_every_element_type_with_its_extent() {
        let d = doc! {
            "d": 1.5, "s": "héllo", "doc": {"a": 1}, "arr": [1, 2], "bin": Binary {
                subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3] },
            "oid": ObjectId::new(), "b": true, "dt": bson::DateTime::now(), "n": bson::Bson::Null,
            "re": Regex { pattern: "a.*".into(), options: "i".into() }, "i": 7_i32,
            "ts": Timestamp { time: 1, increment: 2 }, "l": 9_i64, "last": "x",
        };
        let bytes = bson::to_vec(&d).unwrap();
        let got = all(&bytes);
        let keys: Vec<&[u8]> = got.iter().map(|e| e.key).collect();
        let want: Vec<&[u8]> = d.keys().map(|k| k.as_bytes()).collect();
        assert_eq!(keys, want);
        let raw = bson::RawDocument::from_bytes(&bytes).unwrap();
        assert_eq!(got[1].as_str(), raw.get_str("s").ok());
        assert_eq!(got[6].as_bool(), Some(true));
        assert_eq!(got[10].as_i64(), Some(7));
        assert_eq!(got[12].as_i64(), Some(9));
        assert_eq!(got[0].as_i64(), None, "1.5 is not an integer");
        assert_eq!(got[13].as_str(), Some("x"));
        let inner = got[2].as_document().unwrap();
        assert_eq!(all(inner)[0].key, b"a");
    }

    #[test]
    fn refuses_lying_lengths_without_panicking() {
        let bytes = bson::to_vec(&doc! {"s": "abc", "t": {"x": 1}}).unwrap();
        // Every truncation, and every single-byte corruption, either walks or errors.
        for cut in 0..bytes.len() {
            if let Ok(it) = elements(&bytes[..cut]) {
                let _ = it.count();
            }
        }
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                if let Ok(it) = elements(&b) {
                    let _ = it.collect::<Vec<_>>();
                }
            }
        }
        let mut long = bytes.clone();
        long[5 + 2] = 0xff; // the string's length
        let r: Vec<_> = elements(&long).unwrap().collect();
        assert!(r.iter().any(|e| e.is_err()));
        assert!(elements(&[5, 0, 0, 0]).is_err());
        assert!(elements(&[6, 0, 0, 0, 0]).is_err());
    }
}
