//! The connection scenarios: logging in, retryable operations across a dropped connection,
//! transactions, compression, Lambda-style polling, `directConnection`, a seed list of two
//! gateways, and IAM (MONGODB-AWS).

use super::*;

// --- connect ------------------------------------------------------------------------------------

pub(super) async fn connect(t: Target, scenario: &str, key: &str) -> Result<Run> {
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

// --- retryable writes and reads across a connection drop ---------------------------------------------

/// The server the client is connected to is frozen, an operation is sent on the pooled
/// connection (surely in flight), then the server is killed and restarted on the same port under
/// it: the driver's one retry must land on the restarted server.
pub(super) async fn retryable_drop(t: Target, scenario: &str, write: bool) -> Result<Run> {
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

pub(super) async fn txn_commit(t: Target) -> Result<Run> {
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

pub(super) async fn txn_abort(t: Target) -> Result<Run> {
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

pub(super) async fn write_read(c: &Client, scenario: &str, t: &Target) -> Result<Value> {
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

pub(super) async fn compression(t: Target) -> Result<Run> {
    let uri = with_options(&t.plain, &format!("compressors={COMPRESSORS}"));
    let (c, _) = client(&uri, |_| {}).await?;
    Ok(Run::with_info(
        write_read(&c, "compression", &t).await?,
        json!({ "requested": COMPRESSORS }),
    ))
}

/// Sets (or with `None` removes) process environment variables. Only called while no client
/// exists: the driver reads them when a client is made.
pub(super) fn set_env(vars: &[(&str, Option<&str>)]) {
    for (k, v) in vars {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
}

pub(super) async fn lambda_polling(t: Target) -> Result<Run> {
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

pub(super) async fn direct_connection(t: Target) -> Result<Run> {
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

pub(super) async fn seed_list(t: Target) -> Result<Run> {
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
pub(super) async fn iam(t: Target) -> Result<Run> {
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
pub(super) async fn iam_login(t: &Target) -> Result<Value> {
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
