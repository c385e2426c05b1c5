//! The official Rust driver through the gateway to FerretDB (SQLite, authentication on): the
//! everyday operations a serverless function runs. Each test starts its own FerretDB and gateway.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::event::command::CommandEvent;
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::IndexModel;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn crud_roundtrip() {
    bounded(LIMIT, "crud_roundtrip", async {
        let (_ferret, gw) = ferret_stack(|_| {}).await;
        let client = gw.client();
        let coll = client.database("crud").collection::<Document>("people");

        let ins = coll
            .insert_one(doc! {"_id": 1, "name": "ada", "age": 36})
            .await
            .expect("insert_one");
        assert_eq!(ins.inserted_id, Bson::Int32(1));
        let many = coll
            .insert_many(vec![
                doc! {"_id": 2, "name": "bob", "age": 20},
                doc! {"_id": 3, "name": "cy", "age": 51},
            ])
            .await
            .expect("insert_many");
        assert_eq!(many.inserted_ids.len(), 2);

        let got = coll
            .find_one(doc! {"_id": 1})
            .await
            .expect("find_one")
            .expect("doc 1 present");
        assert_eq!(got.get_str("name").unwrap(), "ada");

        let upd = coll
            .update_one(doc! {"_id": 2}, doc! {"$set": {"age": 21}})
            .await
            .expect("update_one");
        assert_eq!((upd.matched_count, upd.modified_count), (1, 1));
        let upd = coll
            .update_many(doc! {"age": {"$gt": 30}}, doc! {"$set": {"senior": true}})
            .await
            .expect("update_many");
        assert_eq!(upd.modified_count, 2);
        let rep = coll
            .replace_one(doc! {"_id": 3}, doc! {"name": "cy", "age": 52})
            .await
            .expect("replace_one");
        assert_eq!(rep.modified_count, 1);
        let ups = coll
            .update_one(doc! {"_id": 4}, doc! {"$set": {"name": "dee"}})
            .upsert(true)
            .await
            .expect("upsert");
        assert_eq!(ups.upserted_id, Some(Bson::Int32(4)));

        let mut all: Vec<Document> = coll
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("iterate");
        assert_eq!(all.len(), 4);
        assert_eq!(all[1].get_i32("age").unwrap(), 21);
        assert_eq!(all[2].get_i32("age").unwrap(), 52);
        assert!(
            !all[2].contains_key("senior"),
            "replace_one replaced the whole document"
        );
        all.retain(|d| d.get_bool("senior").unwrap_or(false));
        assert_eq!(all.len(), 1);

        let projected = coll
            .find_one(doc! {"_id": 1})
            .projection(doc! {"name": 1, "_id": 0})
            .await
            .unwrap()
            .unwrap();
        assert_eq!(projected, doc! {"name": "ada"});

        let skipped: Vec<Document> = coll
            .find(doc! {})
            .sort(doc! {"_id": -1})
            .skip(1)
            .limit(2)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let ids: Vec<i32> = skipped.iter().map(|d| d.get_i32("_id").unwrap()).collect();
        assert_eq!(ids, vec![3, 2]);

        let distinct = coll.distinct("name", doc! {}).await.expect("distinct");
        assert_eq!(distinct.len(), 4);

        let del = coll.delete_one(doc! {"_id": 1}).await.expect("delete_one");
        assert_eq!(del.deleted_count, 1);
        let del = coll
            .delete_many(doc! {"_id": {"$gte": 3}})
            .await
            .expect("delete_many");
        assert_eq!(del.deleted_count, 2);
        assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_insert_10000() {
    bounded(Duration::from_secs(120), "bulk_insert_10000", async {
        let (ferret, gw) = ferret_stack(|_| {}).await;
        let client = gw.client();
        let coll = client.database("bulk").collection::<Document>("docs");
        let docs: Vec<Document> = (0..10_000)
            .map(|i| doc! {"_id": i, "v": format!("value-{i}"), "n": i % 7})
            .collect();
        let res = coll
            .insert_many(docs)
            .await
            .expect("insert_many of 10,000 documents");
        assert_eq!(res.inserted_ids.len(), 10_000);
        assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 10_000);
        // Counted by FerretDB itself, not through the gateway.
        let mut direct = ferret.direct().await;
        assert_eq!(direct.count("bulk", "docs", doc! {}).await, 10_000);
        assert_eq!(
            direct.count("bulk", "docs", doc! {"n": 3}).await,
            (0..10_000).filter(|i| i % 7 == 3).count() as i64
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn find_batch_size_10_over_1000_docs() {
    bounded(LIMIT, "find_batch_size_10", async {
        let (_ferret, gw) = ferret_stack(|_| {}).await;
        let (client, log) = gw.recorded_client(|_| {});
        let coll = client
            .database("cursors")
            .collection::<Document>("thousand");
        coll.insert_many((0..1000).map(|i| doc! {"_id": i, "pad": "x".repeat(100)}))
            .await
            .unwrap();
        log.clear();
        let docs: Vec<Document> = coll
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .batch_size(10)
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("iterate with getMore");
        let ids: Vec<i32> = docs.iter().map(|d| d.get_i32("_id").unwrap()).collect();
        assert_eq!(
            ids,
            (0..1000).collect::<Vec<_>>(),
            "every document once, in order"
        );
        let get_mores = log.started("getMore").len();
        assert!(
            (99..=100).contains(&get_mores),
            "expected 99 or 100 getMore commands, saw {get_mores}"
        );
        let failed: Vec<_> = log
            .events()
            .into_iter()
            .filter(|e| matches!(e, CommandEvent::Failed(_)))
            .collect();
        assert!(failed.is_empty(), "no command may fail: {failed:?}");
    })
    .await;
}

/// Several cursors on one `Client` at once: the driver sends each getMore on whichever pooled
/// connection is free, which is often not the one the `find` went on. The gateway must accept
/// that (the cursor belongs to the client, not to one of its sockets).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cursors_on_one_client() {
    bounded(LIMIT, "concurrent_cursors", async {
        let (_ferret, gw) = ferret_stack(|_| {}).await;
        let (client, log) = gw.recorded_client(|o| o.max_pool_size = Some(4));
        let coll = client.database("cursors").collection::<Document>("shared");
        coll.insert_many((0..500).map(|i| doc! {"_id": i}))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let coll = coll.clone();
            tasks.push(tokio::spawn(async move {
                let mut cursor = coll
                    .find(doc! {})
                    .sort(doc! {"_id": 1})
                    .batch_size(7)
                    .await?;
                let mut n = 0;
                while cursor.advance().await? {
                    n += 1;
                    if n % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                Ok::<_, mongodb::error::Error>(n)
            }));
        }
        let mut failures = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(n) => assert_eq!(n, 500),
                Err(e) => failures.push(e.to_string()),
            }
        }
        // Which driver connection each cursor was opened on, and where its getMores went.
        let mut opened_on: HashMap<i64, u32> = HashMap::new();
        let mut get_mores: Vec<(i64, u32, Option<i32>)> = Vec::new();
        for ev in log.events() {
            match ev {
                CommandEvent::Started(s) if s.command_name == "getMore" => {
                    let id = s.command.get_i64("getMore").unwrap();
                    get_mores.push((id, s.connection.id, None));
                }
                CommandEvent::Succeeded(s) if s.command_name == "find" => {
                    let id = s
                        .reply
                        .get_document("cursor")
                        .unwrap()
                        .get_i64("id")
                        .unwrap();
                    opened_on.insert(id, s.connection.id);
                }
                CommandEvent::Failed(f) if f.command_name == "getMore" => {
                    if let Some(g) = get_mores
                        .iter_mut()
                        .rev()
                        .find(|g| g.1 == f.connection.id && g.2.is_none())
                    {
                        g.2 = Some(error_code(&f.failure).unwrap_or(-1));
                    }
                }
                _ => {}
            }
        }
        let elsewhere = get_mores
            .iter()
            .filter(|(id, conn, _)| opened_on.get(id) != Some(conn))
            .count();
        let failed_elsewhere: Vec<String> = get_mores
            .iter()
            .filter(|(id, conn, code)| code.is_some() && opened_on.get(id) != Some(conn))
            .map(|(id, conn, code)| {
                format!(
                    "cursor {id} opened on driver connection {:?}, getMore on connection {conn} \
                        failed with code {code:?}",
                    opened_on.get(id)
                )
            })
            .collect();
        let failed_same = get_mores
            .iter()
            .filter(|(id, conn, code)| code.is_some() && opened_on.get(id) == Some(conn))
            .count();
        eprintln!(
            "{} getMores, {elsewhere} of them on another driver connection than their find",
            get_mores.len()
        );
        assert!(
            failures.is_empty(),
            "{} of 8 cursors failed: {failures:?}\n{} getMores failed on a connection other than \
                the cursor's find (e.g. {:?}), {failed_same} on the same connection",
            failures.len(),
            failed_elsewhere.len(),
            failed_elsewhere.first()
        );
    })
    .await;
}

/// A cursor dropped before it is exhausted: the driver sends killCursors, and the cursor must be
/// gone upstream, checked against FerretDB itself. FerretDB's cursor ids are global and
/// sequential, so the upstream id of the gateway's cursor lies strictly between the ids of two
/// cursors opened directly just before and just after it.
#[tokio::test(flavor = "multi_thread")]
async fn cursor_dropped_early_is_killed_upstream() {
    bounded(LIMIT, "cursor_dropped_early", async {
        let (ferret, gw) = ferret_stack(|_| {}).await;
        let (client, log) = gw.recorded_client(|_| {});
        let coll = client.database("cursors").collection::<Document>("killme");
        coll.insert_many((0..1000).map(|i| doc! {"_id": i}))
            .await
            .unwrap();
        let mut direct = ferret.direct().await;
        async fn open_direct(d: &mut mongomux_testkit::RawConn) -> i64 {
            let r = d
                .run("cursors", doc! {"find": "killme", "batchSize": 1})
                .await
                .expect("direct find");
            r.get_document("cursor").unwrap().get_i64("id").unwrap()
        }

        let before = open_direct(&mut direct).await;
        let mut cursor = coll.find(doc! {}).batch_size(10).await.expect("find");
        for _ in 0..15 {
            assert!(cursor.advance().await.unwrap());
        }
        let after = open_direct(&mut direct).await;
        assert!(
            after - before >= 2,
            "upstream cursor ids {before} and {after} leave no room for the gateway's cursor"
        );

        let gw_id = log.replies("find")[0]
            .get_document("cursor")
            .unwrap()
            .get_i64("id")
            .unwrap();
        assert_ne!(gw_id, 0, "the cursor must still be open");
        assert_eq!(log.started("getMore").len(), 1);

        drop(cursor);
        // The driver kills the cursor from a background task.
        let reply = wait_for(Duration::from_secs(10), "killCursors reply", || {
            let log = log.clone();
            async move { log.replies("killCursors").into_iter().next() }
        })
        .await;
        let killed = reply.get_array("cursorsKilled").expect("cursorsKilled");
        assert_eq!(
            killed,
            &vec![Bson::Int64(gw_id)],
            "killCursors reply: {reply}"
        );

        // Upstream: every id between the two direct cursors is unknown to FerretDB now.
        for id in before + 1..after {
            let err = direct
                .run(
                    "cursors",
                    doc! {"getMore": id, "collection": "killme", "batchSize": 1},
                )
                .await
                .expect_err("the cursor must be gone upstream");
            assert_eq!(err.code, 43, "getMore {id} straight to FerretDB: {err:?}");
        }
        // And the gateway no longer knows it either.
        let err = client
            .database("cursors")
            .run_command(doc! {"getMore": gw_id, "collection": "killme"})
            .await
            .expect_err("getMore on a killed cursor");
        assert_eq!(error_code(&err), Some(43), "{err}");
        // The direct cursors were untouched.
        for id in [before, after] {
            direct
                .run(
                    "cursors",
                    doc! {"getMore": id, "collection": "killme", "batchSize": 1},
                )
                .await
                .expect("direct cursor still open");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregate() {
    bounded(LIMIT, "aggregate", async {
        let (_ferret, gw) = ferret_stack(|_| {}).await;
        let client = gw.client();
        let coll = client.database("agg").collection::<Document>("sales");
        coll.insert_many(
            (0..300).map(|i| doc! {"_id": i, "shop": format!("s{}", i % 3), "amount": i}),
        )
        .await
        .unwrap();
        let out: Vec<Document> = coll
            .aggregate(vec![
                doc! {"$match": {"amount": {"$gte": 30}}},
                doc! {"$group": {"_id": "$shop", "total": {"$sum": "$amount"}, "n": {"$sum": 1}}},
                doc! {"$sort": {"_id": 1}},
            ])
            .batch_size(1) // a cursor that needs getMore on the aggregate namespace
            .await
            .expect("aggregate")
            .try_collect()
            .await
            .expect("iterate aggregate");
        assert_eq!(out.len(), 3);
        for (k, d) in out.iter().enumerate() {
            let want: i64 = (30..300).filter(|i| i % 3 == k as i64).sum();
            assert_eq!(d.get_str("_id").unwrap(), format!("s{k}"));
            let total = match d.get("total").unwrap() {
                Bson::Int32(v) => *v as i64,
                Bson::Int64(v) => *v,
                Bson::Double(v) => *v as i64,
                other => panic!("total {other:?}"),
            };
            assert_eq!(total, want);
        }
        let counted: Vec<Document> = coll
            .aggregate(vec![doc! {"$match": {"shop": "s1"}}, doc! {"$count": "n"}])
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(counted, vec![doc! {"n": 100}]);
    })
    .await;
}

/// A duplicate-key error must reach the client exactly as FerretDB reports it.
#[tokio::test(flavor = "multi_thread")]
async fn unique_index_duplicate_key_error_matches_direct() {
    bounded(LIMIT, "unique_index", async {
        let (ferret, gw) = ferret_stack(|_| {}).await;
        let client = gw.client();
        let coll = client.database("idx").collection::<Document>("users");
        let name = coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"email": 1})
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await
            .expect("create_index")
            .index_name;
        assert_eq!(name, "email_1");
        let names = coll.list_index_names().await.unwrap();
        assert!(names.contains(&"email_1".to_string()), "{names:?}");
        coll.insert_one(doc! {"_id": 1, "email": "a@example.com"})
            .await
            .unwrap();

        let mut direct = ferret.direct().await;
        let dup = doc! {"_id": 2, "email": "a@example.com"};
        let direct_write_error = |reply: Result<Document, mongomux_testkit::ServerError>| {
            let e =
                mongomux_testkit::first_write_error(&reply.expect("direct insert answers ok: 1"))
                    .expect("direct insert reports a write error");
            Some((e.code, e.message))
        };

        let via_gw = coll
            .insert_one(dup.clone())
            .await
            .expect_err("duplicate via gateway");
        let via_direct = direct_write_error(
            direct
                .run("idx", doc! {"insert": "users", "documents": [dup.clone()]})
                .await,
        );
        let (gw_code, gw_msg) =
            error_code_and_message(&via_gw).unwrap_or_else(|| panic!("{via_gw:?}"));
        assert_eq!(gw_code, 11000, "{via_gw}");
        assert_eq!(
            Some((gw_code, gw_msg)),
            via_direct,
            "insert_one: gateway vs direct"
        );

        // The same through insert_many (write errors with an index) and findAndModify (a
        // command error).
        let many = vec![doc! {"_id": 3, "email": "b@example.com"}, dup.clone()];
        let via_gw = coll
            .insert_many(many.clone())
            .await
            .expect_err("insert_many via gateway");
        direct
            .run(
                "idx",
                doc! {"delete": "users", "deletes": [{"q": {"_id": 3}, "limit": 1}]},
            )
            .await
            .unwrap();
        let via_direct = direct_write_error(
            direct
                .run("idx", doc! {"insert": "users", "documents": many})
                .await,
        );
        assert_eq!(error_code_and_message(&via_gw), via_direct, "insert_many");
        assert_eq!(error_code(&via_gw), Some(11000));

        // (FerretDB answers this one with code 1 InternalError and an SQLite message: whatever
        // it says must reach the client unchanged.)
        let set = doc! {"$set": {"email": "a@example.com"}};
        let via_gw = coll
            .find_one_and_update(doc! {"_id": 3}, set.clone())
            .await
            .expect_err("findAndModify via gateway");
        let via_direct = direct
            .run(
                "idx",
                doc! {"findAndModify": "users", "query": {"_id": 3}, "update": set},
            )
            .await
            .expect_err("findAndModify direct");
        assert_eq!(
            error_code_and_message(&via_gw),
            Some((via_direct.code, via_direct.message)),
            "findAndModify"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_collections_and_databases() {
    bounded(LIMIT, "list", async {
        let (_ferret, gw) = ferret_stack(|_| {}).await;
        let client = gw.client();
        let db = client.database("listing");
        // More collections than one batch of the driver's listCollections cursor.
        for i in 0..120 {
            db.create_collection(format!("c{i:03}"))
                .await
                .expect("create_collection");
        }
        client
            .database("listing2")
            .collection::<Document>("x")
            .insert_one(doc! {"a": 1})
            .await
            .unwrap();
        let mut names = db.list_collection_names().await.expect("listCollections");
        names.sort();
        assert_eq!(
            names,
            (0..120).map(|i| format!("c{i:03}")).collect::<Vec<_>>()
        );
        let specs: Vec<_> = db
            .list_collections()
            .filter(doc! {"name": "c007"})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(specs.len(), 1);
        let dbs = client.list_database_names().await.expect("listDatabases");
        for want in ["listing", "listing2"] {
            assert!(
                dbs.contains(&want.to_string()),
                "{want} missing from {dbs:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn count() {
    bounded(LIMIT, "count", async {
        let (_ferret, gw) = ferret_stack(|_| {}).await;
        let client = gw.client();
        let coll = client.database("cnt").collection::<Document>("c");
        coll.insert_many((0..250).map(|i| doc! {"_id": i, "even": i % 2 == 0}))
            .await
            .unwrap();
        assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 250);
        assert_eq!(
            coll.count_documents(doc! {"even": true}).await.unwrap(),
            125
        );
        assert_eq!(
            coll.count_documents(doc! {"_id": {"$lt": 10}})
                .limit(5)
                .await
                .unwrap(),
            5
        );
        assert_eq!(coll.estimated_document_count().await.unwrap(), 250);
        let raw = client
            .database("cnt")
            .run_command(doc! {"count": "c", "query": {"even": false}})
            .await
            .unwrap();
        assert_eq!(
            raw.get_i32("n")
                .map(i64::from)
                .or_else(|_| raw.get_i64("n"))
                .unwrap(),
            125
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn find_and_modify() {
    bounded(LIMIT, "find_and_modify", async {
        let (_ferret, gw) = ferret_stack(|_| {}).await;
        let client = gw.client();
        let coll = client.database("fam").collection::<Document>("counters");
        coll.insert_one(doc! {"_id": "c", "n": 1}).await.unwrap();
        let before = coll
            .find_one_and_update(doc! {"_id": "c"}, doc! {"$inc": {"n": 1}})
            .await
            .unwrap()
            .unwrap();
        assert_eq!(before.get_i32("n").unwrap(), 1);
        let after = coll
            .find_one_and_update(doc! {"_id": "c"}, doc! {"$inc": {"n": 10}})
            .return_document(ReturnDocument::After)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.get_i32("n").unwrap(), 12);
        let upserted = coll
            .find_one_and_update(doc! {"_id": "new"}, doc! {"$set": {"n": 5}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(upserted, doc! {"_id": "new", "n": 5});
        let replaced = coll
            .find_one_and_replace(doc! {"_id": "new"}, doc! {"m": 1})
            .return_document(ReturnDocument::After)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(replaced, doc! {"_id": "new", "m": 1});
        let deleted = coll
            .find_one_and_delete(doc! {"_id": "c"})
            .await
            .unwrap()
            .unwrap();
        assert_eq!(deleted.get_i32("n").unwrap(), 12);
        assert!(coll
            .find_one_and_delete(doc! {"_id": "c"})
            .await
            .unwrap()
            .is_none());
    })
    .await;
}

/// A w:0 write is answered at once and becomes visible later; the connection it went on stays
/// usable (a pool of one forces every operation onto the same driver connection).
///
/// The Rust driver 3.9 refuses w:0 in its CRUD API ("Unacknowledged write concerns are not
/// supported", client/executor.rs) and never sets moreToCome on a request, so the w:0 writes go
/// through `run_command` with `writeConcern: {w: 0}` and the driver still reads a reply. The
/// moreToCome path (pymongo's w:0) is not covered by this file.
#[tokio::test(flavor = "multi_thread")]
async fn unacknowledged_write_becomes_visible() {
    bounded(LIMIT, "w0", async {
        let (ferret, gw) = ferret_stack(|_| {}).await;
        let client = gw.client_with(|o| o.max_pool_size = Some(1));
        let db = client.database("w0");
        for i in 0..50 {
            db.run_command(doc! {
                "insert": "fire_and_forget",
                "documents": [{"_id": i}],
                "writeConcern": {"w": 0},
            })
            .await
            .expect("w:0 insert");
        }
        db.run_command(doc! {
            "update": "fire_and_forget",
            "updates": [{"q": {"_id": 0}, "u": {"$set": {"seen": true}}}],
            "writeConcern": {"w": 0},
        })
        .await
        .expect("w:0 update");
        // An acknowledged command on the same connection right after.
        db.run_command(doc! {"ping": 1})
            .await
            .expect("ping after w:0 writes");

        let acked = db.collection::<Document>("fire_and_forget");
        wait_for(
            Duration::from_secs(10),
            "w:0 writes to become visible",
            || {
                let acked = acked.clone();
                async move {
                    let n = acked.count_documents(doc! {}).await.ok()?;
                    let seen = acked.find_one(doc! {"_id": 0, "seen": true}).await.ok()?;
                    (n == 50 && seen.is_some()).then_some(())
                }
            },
        )
        .await;
        let mut direct = ferret.direct().await;
        assert_eq!(direct.count("w0", "fire_and_forget", doc! {}).await, 50);
    })
    .await;
}
