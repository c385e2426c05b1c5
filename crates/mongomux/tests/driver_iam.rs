//! The official Rust driver (`aws-auth` feature) authenticating at the gateway with MONGODB-AWS
//! (issue 4), with moto as STS and IAM and signature checking on.
//!
//! The test spawns `moto_server` (`.venv/bin/moto_server`, override with `MONGOMUX_MOTO`; a
//! missing one fails the test) with `INITIAL_NO_AUTH_ACTION_COUNT=4`, and spends exactly those
//! four unauthenticated calls on set-up over plain HTTP: create a role anyone may assume, a user
//! and its access key, and assume the role. From then on moto checks every signature (the test
//! proves it with a bad one). The role's temporary credentials go into `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, which is where Lambda puts them and where
//! the driver (through the AWS SDK's default chain) reads them; nothing else the SDK might read
//! (profiles, config files, instance metadata) is left for it to find.
//!
//! The environment is process-wide, so everything runs in one test function, one case after
//! the other: the role's user gets in and runs CRUD; a wrong secret and a missing session token
//! are refused with AuthenticationFailed (18). No credential may appear in the gateway's log.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::Client;

const LIMIT: Duration = Duration::from_secs(120);
const AUTHENTICATION_FAILED: i32 = 18;
const ACCOUNT: &str = "123456789012";
const ROLE: &str = "fn-role";

// ---------------------------------------------------------------------------------------------
// moto

/// Credentials as AWS hands them out.
#[derive(Clone)]
struct AwsCreds {
    access_key: String,
    secret_key: String,
    token: Option<String>,
}

impl std::fmt::Debug for AwsCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCreds")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// A moto server on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Moto {
    fn start() -> Moto {
        let bin = std::env::var_os("MONGOMUX_MOTO")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".venv/bin/moto_server"));
        assert!(
            bin.is_file(),
            "moto_server not found at {} (override with MONGOMUX_MOTO): run scripts/install-deps",
            bin.display()
        );
        let dir = TempDir::new("mongomux-moto");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let err = log.try_clone().unwrap();
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "4")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut moto = Moto { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("moto exited during start-up with {status}:\n{}", moto.log());
            }
            // /moto-api/ is not an AWS action: it does not use up an unauthenticated call.
            if http_get(moto.addr(), "/moto-api/").is_some() {
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "moto did not answer within 60 s:\n{}",
                moto.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// One AWS query-protocol call (form-encoded POST /), routed by `host`; (status, body).
    fn call(&self, host: &str, authorization: &str, params: &[(&str, &str)]) -> (u16, String) {
        let body: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect();
        let body = body.join("&");
        let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(5))
            .expect("connect to moto");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nAuthorization: {authorization}\r\nX-Amz-Date: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len(),
            amz_date(),
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read moto's answer");
        let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP answer from moto");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        (status, body.to_string())
    }

    /// The four unauthenticated set-up calls; returns the role's temporary credentials.
    fn provision(&self) -> AwsCreds {
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;
        // Not checked during set-up; it only names the (fake) key and the service.
        let setup_auth = |key: &str, service: &str| {
            format!(
                "AWS4-HMAC-SHA256 Credential={key}/{}/us-east-1/{service}/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=00",
                &amz_date()[..8]
            )
        };
        let iam = |action: &str, params: &[(&str, &str)]| {
            let mut all = vec![("Action", action), ("Version", "2010-05-08")];
            all.extend_from_slice(params);
            let (status, body) = self.call(
                "iam.amazonaws.com",
                &setup_auth("AKIAIOSFODNN7EXAMPLE", "iam"),
                &all,
            );
            assert_eq!(status, 200, "{action}: {body}");
            body
        };
        iam(
            "CreateRole",
            &[("RoleName", ROLE), ("AssumeRolePolicyDocument", trust)],
        );
        iam("CreateUser", &[("UserName", "deployer")]);
        let key = iam("CreateAccessKey", &[("UserName", "deployer")]);
        let deployer = xml(&key, "AccessKeyId");
        let (status, body) = self.call(
            "sts.amazonaws.com",
            &setup_auth(&deployer, "sts"),
            &[
                ("Action", "AssumeRole"),
                ("Version", "2011-06-15"),
                ("RoleArn", &format!("arn:aws:iam::{ACCOUNT}:role/{ROLE}")),
                ("RoleSessionName", "driver-iam"),
            ],
        );
        assert_eq!(status, 200, "AssumeRole: {body}");
        let creds = AwsCreds {
            access_key: xml(&body, "AccessKeyId"),
            secret_key: xml(&body, "SecretAccessKey"),
            token: Some(xml(&body, "SessionToken")),
        };
        // Signature checking is on from here: a made-up signature must be refused.
        let (status, body) = self.call(
            "sts.amazonaws.com",
            &setup_auth(&creds.access_key, "sts"),
            &[("Action", "GetCallerIdentity"), ("Version", "2011-06-15")],
        );
        assert_eq!(
            status, 403,
            "moto accepted a made-up signature after set-up: {body}"
        );
        creds
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "---- moto log tail ----\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn xml(body: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = body
        .find(&open)
        .unwrap_or_else(|| panic!("no <{tag}> in {body}"))
        + open.len();
    let end = start + body[start..].find(&format!("</{tag}>")).unwrap();
    body[start..end].trim().to_string()
}

