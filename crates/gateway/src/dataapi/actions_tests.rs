//! Every action's body rules and answer shapes, without a server.

use super::*;

fn body(action_fields: Document) -> Document {
    let mut b = doc! { "dataSource": "mongodb-atlas", "database": "shop", "collection": "orders" };
    b.extend(action_fields);
    b
}

#[test]
fn every_action_builds_its_command() {
    let p = plan(Action::FindOne, body(doc! { "filter": { "a": 1 } }), 100).unwrap();
    assert_eq!(p.command.get_str("find").unwrap(), "orders");
    assert_eq!(p.command.get_str("$db").unwrap(), "shop");
    assert_eq!(p.command.get_i64("limit").unwrap(), 1);
    assert!(p.reads);

    let p = plan(
        Action::Find,
        body(doc! { "sort": { "a": -1 }, "skip": 2, "limit": 5 }),
        100,
    )
    .unwrap();
    assert_eq!(
        (
            p.command.get_i64("limit").unwrap(),
            p.command.get_i64("skip").unwrap()
        ),
        (5, 2)
    );
    assert!(p.command.get_bool("singleBatch").unwrap());
    let p = plan(Action::Find, body(doc! {}), 100).unwrap();
    assert_eq!(
        p.command.get_i64("limit").unwrap(),
        100,
        "no limit: the maximum"
    );

    let p = plan(
        Action::InsertOne,
        body(doc! { "document": { "x": 1 } }),
        100,
    )
    .unwrap();
    let docs = p.command.get_array("documents").unwrap();
    let first = docs[0].as_document().unwrap();
    assert_eq!(
        first.keys().next().unwrap(),
        "_id",
        "an _id is generated, first"
    );
    assert!(!p.reads);

    let p = plan(
        Action::UpdateMany,
        body(doc! { "filter": {}, "update": { "$set": { "a": 1 } }, "upsert": true }),
        100,
    )
    .unwrap();
    let u = p.command.get_array("updates").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert!(u.get_bool("multi").unwrap() && u.get_bool("upsert").unwrap());

    let p = plan(Action::DeleteOne, body(doc! { "filter": { "a": 1 } }), 100).unwrap();
    let d = p.command.get_array("deletes").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(d.get_i32("limit").unwrap(), 1);

    let p = plan(
        Action::Aggregate,
        body(doc! { "pipeline": [ { "$match": {} } ] }),
        10,
    )
    .unwrap();
    let stages = p.command.get_array("pipeline").unwrap();
    assert_eq!(stages.len(), 2, "a $limit of max + 1 is added");
    assert!(p.reads);
    let p = plan(
        Action::Aggregate,
        body(doc! { "pipeline": [ { "$out": "copy" } ] }),
        10,
    )
    .unwrap();
    assert_eq!(
        p.command.get_array("pipeline").unwrap().len(),
        1,
        "$out stays last"
    );
    assert!(!p.reads, "a writing pipeline goes to the primary");
}

#[test]
fn bodies_are_checked_field_by_field() {
    let cases = [
        (
            Action::FindOne,
            doc! { "database": "shop", "collection": "c" },
            "dataSource is required",
        ),
        (
            Action::FindOne,
            body(doc! { "filter": "x" }),
            "filter must be an object",
        ),
        (
            Action::FindOne,
            body(doc! { "limit": 5 }),
            "does not take the field limit",
        ),
        (
            Action::Find,
            body(doc! { "limit": 0 }),
            "limit must be at least 1",
        ),
        (
            Action::Find,
            body(doc! { "limit": 101 }),
            "above this gateway's maximum",
        ),
        (
            Action::Find,
            body(doc! { "skip": -1 }),
            "skip must be at least 0",
        ),
        (
            Action::Find,
            body(doc! { "limit": 1.5 }),
            "limit must be an integer",
        ),
        (Action::InsertOne, body(doc! {}), "document is required"),
        (
            Action::InsertMany,
            body(doc! { "documents": [] }),
            "at least one document",
        ),
        (
            Action::InsertMany,
            body(doc! { "documents": [1] }),
            "documents[0] must be an object",
        ),
        (
            Action::UpdateOne,
            body(doc! { "filter": {}, "update": { "a": 1 } }),
            "update operators",
        ),
        (
            Action::ReplaceOne,
            body(doc! { "filter": {}, "replacement": { "$set": { "a": 1 } } }),
            "without update operators",
        ),
        (
            Action::UpdateOne,
            body(doc! { "filter": {}, "update": { "$set": {} }, "upsert": "yes" }),
            "upsert must be a boolean",
        ),
        (Action::DeleteMany, body(doc! {}), "filter is required"),
        (
            Action::Aggregate,
            body(doc! { "pipeline": {} }),
            "pipeline must be an array",
        ),
        (
            Action::FindOne,
            body(doc! { "database": "" }),
            "database must be a non-empty string",
        ),
        (
            Action::FindOne,
            body(doc! { "collection": 5 }),
            "collection must be a non-empty string",
        ),
        (
            Action::FindOne,
            body(doc! { "database": "a\0b" }),
            "database must be a non-empty string",
        ),
    ];
    for (action, b, want) in cases {
        let e = plan(action, b.clone(), 100).expect_err(want).to_string();
        assert!(e.contains(want), "{action:?} {b}: {e}");
    }
}

