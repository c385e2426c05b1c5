//! The data scenarios: CRUD, bulk writes with a duplicate key mid-batch, cursors with small
//! batches and early close, aggregate, and indexes with a duplicate key.

use super::*;

// --- CRUD ---------------------------------------------------------------------------------------

pub(super) async fn crud(t: Target) -> Result<Run> {
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

pub(super) async fn bulk(t: Target, scenario: &str, ordered: bool) -> Result<Run> {
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

pub(super) async fn seed25(db: &Database) -> Result<Collection<Document>> {
    let coll = db.collection::<Document>("c");
    coll.insert_many((0..25).map(|i| doc! { "_id": i, "g": i % 3, "v": i }))
        .await?;
    Ok(coll)
}

pub(super) fn cursor_id_is_zero(reply: &Document) -> bool {
    matches!(
        reply.get_document("cursor").ok().and_then(|c| c.get("id")),
        Some(Bson::Int64(0)) | Some(Bson::Int32(0))
    )
}

pub(super) fn batch_len(reply: &Document, field: &str) -> usize {
    reply
        .get_document("cursor")
        .and_then(|c| c.get_array(field))
        .map_or(0, Vec::len)
}

pub(super) async fn cursor_batches(t: Target) -> Result<Run> {
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

pub(super) async fn cursor_early_close(t: Target) -> Result<Run> {
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

pub(super) async fn aggregate(t: Target) -> Result<Run> {
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

pub(super) async fn listed(coll: &Collection<Document>) -> Result<Value> {
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

pub(super) async fn index_duplicate_key(t: Target) -> Result<Run> {
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
