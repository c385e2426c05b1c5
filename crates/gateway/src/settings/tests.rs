//! Settings: validation, secrets, TLS material read once, reload classification.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::reload::SettingsChange;
use super::*;
use crate::context::Shared;
use crate::reload::{apply, reload};

const BASE: &str = "listen = \"127.0.0.1:0\"\nupstream = \"mongodb://u:pw@127.0.0.1:27017\"\n";

fn raw(extra: &str) -> RawConfig {
    RawConfig::from_toml(&format!("{BASE}{extra}")).unwrap()
}

fn error_of(extra: &str) -> String {
    Settings::from_raw(raw(extra)).unwrap_err().to_string()
}

#[test]
fn toml_and_derived_values() {
    let s = Settings::from_raw(raw("pool_size = 4\ncheckout_timeout = \"250ms\"\n")).unwrap();
    assert_eq!(s.pool_size, 4);
    assert_eq!(s.checkout_timeout, Duration::from_millis(250));
    assert_eq!(s.max_pinned, 2);
    assert_eq!(s.upstream.scram_user().map(|u| u.0), Some("u"));
    assert!(s.tls_server.is_none());
    assert!(s.upstream_tls.is_none());
    assert_eq!(s.sts_endpoint.host, "sts.amazonaws.com");
    assert!(s.sts_tls.is_some());
    assert!(!s.users.auth_required());
    assert!(RawConfig::from_toml("bogus = 1").is_err());
}

#[test]
fn each_problem_is_named_once() {
    for (extra, expected) in [
        ("pool_size = 0\n", "pool_size must be between 1 and 10000"),
        ("max_clients = 0\n", "max_clients must be at least 1"),
        (
            "max_pinned = 11\n",
            "max_pinned must be between 1 and pool_size",
        ),
        (
            "max_upstream_connections = 0\n",
            "max_upstream_connections must be between 1 and 100000",
        ),
        (
            "sts_max_concurrency = 0\n",
            "sts_max_concurrency must be at least 1",
        ),
        ("idle_timeout = \"0s\"\n", "idle_timeout must be positive"),
        (
            "tls_mode = \"required\"\n",
            "tls_mode allowed/required needs",
        ),
        ("sts_endpoint = \"ftp://x\"\n", "invalid STS endpoint"),
        (
            "[[access]]\ncidr = \"0.0.0.0/0\"\n",
            "access-list entry \"0.0.0.0/0\" admits every",
        ),
        ("[[users]]\nname = \"a\"\n", "user \"a\" has no credentials"),
    ] {
        let message = error_of(extra);
        assert!(message.starts_with(expected), "{extra}: {message}");
        assert!(!message.contains("invalid configuration"), "{message}");
    }
    let missing = Settings::from_raw(RawConfig::default()).unwrap_err();
    assert_eq!(missing.to_string(), "an upstream URI is required");
    let syntax = RawConfig::from_toml("pool_size = \"x\"").unwrap_err();
    assert!(matches!(syntax, ConfigError::Syntax(_)), "{syntax}");
    let unreadable = RawConfig::from_file(std::path::Path::new("/nonexistent/m.toml"));
    let unreadable = unreadable.unwrap_err();
    assert_eq!(unreadable.to_string(), "cannot read /nonexistent/m.toml");
    assert!(std::error::Error::source(&unreadable).is_some());
}

#[test]
fn secrets_are_never_printed() {
    let secret = "hunter2-very-secret";
    let mut r = RawConfig::from_toml(&format!(
        "upstream = \"mongodb://u:{secret}@h:1\"\nupstream_password = \"{secret}\"\n"
    ))
    .unwrap();
    assert!(!format!("{r:?}").contains(secret));
    let s = Settings::from_raw(r.clone()).unwrap();
    assert!(!format!("{s:?}").contains(secret));
    // Errors about the URI or the password never echo them.
    let bad_uri = RawConfig::from_toml(&format!("upstream = \"mongodb://u:{secret}@h/?bogus=1\""));
    assert!(!bad_uri.unwrap_err().to_string().contains(secret));
    let bad_pct = parse_uri(&format!("mongodb://u:{secret}%zz@h")).unwrap_err();
    assert!(!bad_pct.to_string().contains(secret));
    r.upstream = Some(parse_uri("mongodb://h:1").unwrap());
    r.upstream_username = None;
    let no_user = Settings::from_raw(r).unwrap_err().to_string();
    assert!(!no_user.contains(secret), "{no_user}");
    assert!(no_user.contains("without a user name"));
}

