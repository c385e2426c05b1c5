//! Tests of the credential cache over a scripted provider: what is reused, what is fetched
//! again, and that nothing expired (or about to) is ever handed out for signing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_credential_types::provider::{error::CredentialsError, future};
use aws_credential_types::Credentials;

use super::*;

const SECRET: &str = "scripted-secret-do-not-log";

/// Hands out credentials whose expiries are the scripted offsets from now (seconds; `None`:
/// no expiry), one per call, repeating the last; or fails when the script is empty.
#[derive(Debug)]
struct Scripted {
    calls: Arc<AtomicUsize>,
    offsets: Mutex<VecDeque<Option<i64>>>,
}

fn source(offsets: &[Option<i64>]) -> (AwsCredentialSource, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let provider = Scripted {
        calls: calls.clone(),
        offsets: Mutex::new(offsets.iter().copied().collect()),
    };
    (AwsCredentialSource::with_provider(provider), calls)
}

impl ProvideCredentials for Scripted {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let mut offsets = self.offsets.lock().unwrap();
        let Some(offset) = (if offsets.len() > 1 {
            offsets.pop_front()
        } else {
            offsets.front().copied()
        }) else {
            let err = CredentialsError::provider_error("endpoint answered 500");
            return future::ProvideCredentials::ready(Err(err));
        };
        let expiry = offset.map(|s| {
            let now = SystemTime::now();
            match u64::try_from(s) {
                Ok(ahead) => now + Duration::from_secs(ahead),
                Err(_) => now - Duration::from_secs(s.unsigned_abs()),
            }
        });
        let c = Credentials::new(
            format!("AKIDSCRIPTED{n:04}"),
            SECRET,
            Some("token".into()),
            expiry,
            "scripted",
        );
        future::ProvideCredentials::ready(Ok(c))
    }
}

#[tokio::test]
async fn long_lived_credentials_are_fetched_once() {
    let (s, calls) = source(&[Some(3600)]);
    let (a, _) = s.for_signing().await.unwrap();
    let (b, _) = s.for_signing().await.unwrap();
    assert_eq!(a.access_key_id, b.access_key_id);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    s.invalidate();
    s.for_signing().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "invalidate forces a fetch");
}

#[tokio::test]
async fn credentials_without_expiry_are_never_cached() {
    let (s, calls) = source(&[None]);
    s.for_signing().await.unwrap();
    s.for_signing().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn credentials_about_to_expire_are_replaced_before_signing() {
    let (s, calls) = source(&[Some(3), Some(3600)]);
    let (c, at) = s.for_signing().await.unwrap();
    assert_eq!(c.access_key_id, "AKIDSCRIPTED0001");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(at <= SystemTime::now());
}

#[tokio::test]
async fn expired_credentials_are_never_handed_out() {
    let (s, calls) = source(&[Some(-10)]);
    let err = s.for_signing().await.unwrap_err();
    assert!(matches!(
        err,
        UpstreamError::AwsCredentials { source: None, .. }
    ));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one forced refresh, then give up"
    );
    // Nothing expired stays in the cache either.
    assert!(s.cached(SystemTime::now()).is_none());
    assert!(!format!("{err} {err:?}").contains(SECRET));
}

#[tokio::test]
async fn a_provider_failure_is_an_error_with_its_cause() {
    let (s, _) = source(&[]);
    let err = s.for_signing().await.unwrap_err();
    let UpstreamError::AwsCredentials {
        source: Some(cause),
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    let chain = error_chain(cause);
    assert!(chain.contains("500"), "{chain}");
}

fn error_chain(e: &CredentialsError) -> String {
    let mut out = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[test]
fn refresh_ahead_is_five_minutes_or_half_a_short_lifetime() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let creds = AwsCredentials {
        access_key_id: "AKID".into(),
        secret_access_key: Secret::new(SECRET),
        session_token: None,
    };
    let cached = |lifetime: u64| Cached {
        credentials: creds.clone(),
        expires: t + Duration::from_secs(lifetime),
        fetched: t,
    };
    // Six hours (an ECS task role): reused until five minutes before expiry.
    let six_h = cached(6 * 3600);
    assert!(six_h.fresh_at(six_h.expires - Duration::from_secs(301)));
    assert!(!six_h.fresh_at(six_h.expires - Duration::from_secs(299)));
    // Twelve seconds: reused for the first half only.
    let short = cached(12);
    assert!(short.fresh_at(t + Duration::from_secs(5)));
    assert!(!short.fresh_at(t + Duration::from_secs(7)));
    // Never past the minimum validity, whatever the lifetime.
    let tiny = cached(4);
    assert!(!tiny.fresh_at(t));
    assert!(!short.fresh_at(t + Duration::from_secs(60)));
}
