//! In-process tests of the MONGODB-AWS login over a real socket: a scripted upstream speaks
//! OP_MSG and checks the conversation with this workspace's own server side
//! (`mongomux_auth::aws`), minus the STS call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{future, ProvideCredentials};
use aws_credential_types::Credentials;
use bson::{doc, Document};
use mongomux_auth::aws::server_first;
use mongomux_testkit::frame::{frame, op_msg_body, read_message, Header};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::*;
use crate::upstream::config::AwsStatic;

const OP_MSG: i32 = 2013;
const SECRET: &str = "login-test-secret-do-not-log";

/// Long-lived credentials, counting the fetches.
#[derive(Debug)]
struct Counting(Arc<AtomicUsize>);

impl ProvideCredentials for Counting {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        future::ProvideCredentials::ready(Ok(Credentials::new(
            format!("AKIDCHAIN{n:08}"),
            SECRET,
            Some("chaintoken".into()),
            Some(SystemTime::now() + Duration::from_secs(3600)),
            "counting",
        )))
    }
}

/// What the scripted upstream saw of each login: the Authorization header it would send to
/// STS and whether a token came with it.
type Seen = Arc<Mutex<Vec<(String, bool)>>>;

fn reply(to: i32, body: &Document) -> Vec<u8> {
    let mut b = vec![0, 0, 0, 0, 0];
    body.to_writer(&mut b).unwrap();
    frame(OP_MSG, 0, to, &b).unwrap()
}

/// Serves `logins` connections: hello, then a MONGODB-AWS conversation checked by the server
/// side; the final answer is `done` when `accept`, AuthenticationFailed otherwise.
async fn upstream(accept: bool, logins: usize) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        for _ in 0..logins {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut state = None;
            while let Some(msg) = read_message(&mut s, 1 << 20).await.unwrap() {
                let id = Header::parse(&msg).unwrap().request_id;
                let cmd = op_msg_body(&msg[16..]).unwrap();
                let answer = if cmd.contains_key("hello") {
                    doc! { "ok": 1, "maxWireVersion": 17 }
                } else if cmd.contains_key("buildInfo") {
                    doc! { "ok": 1, "version": "7.0.0" }
                } else if cmd.contains_key("saslStart") {
                    assert_eq!(cmd.get_str("mechanism").unwrap(), "MONGODB-AWS");
                    assert_eq!(cmd.get_str("$db").unwrap(), "$external");
                    let payload = cmd.get_binary_generic("payload").unwrap();
                    let (st, p) = server_first(payload, "sts.amazonaws.com").unwrap();
                    state = Some(st);
                    doc! { "ok": 1, "conversationId": 1, "done": false, "payload": binary(p) }
                } else {
                    let payload = cmd.get_binary_generic("payload").unwrap();
                    let req = state
                        .take()
                        .unwrap()
                        .sts_request(payload, SystemTime::now());
                    let req = req.expect("the server side accepts the client's final message");
                    let get = |k: &str| req.headers.iter().find(|(n, _)| n == k).map(|h| &h.1);
                    let token = get("x-amz-security-token").is_some();
                    record
                        .lock()
                        .unwrap()
                        .push((get("authorization").unwrap().clone(), token));
                    match accept {
                        true => doc! { "ok": 1, "conversationId": 1, "done": true },
                        false => doc! { "ok": 0, "code": 18, "codeName": "AuthenticationFailed" },
                    }
                };
                s.write_all(&reply(id, &answer)).await.unwrap();
            }
        }
    });
    (address, seen)
}

fn aws_config(address: &str, source: Option<AwsCredentialSource>) -> UpstreamConfig {
    let mut cfg = UpstreamConfig::single(address);
    cfg.auth = UpstreamAuth::Aws {
        static_credentials: None,
    };
    cfg.aws_credentials = source.map(Arc::new);
    cfg
}

#[tokio::test]
async fn logs_in_with_the_chain_and_shares_its_cache() {
    let (address, seen) = upstream(true, 2).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let source = AwsCredentialSource::with_provider(Counting(calls.clone()));
    let cfg = aws_config(&address, Some(source));
    for id in 1..=2 {
        UpstreamConn::connect(&cfg, &address, None, id)
            .await
            .unwrap();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one fetch for both connections"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|(a, token)| a.contains("Credential=AKIDCHAIN00000000/") && *token));
}

#[tokio::test]
async fn static_keys_are_used_as_given() {
    let (address, seen) = upstream(true, 1).await;
    let mut cfg = aws_config(&address, None);
    cfg.auth = UpstreamAuth::Aws {
        static_credentials: Some(AwsStatic {
            access_key_id: "AKIDSTATICKEY123".into(),
            secret_access_key: mongomux_auth::Secret::new(SECRET),
            session_token: None,
        }),
    };
    UpstreamConn::connect(&cfg, &address, None, 1)
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen[0].0.contains("Credential=AKIDSTATICKEY123/"));
    assert!(!seen[0].1, "no token with long-term keys");
}

#[tokio::test]
async fn a_refused_login_clears_the_cache_and_names_no_secret() {
    let (address, _) = upstream(false, 2).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let source = AwsCredentialSource::with_provider(Counting(calls.clone()));
    let cfg = aws_config(&address, Some(source));
    for id in 1..=2 {
        let err = UpstreamConn::connect(&cfg, &address, None, id)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Auth(None)), "{err:?}");
        let text = crate::GatewayError::from(err).message();
        assert!(
            text.contains("could not authenticate to the upstream"),
            "{text}"
        );
        assert!(!text.contains(SECRET) && !text.contains("chaintoken"));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "each failure cleared the cache"
    );
}

#[tokio::test]
async fn no_source_and_no_keys_is_a_clear_error() {
    let (address, _) = upstream(true, 1).await;
    let cfg = aws_config(&address, None);
    let err = UpstreamConn::connect(&cfg, &address, None, 1)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, UpstreamError::AwsCredentials { .. }),
        "{err:?}"
    );
}
