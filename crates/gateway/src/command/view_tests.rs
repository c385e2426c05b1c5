//! Unit tests of the request view.

use super::*;
use bson::{rawdoc, spec::BinarySubtype, Binary, RawDocumentBuf};
use mongomux_wire::encode_op_msg;

fn uuid(b: u8) -> Binary {
    Binary {
        subtype: BinarySubtype::Uuid,
        bytes: vec![b; 16],
    }
}

fn view_of(body: &RawDocumentBuf) -> Result<(Vec<u8>, CommandView), GatewayError> {
    let bytes = encode_op_msg(9, 0, 0, body.as_bytes(), &[]);
    let msg = OpMsg::parse(&bytes).unwrap();
    let view = CommandView::parse(&bytes, &msg)?;
    Ok((bytes, view))
}

#[test]
fn reads_routing_fields() {
    let lsid = rawdoc! { "id": uuid(7) };
    let body = rawdoc! {
        "insert": "c", "lsid": lsid.clone(), "txnNumber": 3i64, "autocommit": false,
        "startTransaction": true, "$db": "app",
    };
    let (_, v) = view_of(&body).unwrap();
    assert_eq!(v.name, "insert");
    assert_eq!(v.spec.access, Access::Write);
    assert_eq!(v.db, "app");
    assert_eq!(v.collection, None, "read for killCursors only");
    assert_eq!(v.txn_number, Some(3));
    assert!(v.in_transaction && v.start_transaction);
    assert_eq!(v.lsid.unwrap().as_bytes(), lsid.as_bytes());
    assert_eq!(v.request_id, 9);
}

#[test]
fn missing_db_and_empty_body_are_errors() {
    assert!(view_of(&rawdoc! { "find": "c" }).is_err());
    assert!(view_of(&rawdoc! {}).is_err());
}

#[test]
fn duplicate_routing_fields_are_refused() {
    for body in [
        rawdoc! { "find": "c", "$db": "a", "$db": "b" },
        rawdoc! { "find": "c", "lsid": { "id": uuid(1) }, "$db": "a", "lsid": { "id": uuid(2) } },
        rawdoc! { "find": "c", "txnNumber": 1i64, "txnNumber": 2i64, "$db": "a" },
        rawdoc! { "find": "c", "find": "d", "$db": "a" },
        rawdoc! { "find": "c", "$readPreference": {}, "$readPreference": {}, "$db": "a" },
        rawdoc! { "killCursors": "c", "cursors": [1i64], "cursors": [2i64], "$db": "a" },
    ] {
        let err = view_of(&body).unwrap_err();
        assert!(matches!(err, GatewayError::BadCommand(_)), "{err}");
    }
    // Other fields may repeat as far as the gateway is concerned; the server judges them.
    assert!(view_of(&rawdoc! { "find": "c", "x": 1, "x": 2, "$db": "a" }).is_ok());
}

#[test]
fn cursor_ids() {
    let (_, v) = view_of(&rawdoc! { "getMore": 42i64, "collection": "c", "$db": "a" }).unwrap();
    assert_eq!(v.cursor_id, Some(42));
    assert_eq!(v.spec.kind, Kind::GetMore);
    let (_, v) =
        view_of(&rawdoc! { "killCursors": "c", "cursors": [1i64, 2i32, "x"], "$db": "a" }).unwrap();
    assert_eq!(v.kill_cursor_ids, Some(vec![1, 2]));
    assert_eq!(v.collection.as_deref(), Some("c"));
}