/// Now as `YYYYMMDD'T'HHMMSS'Z'`.
fn amz_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------------
// The driver's environment

/// Make `creds` (minus the session token when `with_token` is false) the only AWS credentials
/// the driver can find. Called only while no client is running.
fn set_aws_env(creds: &AwsCreds, with_token: bool) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            std::env::remove_var(k);
        }
    }
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/mongomux-test-aws-config");
    std::env::set_var(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/mongomux-test-aws-credentials",
    );
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ACCESS_KEY_ID", &creds.access_key);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &creds.secret_key);
    if let (true, Some(t)) = (with_token, &creds.token) {
        std::env::set_var("AWS_SESSION_TOKEN", t);
    }
}

async fn iam_client(gw: &Gateway) -> Client {
    let uri = format!(
        "mongodb://{}/?authMechanism=MONGODB-AWS&authSource=$external&serverSelectionTimeoutMS=10000&connectTimeoutMS=10000",
        gw.addr
    );
    Client::with_uri_str(&uri).await.expect("client options")
}

async fn assert_refused(gw: &Gateway, what: &str, secrets: &[&str]) {
    let client = iam_client(gw).await;
    let err = client
        .database("iam_it")
        .collection::<Document>("docs")
        .find_one(doc! {})
        .await
        .expect_err(&format!("{what}: login succeeded"));
    assert!(
        matches!(err.kind.as_ref(), ErrorKind::Authentication { .. }),
        "{what}: expected an authentication error, got {err:?}"
    );
    assert_eq!(
        code_in_chain(&err),
        Some(AUTHENTICATION_FAILED),
        "{what}: {err:?}"
    );
    let text = format!("{err:?}");
    for s in secrets {
        assert!(!text.contains(s), "{what}: the error names a credential");
    }
    client.shutdown().immediate(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn driver_mongodb_aws_through_the_gateway() {
    bounded(LIMIT, "driver_mongodb_aws_through_the_gateway", async {
        let moto = tokio::task::block_in_place(Moto::start);
        let role = tokio::task::block_in_place(|| moto.provision());

        let dir = TempDir::new("mongomux-iam-cfg");
        let path = dir.path().join("mongomux.toml");
        std::fs::write(
            &path,
            format!(
                "sts_endpoint = \"{}\"\nsts_max_concurrency = 8\nsts_timeout = \"10s\"\n\n\
                 [[users]]\nname = \"arn:aws:iam::{ACCOUNT}:role/{ROLE}\"\ndb = \"$external\"\naws = true\n",
                moto.endpoint()
            ),
        )
        .unwrap();
        let (_ferret, gw) = ferret_stack(|cfg| {
            cfg.extra_args = vec!["--config".into(), path.display().to_string()];
        })
        .await;

        // The role's user gets in and runs CRUD.
        set_aws_env(&role, true);
        let client = iam_client(&gw).await;
        let coll = client.database("iam_it").collection::<Document>("docs");
        coll.delete_many(doc! {}).await.expect("delete as the role");
        coll.insert_many(vec![doc! {"_id": 1, "n": 1}, doc! {"_id": 2, "n": 2}])
            .await
            .expect("insert as the role");
        coll.update_one(doc! {"_id": 2}, doc! {"$set": {"n": 20}})
            .await
            .expect("update as the role");
        assert_eq!(
            coll.find_one(doc! {"_id": 2}).await.expect("find"),
            Some(doc! {"_id": 2, "n": 20})
        );
        assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 2);
        client.shutdown().immediate(true).await;
        let metrics = gw.metrics().expect("metrics");
        let ok = metrics
            .lines()
            .find_map(|l| l.strip_prefix("mongomux_sts_requests_total{result=\"ok\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert!(
            ok.is_some_and(|n| n >= 1.0),
            "no successful STS call: {ok:?}"
        );

        let secrets = [role.secret_key.as_str(), role.token.as_deref().unwrap()];

        // A wrong secret.
        let mut wrong = role.clone();
        wrong.secret_key = format!("wrong{}", &role.secret_key[5..]);
        set_aws_env(&wrong, true);
        assert_refused(&gw, "wrong secret", &secrets).await;

        // Temporary credentials without their session token.
        set_aws_env(&role, false);
        assert_refused(&gw, "missing session token", &secrets).await;

        let log = gw.log_tail(100_000);
        for s in secrets.iter().chain([&wrong.secret_key.as_str()]) {
            assert!(!log.contains(s), "a credential appears in the gateway log");
        }
    })
    .await;
}
