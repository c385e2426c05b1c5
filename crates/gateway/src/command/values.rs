//! Every value of a request, checked before the request reaches a shared upstream connection.
//!
//! An upstream connection carries many clients' state (their open cursors live on it), so a
//! request that makes the upstream close the connection hurts everyone on it, not only its
//! sender. Two kinds of request do that: BSON that does not decode, and BSON types the upstream
//! cannot decode at all. FerretDB 1.x closes the connection on `Decimal128`, `MinKey`,
//! `MaxKey`, JavaScript code (with or without scope), `Symbol`, `Undefined` and `DBPointer`
//! wherever they appear, instead of answering with an error. So the gateway walks the whole
//! request once (body and kind-1 document sequences, at any depth) and answers such a request
//! itself, with an error naming the type and where it was, before anything is sent upstream.
//!
//! The walk is iterative with an explicit depth bound, so a deeply nested request cannot
//! exhaust the stack; the bound is above what MongoDB itself accepts for commands.

use bson::raw::RawIter;
use bson::spec::ElementType;
use bson::{RawBsonRef, RawDocument};
use mongomux_wire::OpMsg;

use crate::error::GatewayError;

/// Deeper nesting than this is refused (MongoDB refuses documents nested over 100 levels in
/// most places; leave room for the command's own wrapping).
pub const MAX_DEPTH: usize = 150;

/// A set of BSON element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TypeSet(u32);

impl TypeSet {
    /// No type.
    pub const EMPTY: TypeSet = TypeSet(0);

    /// The types FerretDB 1.x cannot decode (it drops the connection on them; checked against
    /// v1.24 by tests/python/test_canary.py).
    pub const FERRETDB_V1_UNSUPPORTED: TypeSet = TypeSet::of(&[
        ElementType::Undefined,
        ElementType::DbPointer,
        ElementType::JavaScriptCode,
        ElementType::Symbol,
        ElementType::JavaScriptCodeWithScope,
        ElementType::Decimal128,
        ElementType::MinKey,
        ElementType::MaxKey,
    ]);

    /// The set of `types`.
    pub const fn of(types: &[ElementType]) -> TypeSet {
        let mut bits = 0;
        let mut i = 0;
        while i < types.len() {
            bits |= bit(types[i]);
            i += 1;
        }
        TypeSet(bits)
    }

    /// Whether `t` is in the set.
    pub const fn contains(self, t: ElementType) -> bool {
        self.0 & bit(t) != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// One bit per element type: the type byte for 0x01..=0x13, two high bits for the keys.
const fn bit(t: ElementType) -> u32 {
    match t {
        ElementType::MinKey => 1 << 30,
        ElementType::MaxKey => 1 << 31,
        other => 1 << (other as u8 & 0x1f),
    }
}

/// Checks the body and every document of every kind-1 sequence: each must decode, nest at most
/// [`MAX_DEPTH`] deep, and hold no value of a type in `refused`.
pub fn check(msg: &OpMsg<'_>, refused: TypeSet) -> Result<(), GatewayError> {
    check_document(msg.body, refused, "")?;
    for seq in &msg.sequences {
        for doc in seq.iter() {
            check_document(doc, refused, seq.identifier)?;
        }
    }
    Ok(())
}

/// Walks one document with an explicit stack of iterators (no recursion).
fn check_document(doc: &RawDocument, refused: TypeSet, origin: &str) -> Result<(), GatewayError> {
    let mut stack: Vec<RawIter<'_>> = vec![doc.iter_elements()];
    while let Some(iter) = stack.last_mut() {
        let Some(item) = iter.next() else {
            stack.pop();
            continue;
        };
        let bad = |e: bson::raw::Error| GatewayError::InvalidBson(malformed(origin, &e));
        let element = item.map_err(bad)?;
        let (key, t) = (element.key(), element.element_type());
        if refused.contains(t) {
            return Err(GatewayError::UnsupportedValue(format!(
                "a value of BSON type {t:?} (field {:?}) is not supported by the upstream server",
                key.escape_debug().to_string()
            )));
        }
        let child = match element.value().map_err(bad)? {
            RawBsonRef::Document(d) => Some(d.iter_elements()),
            // An array is a document keyed by indices; walking it as one checks the keys too.
            RawBsonRef::Array(a) => Some(
                RawDocument::from_bytes(a.as_bytes())
                    .map_err(bad)?
                    .iter_elements(),
            ),
            RawBsonRef::JavaScriptCodeWithScope(c) => Some(c.scope.iter_elements()),
            _ => None,
        };
        if let Some(child) = child {
            if stack.len() >= MAX_DEPTH {
                return Err(GatewayError::InvalidBson(format!(
                    "nested more than {MAX_DEPTH} levels deep"
                )));
            }
            stack.push(child);
        }
    }
    Ok(())
}

fn malformed(origin: &str, e: &bson::raw::Error) -> String {
    let origin = if origin.is_empty() {
        "the command"
    } else {
        origin
    };
    format!("malformed value in {}: {e}", origin.escape_debug())
}

#[cfg(test)]
#[path = "values_tests.rs"]
mod tests;
