//! The official Rust driver authenticating at the gateway (issue 3): SCRAM-SHA-256 and
//! SCRAM-SHA-1 with the right password, a wrong one and an unknown user, and a read-only user's
//! write refused. Users are made with `mongomux user add`, exactly as an operator makes them, and
//! given to `mongomux serve --config`. Each test starts its own FerretDB and gateway.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::options::{AuthMechanism, Credential};
use mongodb::Client;

const LIMIT: Duration = Duration::from_secs(60);
const UNAUTHORIZED: i32 = 13;
const AUTHENTICATION_FAILED: i32 = 18;

/// A gateway user: name, password and the `[[users]]` entry `mongomux user add` printed.
struct User {
    name: &'static str,
    password: String,
    toml: String,
}

/// Runs `mongomux user add NAME --role ROLE`, feeding the password on stdin.
fn user_add(name: &'static str, role: &str) -> User {
    let password = format!("pw-{name}-{}", std::process::id());
    let mut child = Command::new(gateway_bin())
        .args(["user", "add", name, "--role", role])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mongomux user add");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().expect("mongomux user add");
    assert!(
        out.status.success(),
        "mongomux user add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).unwrap();
    assert!(toml.contains("[[users]]"), "unexpected output: {toml}");
    assert!(!toml.contains(&password), "user add printed the password");
    User {
        name,
        password,
        toml,
    }
}

/// FerretDB and a gateway whose config file defines `users` (so client auth is required).
/// The returned folder holds the config file and must outlive the gateway.
async fn stack(users: &[&User]) -> (Ferret, Gateway, TempDir) {
    let dir = TempDir::new("mongomux-auth-cfg");
    let path: PathBuf = dir.path().join("mongomux.toml");
    let text: String = users.iter().map(|u| u.toml.as_str()).collect();
    std::fs::write(&path, text).unwrap();
    let (ferret, gw) = ferret_stack(|cfg| {
        cfg.extra_args = vec!["--config".into(), path.display().to_string()];
    })
    .await;
    (ferret, gw, dir)
}

fn client_as(gw: &Gateway, name: &str, password: &str, mechanism: AuthMechanism) -> Client {
    let credential = Credential::builder()
        .username(name.to_string())
        .password(password.to_string())
        .source("admin".to_string())
        .mechanism(mechanism)
        .build();
    client_to(gw.addr, Some(credential), |o| {
        o.server_selection_timeout = Some(Duration::from_secs(5))
    })
}

async fn assert_login_fails(gw: &Gateway, name: &str, password: &str, mechanism: AuthMechanism) {
    let client = client_as(gw, name, password, mechanism);
    let err = client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .expect_err("login with bad credentials succeeded");
    assert!(
        matches!(err.kind.as_ref(), ErrorKind::Authentication { .. }),
        "expected an authentication error, got {err:?}"
    );
    assert_eq!(code_in_chain(&err), Some(AUTHENTICATION_FAILED), "{err:?}");
    assert!(
        err.to_string().contains("Authentication failed."),
        "message should be the server's generic one: {err}"
    );
    client.shutdown().immediate(true).await;
}

async fn right_and_wrong(mechanism: AuthMechanism) {
    let alice = user_add("alice", "readWrite");
    let (_ferret, gw, _dir) = stack(&[&alice]).await;

    let client = client_as(&gw, alice.name, &alice.password, mechanism.clone());
    let coll = client.database("auth_it").collection::<Document>("docs");
    coll.insert_one(doc! {"_id": 1, "by": "alice"})
        .await
        .expect("insert as alice");
    let got = coll.find_one(doc! {"_id": 1}).await.expect("find as alice");
    assert_eq!(got, Some(doc! {"_id": 1, "by": "alice"}));
    client.shutdown().immediate(true).await;

    assert_login_fails(&gw, alice.name, "not-the-password", mechanism.clone()).await;
    assert_login_fails(&gw, "nobody", "whatever", mechanism).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_sha_256_right_and_wrong_password() {
    bounded(LIMIT, "scram_sha_256_right_and_wrong_password", async {
        right_and_wrong(AuthMechanism::ScramSha256).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_sha_1_right_and_wrong_password() {
    bounded(LIMIT, "scram_sha_1_right_and_wrong_password", async {
        right_and_wrong(AuthMechanism::ScramSha1).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_user_write_refused() {
    bounded(LIMIT, "read_only_user_write_refused", async {
        let writer = user_add("writer", "readWrite");
        let reader = user_add("reader", "read");
        let (_ferret, gw, _dir) = stack(&[&writer, &reader]).await;

        let w = client_as(
            &gw,
            writer.name,
            &writer.password,
            AuthMechanism::ScramSha256,
        );
        w.database("ro_it")
            .collection::<Document>("docs")
            .insert_one(doc! {"_id": 1})
            .await
            .expect("insert as the read-write user");

        let r = client_as(
            &gw,
            reader.name,
            &reader.password,
            AuthMechanism::ScramSha256,
        );
        let coll = r.database("ro_it").collection::<Document>("docs");
        assert_eq!(
            coll.count_documents(doc! {}).await.expect("read as reader"),
            1
        );
        let err = coll
            .insert_one(doc! {"_id": 2})
            .await
            .expect_err("a read-only user's insert succeeded");
        assert_eq!(error_code(&err), Some(UNAUTHORIZED), "{err:?}");
        let err = coll
            .delete_many(doc! {})
            .await
            .expect_err("a read-only user's delete succeeded");
        assert_eq!(error_code(&err), Some(UNAUTHORIZED), "{err:?}");
        assert_eq!(
            coll.count_documents(doc! {}).await.expect("read as reader"),
            1,
            "the refused writes changed nothing"
        );
        w.shutdown().immediate(true).await;
        r.shutdown().immediate(true).await;
    })
    .await;
}