#[test]
fn overrides_fold_into_the_upstream() {
    let s = Settings::from_raw(raw(
        "upstream_username = \"other\"\nupstream_password = \"x\"\nmax_pinned = 3\n",
    ))
    .unwrap();
    assert_eq!(s.upstream.scram_user().map(|u| u.0), Some("other"));
    assert_eq!(scram_password(&s.upstream), "x");
    assert_eq!(s.max_pinned, 3);
}

/// A scratch folder holding the test certificate and key (a self-signed `localhost`
/// certificate made for these tests only).
struct Pem(PathBuf);

impl Pem {
    fn new(name: &str) -> Pem {
        let dir = std::env::temp_dir().join(format!("mongomux-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), include_str!("testdata/cert.pem")).unwrap();
        std::fs::write(dir.join("key.pem"), include_str!("testdata/key.pem")).unwrap();
        Pem(dir)
    }

    fn toml(&self) -> String {
        format!(
            "tls_mode = \"allowed\"\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
            self.0.join("cert.pem"),
            self.0.join("key.pem")
        )
    }
}

impl Drop for Pem {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The certificate is read by `from_raw` and by nothing after it: once the settings exist,
/// the files may go away and the gateway still starts with TLS.
#[tokio::test]
async fn certificates_are_read_once() {
    let pem = Pem::new("read-once");
    let s = Settings::from_raw(raw(&pem.toml())).unwrap();
    assert!(s.tls_server.is_some());
    let cert = pem.0.join("cert.pem");
    drop(pem);
    assert!(!cert.exists());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let ctx = Shared::new(s, rx);
    assert!(ctx.live.settings.load().tls_server.is_some());

    let missing = error_of(&format!(
        "tls_mode = \"required\"\ntls_cert_file = {cert:?}\ntls_key_file = {cert:?}\n"
    ));
    assert!(missing.contains("cert.pem"), "{missing}");
}

fn context(extra: &str) -> Shared {
    let (tx, rx) = tokio::sync::watch::channel(false);
    // The drain signal must outlive the test's gateway parts.
    Box::leak(Box::new(tx));
    Shared::new(Settings::from_raw(raw(extra)).unwrap(), rx)
}

#[tokio::test]
async fn a_bad_reload_keeps_the_running_settings() {
    let ctx = context("max_clients = 7\n");
    let before = ctx.live.settings.load_full();
    let err = reload(&ctx, raw("max_clients = 9\npool_size = 0\n")).unwrap_err();
    assert!(err.to_string().contains("pool_size"));
    assert!(Arc::ptr_eq(&before, &ctx.live.settings.load_full()));
    assert_eq!(ctx.clients.total(), 7);
    assert_eq!(
        ctx.live.reload_count(),
        0,
        "sessions were told about a reload that failed"
    );
}

/// A file that changes live and restart settings against `context("max_clients = 7\n")`.
const CHANGED: &str = "listen = \"127.0.0.1:1\"\nupstream = \"mongodb://v:pw@127.0.0.1:27017\"\n\
    max_clients = 9\nhandshake_timeout = \"3s\"\npool_size = 20\nsts_timeout = \"1s\"\n\
    max_connections_per_source = 4\nmax_upstream_connections = 25\n";

#[tokio::test]
async fn reload_applies_live_settings_and_reports_restart_ones() {
    let ctx = context("max_clients = 7\n");
    let change = reload(&ctx, RawConfig::from_toml(CHANGED).unwrap()).unwrap();
    assert_eq!(
        change.applied,
        [
            "max_clients",
            "handshake_timeout",
            "max_connections_per_source",
            "sts_timeout",
            "pool_size",
            "max_upstream_connections",
            "max_pinned",
        ]
    );
    assert_eq!(change.needs_restart, ["listen", "upstream"]);
    let now = ctx.live.settings.load();
    assert_eq!(now.max_clients, 9);
    assert_eq!(ctx.clients.total(), 9);
    assert_eq!(now.handshake_timeout, Duration::from_secs(3));
    // Restart settings keep their running values, so the stored settings say what is in force.
    assert_eq!(now.listen.port(), 0);
    assert_eq!(now.pool_size, 20, "the pool is resized live");
    assert_eq!(now.max_pinned, 10);
    assert_eq!(ctx.upstream.shape().size, 20);
    assert_eq!(ctx.upstream.shape().total, Some(25));
    assert_eq!(now.upstream.scram_user().map(|u| u.0), Some("u"));
    assert_eq!(ctx.live.reload_count(), 1);

    // The same file again: nothing live differs, the restart ones are still pending.
    let again = reload(&ctx, RawConfig::from_toml(CHANGED).unwrap()).unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(again.needs_restart, change.needs_restart);
}

#[test]
fn an_upstream_password_change_needs_a_restart() {
    let old = Settings::from_raw(raw("")).unwrap();
    let mut new = Settings::from_raw(raw("upstream_password = \"other\"\n")).unwrap();
    let change = SettingsChange::reconcile(&old, &mut new);
    assert_eq!(change.needs_restart, ["upstream"]);
    assert_eq!(scram_password(&new.upstream), "pw");
}

#[tokio::test]
async fn apply_swaps_users_and_access_whole() {
    let ctx = context("");
    let user = "[[users]]\nname = \"arn:aws:iam::1:role/r\"\ndb = \"$external\"\naws = true\n";
    let change = apply(
        &ctx,
        Settings::from_raw(raw(&format!("[[access]]\ncidr = \"10.0.0.0/8\"\n{user}"))).unwrap(),
    );
    assert_eq!(change.users, 1);
    let now = ctx.live.settings.load();
    assert!(now.users.auth_required());
    assert!(!now
        .access
        .allows("127.0.0.1".parse().unwrap(), std::time::SystemTime::now()));
}

#[test]
fn bounds_are_live_and_the_session_key_needs_a_restart() {
    for bound in [
        "max_cursors_per_client",
        "max_cursors_per_user",
        "max_sessions_per_client",
        "max_sessions_per_user",
    ] {
        assert!(error_of(&format!("{bound} = 0\n")).contains(bound));
    }
    let key = "session_key = \"00112233445566778899aabbccddeeff\"\n";
    let old = Settings::from_raw(raw(key)).unwrap();
    assert_eq!(old.max_cursors_per_client, 1000);
    let mut new = Settings::from_raw(raw(&format!(
        "{key}max_cursors_per_client = 5\nmax_sessions_per_client = 7\nmax_sessions_per_user = 9\n"
    )))
    .unwrap();
    assert_eq!(old.max_sessions_per_user, 20_000);
    let change = SettingsChange::reconcile(&old, &mut new);
    assert_eq!(
        change.applied,
        vec![
            "max_cursors_per_client",
            "max_sessions_per_client",
            "max_sessions_per_user"
        ]
    );
    assert!(change.needs_restart.is_empty(), "the same key is no change");
    let mut rekeyed =
        Settings::from_raw(raw("session_key = \"ffeeddccbbaa99887766554433221100\"\n")).unwrap();
    let change = SettingsChange::reconcile(&old, &mut rekeyed);
    assert_eq!(change.needs_restart, vec!["session_key"]);
    assert!(rekeyed
        .session_key
        .as_ref()
        .is_some_and(|k| k.same_as(old.session_key.as_ref().unwrap())));
    // Unset on both sides (a random key each process) is no change either.
    let (a, mut b) = (
        Settings::from_raw(raw("")).unwrap(),
        Settings::from_raw(raw("")).unwrap(),
    );
    assert!(SettingsChange::reconcile(&a, &mut b)
        .needs_restart
        .is_empty());
    // The key is never shown, and a bad one is refused without being repeated.
    assert!(!format!("{old:?}").contains("00112233"));
    let e = error_of("session_key = \"c0ffee\"\n");
    assert!(e.contains("session_key") && !e.contains("c0ffee"), "{e}");
}

#[test]
fn anonymous_mode_beyond_loopback_must_be_asked_for() {
    let upstream = "upstream = \"mongodb://u:pw@127.0.0.1:27017\"\n";
    let anon = |listen: &str, extra: &str| {
        Settings::from_raw(
            RawConfig::from_toml(&format!("listen = \"{listen}\"\n{upstream}{extra}")).unwrap(),
        )
    };
    for listen in ["0.0.0.0:27018", "[::]:27018", "10.1.2.3:27018"] {
        let e = anon(listen, "").unwrap_err().to_string();
        assert!(e.contains("allow_anonymous_non_loopback"), "{e}");
        let s = anon(listen, "allow_anonymous_non_loopback = true\n").unwrap();
        assert!(anonymous_beyond_loopback(&s));
    }
    for listen in ["127.0.0.1:27018", "[::1]:27018"] {
        assert!(!anonymous_beyond_loopback(&anon(listen, "").unwrap()));
    }
    let user = "[[users]]\nname = \"arn:aws:iam::1:role/r\"\ndb = \"$external\"\naws = true\n";
    assert!(!anonymous_beyond_loopback(
        &anon("0.0.0.0:27018", user).unwrap()
    ));
}

fn scram_password(u: &crate::upstream::UpstreamConfig) -> &str {
    match &u.auth {
        crate::upstream::UpstreamAuth::Scram { password, .. } => password.expose(),
        other => panic!("not SCRAM: {other:?}"),
    }
}

#[test]
fn resolver_settings_need_a_restart() {
    let old = Settings::from_raw(raw("")).unwrap();
    assert_eq!(old.upstream_resolver, None);
    let mut new = Settings::from_raw(raw(
        "upstream_resolver = \"127.0.0.1:5353\"\nupstream_srv_rescan_interval = \"2s\"\n",
    ))
    .unwrap();
    assert_eq!(
        new.upstream_srv_rescan_interval,
        Some(Duration::from_secs(2))
    );
    let change = SettingsChange::reconcile(&old, &mut new);
    assert_eq!(
        change.needs_restart,
        ["upstream_resolver", "upstream_srv_rescan_interval"]
    );
    assert_eq!(new.upstream_resolver, None);
    assert!(error_of("upstream_srv_rescan_interval = \"0s\"\n")
        .contains("upstream_srv_rescan_interval must be positive"));
    // A mongodb+srv upstream is a valid setting (resolved later, not here), TLS on.
    let s = Settings::from_toml("upstream = \"mongodb+srv://u:pw@c.example.com/?replicaSet=rs\"\n")
        .unwrap();
    assert!(matches!(
        s.upstream.seeds,
        crate::upstream::Seeds::Srv { .. }
    ));
    assert!(s.upstream_tls.is_some());
}

#[test]
fn proxy_protocol_needs_its_sources() {
    use crate::proxy::ProxyMode;
    let s = Settings::from_raw(raw("")).unwrap();
    assert_eq!(s.proxy_protocol, ProxyMode::Off);
    assert!(!s.trusts_proxy("127.0.0.1".parse().unwrap()));
    for (extra, expected) in [
        (
            "proxy_protocol = \"required\"\n",
            "proxy_protocol_sources is empty",
        ),
        (
            "proxy_protocol = \"optional\"\n",
            "proxy_protocol_sources is empty",
        ),
        (
            "proxy_protocol = \"required\"\nproxy_protocol_sources = [\"0.0.0.0/1\", \"128.0.0.0/1\"]\n",
            "admits every address",
        ),
        (
            "proxy_protocol = \"required\"\nproxy_protocol_sources = [\"10.0.0.0/33\"]\n",
            "\"10.0.0.0/33\" is not an address or CIDR block",
        ),
    ] {
        let e = error_of(extra);
        assert!(e.contains(expected), "{extra}: {e}");
    }
    assert!(RawConfig::from_toml("proxy_protocol = \"on\"").is_err());
    let s = Settings::from_raw(raw(
        "proxy_protocol = \"required\"\nproxy_protocol_sources = [\"10.40.0.0/16\", \"::1\"]\n",
    ))
    .unwrap();
    assert_eq!(s.proxy_protocol, ProxyMode::Required);
    assert!(s.trusts_proxy("10.40.3.4".parse().unwrap()));
    assert!(s.trusts_proxy("::1".parse().unwrap()));
    assert!(!s.trusts_proxy("10.41.0.1".parse().unwrap()));
}

#[test]
fn proxy_protocol_settings_are_live() {
    let old = Settings::from_raw(raw("")).unwrap();
    let mut new = Settings::from_raw(raw(
        "proxy_protocol = \"optional\"\nproxy_protocol_sources = [\"127.0.0.1\"]\n",
    ))
    .unwrap();
    let change = SettingsChange::reconcile(&old, &mut new);
    assert_eq!(
        change.applied,
        vec!["proxy_protocol", "proxy_protocol_sources"]
    );
    assert!(change.needs_restart.is_empty());
}

#[test]
fn the_reply_deadline_is_upstream_timeout_or_a_longer_max_time_ms_plus_a_margin() {
    let s = Settings::from_raw(raw("")).unwrap();
    assert_eq!(s.upstream_timeout, Duration::from_secs(60));
    let s = Settings::from_raw(raw("upstream_timeout = \"3s\"\n")).unwrap();
    let secs = Duration::from_secs;
    assert_eq!(s.reply_deadline(None), secs(3));
    // maxTimeMS: 0 is "no limit", and a shorter one does not shorten the deadline.
    assert_eq!(s.reply_deadline(Some(0)), secs(3));
    assert_eq!(s.reply_deadline(Some(500)), secs(3));
    assert_eq!(s.reply_deadline(Some(10_000)), secs(10) + MAX_TIME_MARGIN);
    assert_eq!(s.reply_deadline(Some(u64::MAX)), secs(86_400));
    assert!(error_of("upstream_timeout = \"0s\"\n").contains("upstream_timeout must be positive"));
}
