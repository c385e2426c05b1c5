//! compat/rust: the official Rust driver (`mongodb` crate), unchanged, straight against the
//! upstream and through mongomux, on every scenario of `compat/scenarios.json` (except the
//! Node-only `admin-commands`), compared side by side by the harness (`harness.rs`).
//!
//! Run by `compat/run` with the `COMPAT_*` environment it exports; `compat-rust SCENARIO...`
//! runs only the named scenarios. Exits 1 when a scenario differs without a listed reason,
//! fails, or a check of the gateway side on its own fails.
//!
//! One current-thread runtime, one scenario at a time: the Lambda and IAM scenarios change the
//! process environment (which is where Lambda puts `AWS_LAMBDA_RUNTIME_API` and the function's
//! credentials, and where the driver reads them), and they do it only while no client exists.

mod harness;

use std::time::Duration;

use anyhow::{Context, Result};
use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::error::{ErrorKind, Result as DriverResult};
use mongodb::options::{
    DeleteOneModel, IndexOptions, InsertOneModel, ReturnDocument, UpdateOneModel, WriteModel,
};
use mongodb::{Client, Collection, Database, IndexModel};
use serde_json::{json, Value};

use harness::{
    client, ctl_freeze, ctl_restart_later, db_name, error_shape, lock, plain, plain_all,
    plain_bson, with_options, Harness, Run, Target,
};

/// The compressors this build of the driver offers (its `*-compression` features).
const COMPRESSORS: &str = "snappy,zlib,zstd";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let targets = Target::both()?;
    let mut h = Harness::new(driver_version())?;
    println!("compat-rust: mongodb {}", h.version);
    let wanted = |id: &str| only.is_empty() || only.iter().any(|o| o == id);

    for (id, key) in [
        ("connect-scram-sha-256", "sha256"),
        ("connect-scram-sha-1", "sha1"),
    ] {
        if wanted(id) {
            h.differential(id, &targets, |t| connect(t, id, key))
                .await?;
        }
    }
    if wanted("crud") {
        h.differential("crud", &targets, crud).await?;
    }
    for (id, ordered) in [
        ("bulk-ordered-error", true),
        ("bulk-unordered-error", false),
    ] {
        if wanted(id) {
            h.differential(id, &targets, |t| bulk(t, id, ordered))
                .await?;
        }
    }
    if wanted("cursor-batches") {
        h.differential("cursor-batches", &targets, cursor_batches)
            .await?;
    }
    if wanted("cursor-early-close") {
        h.differential("cursor-early-close", &targets, cursor_early_close)
            .await?;
    }
    if wanted("aggregate") {
        h.differential("aggregate", &targets, aggregate).await?;
    }
    if wanted("index-duplicate-key") {
        h.differential("index-duplicate-key", &targets, index_duplicate_key)
            .await?;
    }
    for (id, write) in [
        ("retryable-write-drop", true),
        ("retryable-read-drop", false),
    ] {
        if wanted(id) {
            let gateway = h
                .differential(id, &targets, |t| retryable_drop(t, id, write))
                .await?;
            // Through the gateway (a mongos to the driver) the operation succeeds, exactly once,
            // whatever the reference does.
            let g = &gateway["outcome"];
            let want = if write {
                json!({ "result": "ok", "after": [1, 2] })
            } else {
                json!({ "result": [1], "after": [1] })
            };
            let got = json!({ "result": g["result"], "after": g["after"] });
            h.check(
                id,
                got == want,
                "through the gateway the operation must succeed once",
                &got,
            );
        }
    }
    if wanted("txn-commit") {
        h.differential("txn-commit", &targets, txn_commit).await?;
    }
    if wanted("txn-abort") {
        h.differential("txn-abort", &targets, txn_abort).await?;
    }
    if wanted("compression") {
        h.differential("compression", &targets, compression).await?;
    }
    if wanted("lambda-polling") {
        h.differential("lambda-polling", &targets, lambda_polling)
            .await?;
    }
    if wanted("direct-connection") {
        h.differential("direct-connection", &targets, direct_connection)
            .await?;
    }
    if wanted("seed-list-two-gateways") {
        let gateway = h
            .differential("seed-list-two-gateways", &targets, seed_list)
            .await?;
        // Beyond the comparison: through the seed list the driver must see two mongos.
        let types = &gateway["info"]["serverTypes"];
        let mut kinds: Vec<&str> = types
            .as_object()
            .map(|m| m.values().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        kinds.sort_unstable();
        h.check(
            "seed-list-two-gateways",
            kinds == ["Mongos", "Mongos"],
            "both gateways seen as mongos",
            types,
        );
    }
    if wanted("iam-mongodb-aws") {
        let gateway = h.differential("iam-mongodb-aws", &targets, iam).await?;
        // The upstream has no MONGODB-AWS, so the gateway side is checked on its own: the role
        // gets in and works, a wrong secret is refused with AuthenticationFailed.
        let g = &gateway["outcome"];
        let ok = g["ping"] == json!(1.0)
            && g["found"] == json!([{ "_id": 1, "who": "iam" }])
            && g["wrongSecret"]["refused"]["code"] == json!(18);
        h.check(
            "iam-mongodb-aws",
            ok,
            "through the gateway the role must get in, a wrong secret must get 18",
            g,
        );
    }

    if h.failures.is_empty() {
        println!("compat-rust: every scenario passed");
        Ok(())
    } else {
        println!("compat-rust: FAILED: {}", h.failures.join("; "));
        std::process::exit(1);
    }
}

