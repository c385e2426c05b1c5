use bson::{doc, Bson, Decimal128, JavaScriptCodeWithScope, Regex, Timestamp};
use mongomux_wire::{encode_op_msg, OpMsg};

use super::*;

fn message(body: bson::Document, seq: Option<(&str, Vec<bson::Document>)>) -> Vec<u8> {
    let body = bson::to_vec(&body).unwrap();
    match seq {
        None => encode_op_msg(1, 0, 0, &body, &[]),
        Some((id, docs)) => {
            let docs: Vec<Vec<u8>> = docs.iter().map(|d| bson::to_vec(d).unwrap()).collect();
            let refs: Vec<&[u8]> = docs.iter().map(Vec::as_slice).collect();
            encode_op_msg(1, 0, 0, &body, &[(id, &refs)])
        }
    }
}

fn verdict(bytes: &[u8], refused: TypeSet) -> Result<(), GatewayError> {
    check(&OpMsg::parse(bytes).unwrap(), refused)
}

#[test]
fn ordinary_values_pass_and_nothing_is_refused_for_mongodb() {
    let rich = doc! {
        "find": "c", "$db": "d",
        "filter": {"a": {"$in": [1, 2.5, "x", Bson::Null, true]}, "t": Timestamp { time: 1, increment: 1 },
                   "r": Regex { pattern: "a".into(), options: "i".into() }, "n": [[{"deep": [1]}]]},
    };
    let m = message(rich, None);
    assert!(verdict(&m, TypeSet::FERRETDB_V1_UNSUPPORTED).is_ok());
    let exotic = doc! {"find": "c", "$db": "d", "filter": {"a": Bson::MinKey, "b": Bson::Decimal128(Decimal128::from_bytes([0; 16]))}};
    assert!(verdict(&message(exotic, None), TypeSet::EMPTY).is_ok());
}

#[test]
fn every_unsupported_type_is_refused_wherever_it_is() {
    let values = [
        Bson::MinKey,
        Bson::MaxKey,
        Bson::Undefined,
        Bson::JavaScriptCode("x".into()),
        Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
            code: "x".into(),
            scope: doc! {},
        }),
        Bson::Symbol("s".into()),
        Bson::Decimal128(Decimal128::from_bytes([0; 16])),
        rawdoc_with_dbpointer().get("p").unwrap().clone(),
    ];
    for v in values {
        let t = v.element_type();
        for body in [
            doc! {"find": "c", "$db": "d", "filter": {"a": v.clone()}},
            doc! {"aggregate": "c", "$db": "d", "pipeline": [{"$match": {"x": [[{"y": v.clone()}]]}}]},
            doc! {"endSessions": [], "$db": "admin", "junk": v.clone()},
        ] {
            let err = verdict(&message(body, None), TypeSet::FERRETDB_V1_UNSUPPORTED).unwrap_err();
            assert_eq!(err.code(), (2, "BadValue"), "{t:?}");
            assert!(err.to_string().contains(&format!("{t:?}")), "{err}");
        }
        let seq = message(
            doc! {"insert": "c", "$db": "d"},
            Some(("documents", vec![doc! {"ok": 1}, doc! {"bad": v.clone()}])),
        );
        assert!(
            verdict(&seq, TypeSet::FERRETDB_V1_UNSUPPORTED).is_err(),
            "{t:?} in a sequence"
        );
    }
}

fn rawdoc_with_dbpointer() -> bson::Document {
    // A DBPointer cannot be built through the public API; decode one from its wire form.
    let mut bytes = vec![0u8; 4];
    bytes.push(0x0C);
    bytes.extend_from_slice(b"p\0");
    bytes.extend_from_slice(&2i32.to_le_bytes());
    bytes.extend_from_slice(b"c\0");
    bytes.extend_from_slice(&[7u8; 12]);
    bytes.push(0);
    let len = bytes.len() as i32;
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    bson::from_slice(&bytes).unwrap()
}

#[test]
fn malformed_and_too_deep_requests_are_refused() {
    // A nested document whose declared length overruns its parent.
    let mut m = message(doc! {"find": "c", "$db": "d", "filter": {"a": 1}}, None);
    let at = m.windows(7).position(|w| w == b"filter\0").unwrap() + 7;
    m[at] = 0x7f;
    if let Ok(msg) = OpMsg::parse(&m) {
        let err = check(&msg, TypeSet::EMPTY).unwrap_err();
        assert_eq!(err.code(), (22, "InvalidBSON"));
    }
    let mut deep = doc! {"x": 1};
    for _ in 0..MAX_DEPTH + 5 {
        deep = doc! {"n": deep};
    }
    let err = verdict(
        &message(doc! {"find": "c", "$db": "d", "filter": deep}, None),
        TypeSet::EMPTY,
    )
    .unwrap_err();
    assert_eq!(err.code(), (22, "InvalidBSON"));
}
