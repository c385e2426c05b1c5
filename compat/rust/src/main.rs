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

mod conn;
mod data;
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

use conn::*;
use data::*;
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