#[test]
fn pipelines_that_write_or_cross_databases() {
    let out =
        rawdoc! { "aggregate": "c", "pipeline": [ { "$match": {} }, { "$out": "x" } ], "$db": "a" };
    assert_eq!(view_of(&out).unwrap().1.access(), Access::Write);
    let plain = rawdoc! { "aggregate": "c", "pipeline": [ { "$match": {} } ], "$db": "a" };
    assert_eq!(view_of(&plain).unwrap().1.access(), Access::Read);
    let cross = rawdoc! { "aggregate": "c", "pipeline": [ { "$merge": { "into": { "db": "b", "coll": "x" } } } ], "$db": "a" };
    let ns = |db: &str, coll: &str| super::namespaces::Namespace {
        db: db.into(),
        coll: Some(coll.into()),
    };
    assert_eq!(
        view_of(&cross).unwrap().1.namespaces,
        vec![ns("a", "c"), ns("b", "x")]
    );
    let out_db = rawdoc! { "aggregate": "c", "pipeline": [ { "$out": { "db": "z", "coll": "x" } } ], "$db": "a" };
    assert_eq!(
        view_of(&out_db).unwrap().1.namespaces,
        vec![ns("a", "c"), ns("z", "x")]
    );
    let inline = rawdoc! { "mapReduce": "c", "out": { "inline": 1 }, "$db": "a" };
    assert_eq!(view_of(&inline).unwrap().1.access(), Access::Read);
    let to_coll = rawdoc! { "mapReduce": "c", "out": "x", "$db": "a" };
    assert_eq!(view_of(&to_coll).unwrap().1.access(), Access::Write);
}

#[test]
fn session_ids_are_rewritten_in_place() {
    let body = rawdoc! { "find": "c", "lsid": { "id": uuid(1) }, "$db": "a" };
    let (mut bytes, mut v) = view_of(&body).unwrap();
    assert!(v.has_session_ids());
    v.rewrite_session_ids(&mut bytes, |old| {
        assert_eq!(old, [1u8; 16]);
        [9; 16]
    });
    let want = rawdoc! { "id": uuid(9) };
    assert_eq!(v.lsid.as_ref().unwrap().as_bytes(), want.as_bytes());
    let msg = OpMsg::parse(&bytes).unwrap();
    let again = CommandView::parse(&bytes, &msg).unwrap();
    assert_eq!(again.lsid, v.lsid);

    let body =
        rawdoc! { "endSessions": [ { "id": uuid(2) }, { "id": uuid(3) }, 5 ], "$db": "admin" };
    let (mut bytes, mut v) = view_of(&body).unwrap();
    let mut seen = Vec::new();
    v.rewrite_session_ids(&mut bytes, |old| {
        seen.push(old[0]);
        [old[0] + 10; 16]
    });
    assert_eq!(seen, vec![2, 3]);
    let msg = OpMsg::parse(&bytes).unwrap();
    let ids = msg.body.get_array("endSessions").unwrap();
    let firsts: Vec<u8> = ids
        .into_iter()
        .filter_map(|v| {
            v.ok()?
                .as_document()?
                .get_binary("id")
                .ok()
                .map(|b| b.bytes[0])
        })
        .collect();
    assert_eq!(firsts, vec![12, 13]);

    let body = rawdoc! { "refreshSessions": [ { "id": uuid(4) } ], "$db": "admin" };
    let (mut bytes, mut v) = view_of(&body).unwrap();
    let mut seen = Vec::new();
    v.rewrite_session_ids(&mut bytes, |old| {
        seen.push(old[0]);
        [old[0] + 10; 16]
    });
    assert_eq!(seen, vec![4], "refreshSessions ids are namespaced too");
}

#[test]
fn an_lsid_without_a_uuid_is_kept_as_is() {
    let body = rawdoc! { "find": "c", "lsid": { "id": "not-binary" }, "$db": "a" };
    let (_, v) = view_of(&body).unwrap();
    assert!(v.lsid.is_some());
    assert!(!v.has_session_ids());
}

#[test]
fn reads_max_time_ms_for_the_reply_deadline() {
    let ms = |body: RawDocumentBuf| view_of(&body).unwrap().1.max_time_ms;
    assert_eq!(ms(rawdoc! { "find": "c", "$db": "d" }), None);
    assert_eq!(
        ms(rawdoc! { "find": "c", "maxTimeMS": 90_000, "$db": "d" }),
        Some(90_000)
    );
    assert_eq!(
        ms(rawdoc! { "find": "c", "maxTimeMS": 5.0, "$db": "d" }),
        Some(5)
    );
    // Not a usable duration: the plain upstream_timeout applies (the server refuses it anyway).
    assert_eq!(
        ms(rawdoc! { "find": "c", "maxTimeMS": -1, "$db": "d" }),
        None
    );
    assert_eq!(
        ms(rawdoc! { "find": "c", "maxTimeMS": "x", "$db": "d" }),
        None
    );
}