#[test]
fn answers_have_the_retired_apis_fields() {
    let find = plan(Action::Find, body(doc! {}), 2).unwrap();
    let reply = doc! { "cursor": { "id": 0_i64, "ns": "shop.orders", "firstBatch": [ { "a": 1 } ] }, "ok": 1.0 };
    assert_eq!(
        answer(&find, &reply).unwrap(),
        (200, doc! { "documents": [ { "a": 1 } ] })
    );
    let too_many = doc! { "cursor": { "id": 0_i64, "firstBatch": [ {}, {}, {} ] }, "ok": 1.0 };
    assert!(answer(&find, &too_many).is_err());
    let one = plan(Action::FindOne, body(doc! {}), 2).unwrap();
    let empty = doc! { "cursor": { "id": 0_i64, "firstBatch": [] }, "ok": 1.0 };
    assert_eq!(
        answer(&one, &empty).unwrap(),
        (200, doc! { "document": Bson::Null })
    );

    let ins = plan(
        Action::InsertMany,
        body(doc! { "documents": [ { "_id": 7 }, {} ] }),
        2,
    )
    .unwrap();
    let (status, out) = answer(&ins, &doc! { "n": 2, "ok": 1.0 }).unwrap();
    assert_eq!(status, 201);
    let ids = out.get_array("insertedIds").unwrap();
    assert_eq!(ids[0], Bson::Int32(7));
    assert!(matches!(ids[1], Bson::ObjectId(_)));

    let upd = plan(
        Action::UpdateOne,
        body(doc! { "filter": {}, "update": { "$set": { "a": 1 } }, "upsert": true }),
        2,
    )
    .unwrap();
    let (_, out) = answer(
        &upd,
        &doc! { "n": 1, "nModified": 0, "upserted": [ { "index": 0, "_id": 9 } ], "ok": 1.0 },
    )
    .unwrap();
    assert_eq!(
        out,
        doc! { "matchedCount": 0_i64, "modifiedCount": 0_i64, "upsertedId": 9 }
    );

    let del = plan(Action::DeleteMany, body(doc! { "filter": {} }), 2).unwrap();
    assert_eq!(
        answer(&del, &doc! { "n": 3, "ok": 1.0 }).unwrap(),
        (200, doc! { "deletedCount": 3_i64 })
    );

    // The database's refusals keep their code.
    let dup = doc! { "n": 0, "writeErrors": [ { "index": 0, "code": 11000, "errmsg": "E11000 duplicate key" } ], "ok": 1.0 };
    match answer(&ins, &dup) {
        Err(GatewayError::DataApiRefused { code, message }) => {
            assert_eq!((code, message.as_str()), (11000, "E11000 duplicate key"))
        }
        other => panic!("{other:?}"),
    }
    assert!(answer(&del, &doc! { "ok": 0.0, "code": 13, "errmsg": "no" }).is_err());
}

#[test]
fn open_cursors_are_found_for_killing() {
    assert_eq!(
        open_cursor(&doc! { "cursor": { "id": 5_i64, "ns": "a.b" } }),
        Some((5, "a.b".into()))
    );
    assert_eq!(
        open_cursor(&doc! { "cursor": { "id": 0_i64, "ns": "a.b" } }),
        None
    );
    assert!(Action::parse("findone").is_none() && Action::parse("findOne").is_some());
}