/// The driver's version, from the workspace's Cargo.lock (what this binary was built with).
fn driver_version() -> String {
    let lock = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock");
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"mongodb\"" {
            if let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \"")) {
                return v.trim_end_matches('"').to_owned();
            }
        }
    }
    "?".to_owned()
}

async fn fresh(c: &Client, scenario: &str, t: &Target) -> Result<Database> {
    let db = c.database(&db_name(scenario, t));
    db.drop().await?;
    Ok(db)
}

async fn all(coll: &Collection<Document>, filter: Document) -> Result<Vec<Document>> {
    Ok(coll
        .find(filter)
        .sort(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?)
}

async fn ids(coll: &Collection<Document>) -> Result<Value> {
    let docs = all(coll, doc! {}).await?;
    Ok(Value::Array(
        docs.iter().map(|d| plain_bson(d.get("_id"))).collect(),
    ))
}

/// The outcome of a command that may fail: its value, or the error's shape.
fn or_shape<T>(r: DriverResult<T>, ok: impl FnOnce(T) -> Value) -> Value {
    match r {
        Ok(v) => ok(v),
        Err(e) => error_shape(&e),
    }
}

fn ok_field(reply: Document) -> Value {
    plain_bson(reply.get("ok"))
}

// --- connect ------------------------------------------------------------------------------------

async fn connect(t: Target, scenario: &str, key: &str) -> Result<Run> {
    let uri = if key == "sha256" { &t.sha256 } else { &t.sha1 };
    let (c, ev) = client(uri, |_| {}).await?;
    let mut o = json!({});
    let mut refusal = None;
    match c.database("admin").run_command(doc! { "ping": 1 }).await {
        Ok(reply) => {
            o["ping"] = ok_field(reply);
            let coll = fresh(&c, scenario, &t).await?.collection::<Document>("c");
            coll.insert_one(doc! { "_id": 1, "who": key }).await?;
            o["found"] = plain_all(all(&coll, doc! {}).await?);
        }
        // Kept in the outcome: straight to FerretDB the Rust driver cannot log in (see Target).
        Err(e) => {
            o["ping"] = json!({ "refused": error_shape(&e) });
            refusal = Some(e.to_string());
        }
    }
    let info = {
        let ev = lock(&ev);
        json!({
            "serverTypes": ev.servers,
            "awaitedHeartbeats": ev.heartbeats.iter().filter(|a| **a).count(),
            "refusal": refusal,
        })
    };
    let (bad, _) = client(uri, |o| {
        o.server_selection_timeout = Some(Duration::from_secs(5));
        if let Some(cred) = o.credential.as_mut() {
            cred.password = Some("not-the-password".into());
        }
    })
    .await?;
    o["wrongPassword"] = or_shape(
        bad.database("admin").run_command(doc! { "ping": 1 }).await,
        |_| json!("accepted"),
    );
    Ok(Run::with_info(o, info))
}

// --- CRUD ---------------------------------------------------------------------------------------

async fn crud(t: Target) -> Result<Run> {
    let (c, _) = client(&t.plain, |_| {}).await?;
    let coll = fresh(&c, "crud", &t).await?.collection::<Document>("items");
    let mut o = json!({});
    o["insertOne"] = plain_bson(Some(
        &coll
            .insert_one(doc! { "_id": 1, "n": 1, "tag": "a" })
            .await?
            .inserted_id,
    ));
    let many = coll
        .insert_many([
            doc! { "_id": 2, "n": 2, "tag": "b" },
            doc! { "_id": 3, "n": 3, "tag": "a" },
            doc! { "_id": 4, "n": 4, "tag": "b" },
            doc! { "_id": 5, "n": 5, "tag": "a" },
        ])
        .await?;
    o["insertMany"] = json!(many.inserted_ids.len());
    o["findOne"] = coll
        .find_one(doc! { "_id": 3 })
        .await?
        .map_or(Value::Null, plain);
    o["findMissing"] = coll
        .find_one(doc! { "_id": 99 })
        .await?
        .map_or(Value::Null, plain);
    let u1 = coll
        .update_one(doc! { "_id": 2 }, doc! { "$set": { "tag": "c" } })
        .await?;
    o["updateOne"] = json!([u1.matched_count, u1.modified_count]);
    let u2 = coll
        .update_many(doc! { "n": { "$gte": 3 } }, doc! { "$inc": { "n": 10 } })
        .await?;
    o["updateMany"] = json!([u2.matched_count, u2.modified_count]);
    let u3 = coll
        .update_one(doc! { "_id": 6 }, doc! { "$set": { "n": 6, "tag": "u" } })
        .upsert(true)
        .await?;
    o["upsert"] = json!([
        u3.matched_count,
        u3.modified_count,
        plain_bson(u3.upserted_id.as_ref())
    ]);
    let r = coll
        .replace_one(doc! { "_id": 4 }, doc! { "n": 40, "tag": "r" })
        .await?;
    o["replaceOne"] = json!([r.matched_count, r.modified_count]);
    o["findOneAndUpdate"] = coll
        .find_one_and_update(doc! { "_id": 1 }, doc! { "$set": { "tag": "z" } })
        .return_document(ReturnDocument::After)
        .await?
        .map_or(Value::Null, plain);
    o["findOneAndDelete"] = coll
        .find_one_and_delete(doc! { "_id": 6 })
        .await?
        .map_or(Value::Null, plain);
    o["deleteOne"] = json!(coll.delete_one(doc! { "_id": 5 }).await?.deleted_count);
    o["deleteMany"] = json!(coll.delete_many(doc! { "tag": "a" }).await?.deleted_count);
    o["countDocuments"] = json!(coll.count_documents(doc! {}).await?);
    o["estimatedDocumentCount"] = json!(coll.estimated_document_count().await?);
    let mut tags: Vec<Value> = coll
        .distinct("tag", doc! {})
        .await?
        .into_iter()
        .map(|b| plain_bson(Some(&b)))
        .collect();
    tags.sort_by_key(|v| v.to_string());
    o["distinct"] = Value::Array(tags);
    let projected: Vec<Document> = coll
        .find(doc! {})
        .projection(doc! { "_id": 0, "tag": 1 })
        .sort(doc! { "tag": 1 })
        .await?
        .try_collect()
        .await?;
    o["projection"] = plain_all(projected);
    let skipped: Vec<Document> = coll
        .find(doc! {})
        .sort(doc! { "_id": -1 })
        .skip(1)
        .limit(1)
        .await?
        .try_collect()
        .await?;
    o["skipLimit"] = plain_all(skipped);
    o["all"] = plain_all(all(&coll, doc! {}).await?);
    Ok(Run::new(o))
}

// --- bulk writes with a duplicate key mid-batch ---------------------------------------------------

async fn bulk(t: Target, scenario: &str, ordered: bool) -> Result<Run> {
    let (c, _) = client(&t.plain, |_| {}).await?;
    let db = fresh(&c, scenario, &t).await?;
    let im = db.collection::<Document>("im");
    let mut o = json!({});
    let docs = [
        doc! { "_id": 1 },
        doc! { "_id": 2 },
        doc! { "_id": 2 },
        doc! { "_id": 3 },
    ];
    o["insertMany"] = match im.insert_many(docs).ordered(ordered).await {
        Ok(r) => json!({ "accepted": r.inserted_ids.len() }),
        Err(e) => match &*e.kind {
            ErrorKind::InsertMany(ime) => json!({
                "writeErrors": ime.write_errors.iter().flatten()
                    .map(|w| json!({ "index": w.index, "code": w.code })).collect::<Vec<_>>(),
            }),
            _ => error_shape(&e),
        },
    };
    o["insertManyAfter"] = ids(&im).await?;
    // The Rust driver's only mixed bulk API is the client-level bulkWrite command (MongoDB 8.0,
    // wire version 25); the driver refuses it itself below that.
    let bw = db.collection::<Document>("bw");
    let ns = bw.namespace();
    let models: Vec<WriteModel> = vec![
        InsertOneModel::builder()
            .namespace(ns.clone())
            .document(doc! { "_id": 10 })
            .build()
            .into(),
        UpdateOneModel::builder()
            .namespace(ns.clone())
            .filter(doc! { "_id": 10 })
            .update(doc! { "$set": { "x": 1 } })
            .build()
            .into(),
        InsertOneModel::builder()
            .namespace(ns.clone())
            .document(doc! { "_id": 10 })
            .build()
            .into(),
        DeleteOneModel::builder()
            .namespace(ns.clone())
            .filter(doc! { "_id": 10 })
            .build()
            .into(),
        InsertOneModel::builder()
            .namespace(ns)
            .document(doc! { "_id": 11 })
            .build()
            .into(),
    ];
    o["clientBulkWrite"] = match c.bulk_write(models).ordered(ordered).await {
        Ok(r) => {
            json!({ "accepted": [r.inserted_count, r.matched_count, r.modified_count, r.deleted_count] })
        }
        Err(e) => error_shape(&e),
    };
    o["bulkWriteAfter"] = plain_all(all(&bw, doc! {}).await?);
    Ok(Run::new(o))
}

// --- cursors ------------------------------------------------------------------------------------

async fn seed25(db: &Database) -> Result<Collection<Document>> {
    let coll = db.collection::<Document>("c");
    coll.insert_many((0..25).map(|i| doc! { "_id": i, "g": i % 3, "v": i }))
        .await?;
    Ok(coll)
}

fn cursor_id_is_zero(reply: &Document) -> bool {
    matches!(
        reply.get_document("cursor").ok().and_then(|c| c.get("id")),
        Some(Bson::Int64(0)) | Some(Bson::Int32(0))
    )
}

fn batch_len(reply: &Document, field: &str) -> usize {
    reply
        .get_document("cursor")
        .and_then(|c| c.get_array(field))
        .map_or(0, Vec::len)
}

async fn cursor_batches(t: Target) -> Result<Run> {
    let (c, ev) = client(&t.plain, |_| {}).await?;
    let coll = seed25(&fresh(&c, "cursor-batches", &t).await?).await?;
    let from = lock(&ev).succeeded.len();
    let docs: Vec<Document> = coll
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .batch_size(2)
        .await?
        .try_collect()
        .await?;
    let ev = lock(&ev);
    let mut o = json!({ "ids": docs.iter().map(|d| plain_bson(d.get("_id"))).collect::<Vec<_>>() });
    let mut next = Vec::new();
    let mut exhausted = false;
    for (name, reply) in &ev.succeeded[from..] {
        match name.as_str() {
            "find" => o["firstBatch"] = json!(batch_len(reply, "firstBatch")),
            "getMore" => {
                next.push(batch_len(reply, "nextBatch"));
                exhausted = cursor_id_is_zero(reply);
            }
            _ => {}
        }
    }
    o["getMores"] = json!(next.len());
    o["nextBatches"] = json!(next);
    o["exhausted"] = json!(exhausted);
    Ok(Run::new(o))
}

async fn cursor_early_close(t: Target) -> Result<Run> {
    let (c, ev) = client(&t.plain, |_| {}).await?;
    let coll = seed25(&fresh(&c, "cursor-early-close", &t).await?).await?;
    let (from, from_failed) = {
        let ev = lock(&ev);
        (ev.succeeded.len(), ev.failed.len())
    };
    let mut cursor = coll
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .batch_size(2)
        .await?;
    let mut read = Vec::new();
    for _ in 0..5 {
        let d = cursor.try_next().await?.context("cursor ended early")?;
        read.push(plain_bson(d.get("_id")));
    }
    // Dropping an unexhausted cursor is how the Rust driver closes it: killCursors is sent from
    // a task of its own, so wait for its event.
    drop(cursor);
    let mut kill = json!("not sent");
    for _ in 0..100 {
        {
            let ev = lock(&ev);
            if let Some((_, r)) = ev.succeeded[from..]
                .iter()
                .find(|(n, _)| n == "killCursors")
            {
                let len = |k: &str| r.get_array(k).ok().map(Vec::len);
                kill = json!({
                    "killed": len("cursorsKilled"), "notfound": len("cursorsNotFound"),
                    "alive": len("cursorsAlive"), "unknown": len("cursorsUnknown"),
                });
                break;
            }
            if let Some((_, f)) = ev.failed[from_failed..]
                .iter()
                .find(|(n, _)| n == "killCursors")
            {
                kill = json!({ "failed": f });
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let get_mores = lock(&ev).succeeded[from..]
        .iter()
        .filter(|(n, _)| n == "getMore")
        .count();
    Ok(Run::new(json!({
        "read": read, "getMores": get_mores, "killCursors": kill,
        "countAfter": coll.count_documents(doc! {}).await?,
    })))
}

// --- aggregate ----------------------------------------------------------------------------------

async fn aggregate(t: Target) -> Result<Run> {
    let (c, _) = client(&t.plain, |_| {}).await?;
    let coll = seed25(&fresh(&c, "aggregate", &t).await?).await?;
    // One accumulator per $group: FerretDB 1.24 computes only the first.
    let grouped: Vec<Document> = coll
        .aggregate([
            doc! { "$match": { "v": { "$gte": 5 } } },
            doc! { "$group": { "_id": "$g", "total": { "$sum": "$v" } } },
            doc! { "$sort": { "_id": 1 } },
        ])
        .batch_size(1)
        .await?
        .try_collect()
        .await?;
    let counted: Vec<Document> = coll
        .aggregate([doc! { "$match": { "g": 1 } }, doc! { "$count": "n" }])
        .await?
        .try_collect()
        .await?;
    Ok(Run::new(
        json!({ "grouped": plain_all(grouped), "counted": plain_all(counted) }),
    ))
}

// --- indexes and a duplicate key ------------------------------------------------------------------

async fn listed(coll: &Collection<Document>) -> Result<Value> {
    let mut out: Vec<Value> = coll
        .list_indexes()
        .await?
        .try_collect::<Vec<IndexModel>>()
        .await?
        .into_iter()
        .map(|i| {
            let opts = i.options.unwrap_or_default();
            json!({ "name": opts.name, "key": plain(i.keys), "unique": opts.unique.unwrap_or(false) })
        })
        .collect();
    out.sort_by_key(|v| v["name"].to_string());
    Ok(Value::Array(out))
}

async fn index_duplicate_key(t: Target) -> Result<Run> {
    let (c, _) = client(&t.plain, |_| {}).await?;
    let coll = fresh(&c, "index-duplicate-key", &t)
        .await?
        .collection::<Document>("users");
    let mut o = json!({});
    let model = IndexModel::builder()
        .keys(doc! { "email": 1 })
        .options(IndexOptions::builder().unique(true).build())
        .build();
    o["createIndex"] = json!(coll.create_index(model).await?.index_name);
    o["indexes"] = listed(&coll).await?;
    coll.insert_one(doc! { "_id": 1, "email": "a@example.com" })
        .await?;
    let insert = |d: Document| {
        let coll = coll.clone();
        async move {
            match coll.insert_one(d).await {
                Ok(_) => json!("accepted"),
                Err(e) => {
                    let mut shape = error_shape(&e);
                    shape["isDuplicateKey"] = json!(shape["code"] == json!(11000));
                    shape
                }
            }
        }
    };
    o["duplicate"] = insert(doc! { "_id": 2, "email": "a@example.com" }).await;
    o["duplicateId"] = insert(doc! { "_id": 1, "email": "b@example.com" }).await;
    coll.drop_index("email_1").await?;
    o["indexesAfter"] = listed(&coll).await?;
    o["afterDrop"] = insert(doc! { "_id": 3, "email": "a@example.com" }).await;
    Ok(Run::new(o))
}

// --- retryable writes and reads across a connection drop ---------------------------------------------

/// The server the client is connected to is frozen, an operation is sent on the pooled
/// connection (surely in flight), then the server is killed and restarted on the same port under
/// it: the driver's one retry must land on the restarted server.
async fn retryable_drop(t: Target, scenario: &str, write: bool) -> Result<Run> {
    let uri = with_options(&t.plain, "retryWrites=true&retryReads=true");
    let (c, ev) = client(&uri, |o| o.max_pool_size = Some(1)).await?;
    let coll = fresh(&c, scenario, &t).await?.collection::<Document>("r");
    coll.insert_one(doc! { "_id": 1 }).await?;
    let (from, from_failed) = {
        let ev = lock(&ev);
        (ev.started.len(), ev.failed.len())
    };
    ctl_freeze(&t.restart).await?;
    let restarted = ctl_restart_later(&t.restart, 700)?;
    let result = if write {
        or_shape(coll.insert_one(doc! { "_id": 2 }).await, |_| json!("ok"))
    } else {
        match coll.find(doc! {}).sort(doc! { "_id": 1 }).await {
            Ok(cursor) => or_shape(cursor.try_collect::<Vec<Document>>().await, |d| {
                Value::Array(d.iter().map(|d| plain_bson(d.get("_id"))).collect())
            }),
            Err(e) => error_shape(&e),
        }
    };
    let log = restarted.await??;
    let command = if write { "insert" } else { "find" };
    // How many attempts the driver made is recorded, not compared: a driver that finds its
    // pooled connection dead before sending retries the connection, not the command.
    let (attempts, failed) = {
        let ev = lock(&ev);
        let attempts = ev.started[from..].iter().filter(|n| *n == command).count();
        let failed: Vec<Value> = ev.failed[from_failed..]
            .iter()
            .filter(|(n, _)| n == command)
            .map(|(_, f)| f.clone())
            .collect();
        (attempts, failed)
    };
    Ok(Run::with_info(
        json!({ "result": result, "after": ids(&coll).await? }),
        json!({ "restart": log, "attempts": attempts, "failedAttempts": failed }),
    ))
}

// --- sessions and transactions (nx-27017 directly / through the txn gateway) -----------------------

async fn txn_commit(t: Target) -> Result<Run> {
    let (c, _) = client(&t.txn, |_| {}).await?;
    let db = fresh(&c, "txn-commit", &t).await?;
    let (a, b) = (
        db.collection::<Document>("a"),
        db.collection::<Document>("b"),
    );
    a.insert_one(doc! { "_id": 0 }).await?;
    b.insert_one(doc! { "_id": 0 }).await?;
    let mut session = c.start_session().await?;
    let (ta, tb) = (a.clone(), b.clone());
    let inside = session
        .start_transaction()
        .and_run2(async move |s| {
            ta.insert_one(doc! { "_id": 1 }).session(&mut *s).await?;
            tb.update_one(doc! { "_id": 0 }, doc! { "$set": { "moved": 1 } })
                .session(&mut *s)
                .await?;
            ta.count_documents(doc! {}).session(&mut *s).await
        })
        .await?;
    drop(session);
    Ok(Run::new(json!({
        "insideCount": inside,
        "a": plain_all(all(&a, doc! {}).await?),
        "b": plain_all(all(&b, doc! {}).await?),
    })))
}

async fn txn_abort(t: Target) -> Result<Run> {
    let (c, _) = client(&t.txn, |_| {}).await?;
    let db = fresh(&c, "txn-abort", &t).await?;
    let a = db.collection::<Document>("a");
    a.insert_one(doc! { "_id": 0, "n": 0 }).await?;
    let mut session = c.start_session().await?;
    session.start_transaction().await?;
    a.insert_one(doc! { "_id": 1 })
        .session(&mut session)
        .await?;
    a.update_one(doc! { "_id": 0 }, doc! { "$set": { "n": 1 } })
        .session(&mut session)
        .await?;
    let mut cursor = a
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .session(&mut session)
        .await?;
    let inside: Vec<Document> = cursor.stream(&mut session).try_collect().await?;
    drop(cursor);
    session.abort_transaction().await?;
    drop(session);
    Ok(Run::new(
        json!({ "inside": plain_all(inside), "after": plain_all(all(&a, doc! {}).await?) }),
    ))
}

// --- compression, Lambda, directConnection, seed list ------------------------------------------------

async fn write_read(c: &Client, scenario: &str, t: &Target) -> Result<Value> {
    let coll = fresh(c, scenario, t).await?.collection::<Document>("z");
    let pad = "x".repeat(1000);
    coll.insert_many((0..50).map(|i| doc! { "_id": i, "pad": &pad }))
        .await?;
    let got: Vec<Document> = coll
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .batch_size(10)
        .await?
        .try_collect()
        .await?;
    let pad_ok = got.iter().all(|d| d.get_str("pad") == Ok(pad.as_str()));
    Ok(json!({ "count": got.len(), "padOk": pad_ok }))
}

async fn compression(t: Target) -> Result<Run> {
    let uri = with_options(&t.plain, &format!("compressors={COMPRESSORS}"));
    let (c, _) = client(&uri, |_| {}).await?;
    Ok(Run::with_info(
        write_read(&c, "compression", &t).await?,
        json!({ "requested": COMPRESSORS }),
    ))
}

/// Sets (or with `None` removes) process environment variables. Only called while no client
/// exists: the driver reads them when a client is made.
fn set_env(vars: &[(&str, Option<&str>)]) {
    for (k, v) in vars {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
}

async fn lambda_polling(t: Target) -> Result<Run> {
    set_env(&[("AWS_LAMBDA_RUNTIME_API", Some("127.0.0.1:9001"))]);
    let made = client(&t.plain, |o| {
        o.heartbeat_freq = Some(Duration::from_millis(500))
    })
    .await;
    set_env(&[("AWS_LAMBDA_RUNTIME_API", None)]);
    let (c, ev) = made?;
    let coll = fresh(&c, "lambda-polling", &t)
        .await?
        .collection::<Document>("l");
    coll.insert_one(doc! { "_id": 1 }).await?;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let found = plain_all(all(&coll, doc! { "_id": 1 }).await?);
    let ev = lock(&ev);
    let awaited = ev.heartbeats.iter().filter(|a| **a).count();
    Ok(Run::with_info(
        json!({ "found": found, "heartbeats": !ev.heartbeats.is_empty(), "awaited": awaited }),
        json!({ "heartbeats": ev.heartbeats.len() }),
    ))
}

async fn direct_connection(t: Target) -> Result<Run> {
    let (c, ev) = client(&with_options(&t.plain, "directConnection=true"), |_| {}).await?;
    let coll = fresh(&c, "direct-connection", &t)
        .await?
        .collection::<Document>("d");
    coll.insert_many([doc! { "_id": 1 }, doc! { "_id": 2 }])
        .await?;
    let got = ids(&coll).await?;
    let servers = lock(&ev).servers.clone();
    Ok(Run::with_info(
        json!({ "ids": got }),
        json!({ "serverTypes": servers }),
    ))
}

async fn seed_list(t: Target) -> Result<Run> {
    let (c, ev) = client(&t.seed, |_| {}).await?;
    let coll = fresh(&c, "seed-list-two-gateways", &t)
        .await?
        .collection::<Document>("s");
    coll.insert_many((0..10).map(|i| doc! { "_id": i })).await?;
    let got: Vec<Document> = coll
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .batch_size(3)
        .await?
        .try_collect()
        .await?;
    let n = coll.count_documents(doc! {}).await?;
    for _ in 0..40 {
        if !lock(&ev).servers.values().any(|k| k == "Unknown") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let servers = lock(&ev).servers.clone();
    Ok(Run::with_info(
        json!({ "ids": got.iter().map(|d| plain_bson(d.get("_id"))).collect::<Vec<_>>(), "count": n }),
        json!({ "serverTypes": servers }),
    ))
}

// --- IAM (MONGODB-AWS) ----------------------------------------------------------------------------

/// The variables the AWS SDK's default chain would read besides the credentials (profiles,
/// instance metadata): pointed at nothing, so only the environment's credentials are found.
const AWS_ISOLATION: [(&str, &str); 4] = [
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent/compat-aws-config"),
    (
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/compat-aws-credentials",
    ),
];

/// The role's temporary credentials go where Lambda puts them (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), where the driver reads them through the AWS
/// SDK's default chain: log in and work. Then the same with a wrong secret.
async fn iam(t: Target) -> Result<Run> {
    let key = harness::env("COMPAT_AWS_ACCESS_KEY_ID")?;
    let secret = harness::env("COMPAT_AWS_SECRET_ACCESS_KEY")?;
    let token = harness::env("COMPAT_AWS_SESSION_TOKEN")?;
    for (k, v) in AWS_ISOLATION {
        set_env(&[(k, Some(v))]);
    }
    let creds = |secret: &str| {
        set_env(&[
            ("AWS_ACCESS_KEY_ID", Some(&key)),
            ("AWS_SECRET_ACCESS_KEY", Some(secret)),
            ("AWS_SESSION_TOKEN", Some(&token)),
        ])
    };
    creds(&secret);
    let good = iam_login(&t).await;
    creds("wrong-secret-wrong-secret-wrong-secret00");
    let bad = iam_login(&t).await;
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ]
    .into_iter()
    .chain(AWS_ISOLATION.map(|(k, _)| k))
    {
        set_env(&[(k, None)]);
    }
    let mut o = good?;
    o["wrongSecret"] = bad?["ping"].clone();
    Ok(Run::new(o))
}

/// Logs in with MONGODB-AWS: `{ping: 1.0, found: [...]}`, or `{ping: {refused: shape}}`.
async fn iam_login(t: &Target) -> Result<Value> {
    let (c, _) = client(&t.iam, |o| {
        o.server_selection_timeout = Some(Duration::from_secs(5))
    })
    .await?;
    let mut o = json!({});
    match c.database("admin").run_command(doc! { "ping": 1 }).await {
        Ok(reply) => {
            o["ping"] = ok_field(reply);
            let coll = fresh(&c, "iam-mongodb-aws", t)
                .await?
                .collection::<Document>("c");
            coll.insert_one(doc! { "_id": 1, "who": "iam" }).await?;
            o["found"] = plain_all(all(&coll, doc! {}).await?);
        }
        Err(e) => o["ping"] = json!({ "refused": error_shape(&e) }),
    }
    Ok(o)
}
