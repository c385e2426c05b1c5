//! The gateway's settings: raw (as written) and validated (as used).
//!
//! [`RawConfig`] is what serde reads and what the binary layers flags and environment variables
//! over. [`Settings::from_raw`] is the one place that checks it and builds everything derived
//! from it (access list, user store, TLS configurations with their certificates read, STS
//! endpoint, effective pinning bound), so a [`Settings`] value is complete and valid by
//! construction and nothing downstream re-reads a file or re-validates a setting. A running
//! gateway holds one `Settings` behind an `ArcSwap`; [`reload`] replaces it whole.

mod raw;
pub mod reload;
mod uri;
mod uri_options;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::config_error::ConfigError;
pub use raw::{LoadBalancedMode, RawConfig};
pub use reload::SettingsChange;
pub use uri::{parse_uri, parse_uri_report, UpstreamConfig, UriReport};
pub use uri_options::IGNORED as IGNORED_URI_OPTIONS;

use mongomux_wire::MAX_MESSAGE_SIZE;

use crate::access::{AccessList, IpBlock};
use crate::identity::api_keys::ApiKeys;
use crate::identity::session_key::SessionKey;
use crate::identity::sts::StsEndpoint;
use crate::identity::users::UserStore;
use crate::proxy::ProxyMode;
use crate::tls::TlsMode;

/// Largest `pool_size`.
const MAX_POOL_SIZE: usize = 10_000;
/// Largest in-flight budget: permits are taken in u32 amounts, and beyond a few GiB the bound
/// no longer protects a gateway.
const MAX_INFLIGHT_BYTES: usize = 4 * 1024 * 1024 * 1024 - 1;
/// Smallest limit before authentication that still lets every driver's `hello` (client
/// metadata is at most 512 bytes) and a MONGODB-AWS login (a session token of a few KiB) in.
const MIN_UNAUTHENTICATED_MESSAGE: usize = 16 * 1024;
/// Largest `max_upstream_connections`.
const MAX_UPSTREAM_CONNECTIONS: usize = 100_000;
/// What a command with a `maxTimeMS` beyond `upstream_timeout` gets on top of it.
pub const MAX_TIME_MARGIN: Duration = Duration::from_secs(2);
/// The longest reply deadline whatever `maxTimeMS` says (a day), so that a huge value cannot
/// overflow a timer or hold a pooled connection for ever.
const MAX_REPLY_DEADLINE: Duration = Duration::from_secs(86_400);

/// Validated settings with everything they describe already built. Only
/// [`Settings::from_raw`] makes one (the struct is `non_exhaustive`).
#[derive(Debug)]
#[non_exhaustive]
pub struct Settings {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Prometheus endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// The upstream, with the username/password/CA overrides folded in.
    pub upstream: UpstreamConfig,
    /// TLS for upstream connections, when the upstream asks for TLS.
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    /// DNS server for `mongodb+srv` lookups; `None` is the system's resolver.
    pub upstream_resolver: Option<SocketAddr>,
    /// Replaces the SRV rescan interval of the polling specification (tests).
    pub upstream_srv_rescan_interval: Option<Duration>,
    /// Hard cap on pooled connections per upstream member.
    pub pool_size: usize,
    /// Hard cap on pooled connections across all upstream members; `None`: no cap beyond
    /// `pool_size` per member.
    pub max_upstream_connections: Option<usize>,
    /// Effective bound on pinned upstream connections (default: half the pool, at least one).
    pub max_pinned: usize,
    /// How long a request waits for an upstream connection.
    pub checkout_timeout: Duration,
    /// Deadline for opening and authenticating one upstream connection.
    pub connect_timeout: Duration,
    /// Longest wait for an upstream reply (see [`Settings::reply_deadline`]).
    pub upstream_timeout: Duration,
    /// Idle upstream connections older than this are closed.
    pub idle_timeout: Duration,
    /// Most client connections served at once.
    pub max_clients: usize,
    /// How long a new client has to send its first message.
    pub handshake_timeout: Duration,
    /// How long a drain may take.
    pub drain_timeout: Duration,
    /// Who may connect.
    pub access: AccessList,
    /// Most concurrent connections from one source; 0 means no limit.
    pub max_connections_per_source: usize,
    /// PROXY protocol headers on the client listener.
    pub proxy_protocol: ProxyMode,
    /// Who may send a PROXY header; not empty unless `proxy_protocol` is off.
    pub proxy_protocol_sources: Vec<IpBlock>,
    /// TLS for clients.
    pub tls_mode: TlsMode,
    /// Which clients the listener serves: load-balanced ones, the others, or both.
    pub load_balanced: LoadBalancedMode,
    /// The listener's TLS configuration; `Some` exactly when `tls_mode` is not disabled.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// The STS host handed to MONGODB-AWS clients.
    pub aws_sts_host: String,
    /// Where STS requests go.
    pub sts_endpoint: StsEndpoint,
    /// TLS for STS requests, when the endpoint is HTTPS.
    pub sts_tls: Option<Arc<rustls::ClientConfig>>,
    /// Most STS calls at once.
    pub sts_max_concurrency: usize,
    /// Deadline of one IAM verification.
    pub sts_timeout: Duration,
    /// Gateway users; empty means client authentication is off.
    pub users: Arc<UserStore>,
    /// The configured key of session namespacing; `None` means one is generated at start.
    pub session_key: Option<SessionKey>,
    /// Most cursors one client connection may hold open.
    pub max_cursors_per_client: usize,
    /// Most cursors one user may hold open over all its connections.
    pub max_cursors_per_user: usize,
    /// Most logical sessions one client connection may use.
    pub max_sessions_per_client: usize,
    /// Most logical sessions one user may hold over all its connections.
    pub max_sessions_per_user: usize,
    /// Bytes of large client messages and replies held at once (fixed at start).
    pub max_inflight_bytes: usize,
    /// Largest message before authentication, when users are configured.
    pub max_unauthenticated_message_bytes: usize,
    /// Deadline for receiving one whole client message.
    pub message_timeout: Duration,
    /// Deadline for a client to take one reply.
    pub client_write_timeout: Duration,
    /// Idle bound of a transaction holding a pinned connection.
    pub transaction_idle_timeout: Duration,
    /// Operations at least this long are logged.
    pub slow_op_threshold: Duration,
    /// SHA-256 of the JSON admin endpoints' bearer token; `None`: they are off.
    pub admin_token_sha256: Option<[u8; 32]>,
    /// The HTTP Data API's address; `None`: no Data API.
    pub data_api_listen: Option<SocketAddr>,
    /// The Data API's HTTPS configuration; `None`: plain HTTP.
    pub data_api_tls: Option<Arc<rustls::ServerConfig>>,
    /// Largest Data API request body.
    pub data_api_max_body_bytes: usize,
    /// Most documents one Data API `find` or `aggregate` returns.
    pub data_api_max_find_limit: usize,
    /// Data API keys.
    pub api_keys: Arc<ApiKeys>,
}

/// The admin token's hash: 64 hex digits.
fn admin_token(hex_text: Option<&str>) -> Result<Option<[u8; 32]>, ConfigError> {
    let Some(text) = hex_text else {
        return Ok(None);
    };
    let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32);
    match bytes {
        Some(b) => Ok(Some(b.try_into().expect("32 bytes"))),
        None => Err(ConfigError::Invalid(
            "admin_token_sha256 must be 64 hex digits (the SHA-256 of the token; `mongomux admin-token` prints both)".into(),
        )),
    }
}

impl Settings {
    /// Checks `raw` (all layers applied) and builds everything it describes. Certificate and
    /// key files are read here and nowhere else.
    pub fn from_raw(raw: RawConfig) -> Result<Settings, ConfigError> {
        check_numbers(&raw)?;
        check_anonymous(&raw)?;
        let (upstream, upstream_tls) = upstream(&raw)?;
        let sts_endpoint = match &raw.sts_endpoint {
            Some(url) => StsEndpoint::parse(url)?,
            None => StsEndpoint::parse(&format!("https://{}", raw.aws_sts_host))?,
        };
        let sts_tls = match sts_endpoint.https {
            true => Some(crate::tls::client_config(None)?),
            false => None,
        };
        Ok(Settings {
            proxy_protocol_sources: proxy_sources(&raw)?,
            proxy_protocol: raw.proxy_protocol,
            access: AccessList::from_config(&raw.access, raw.allow_any_address)?,
            users: Arc::new(UserStore::from_config(&raw.users)?),
            api_keys: Arc::new(ApiKeys::from_config(
                &raw.api_keys,
                &UserStore::from_config(&raw.users)?,
            )?),
            data_api_tls: data_api_tls(&raw)?,
            tls_server: tls_server(&raw)?,
            max_pinned: raw.max_pinned.unwrap_or((raw.pool_size / 2).max(1)),
            listen: raw.listen,
            metrics_listen: raw.metrics_listen,
            upstream,
            upstream_tls,
            upstream_resolver: raw.upstream_resolver,
            upstream_srv_rescan_interval: raw.upstream_srv_rescan_interval,
            pool_size: raw.pool_size,
            max_upstream_connections: raw.max_upstream_connections,
            checkout_timeout: raw.checkout_timeout,
            connect_timeout: raw.connect_timeout,
            upstream_timeout: raw.upstream_timeout,
            idle_timeout: raw.idle_timeout,
            max_clients: raw.max_clients,
            handshake_timeout: raw.handshake_timeout,
            drain_timeout: raw.drain_timeout,
            max_connections_per_source: raw.max_connections_per_source,
            tls_mode: raw.tls_mode,
            load_balanced: raw.load_balanced,
            aws_sts_host: raw.aws_sts_host,
            sts_endpoint,
            sts_tls,
            sts_max_concurrency: raw.sts_max_concurrency,
            sts_timeout: raw.sts_timeout,
            session_key: raw
                .session_key
                .as_ref()
                .map(SessionKey::parse)
                .transpose()?,
            max_cursors_per_client: raw.max_cursors_per_client,
            max_cursors_per_user: raw.max_cursors_per_user,
            max_sessions_per_client: raw.max_sessions_per_client,
            max_sessions_per_user: raw.max_sessions_per_user,
            max_inflight_bytes: raw.max_inflight_bytes,
            max_unauthenticated_message_bytes: raw.max_unauthenticated_message_bytes,
            message_timeout: raw.message_timeout,
            client_write_timeout: raw.client_write_timeout,
            transaction_idle_timeout: raw.transaction_idle_timeout,
            slow_op_threshold: raw.slow_op_threshold,
            admin_token_sha256: admin_token(raw.admin_token_sha256.as_deref())?,
            data_api_listen: raw.data_api_listen,
            data_api_max_body_bytes: raw.data_api_max_body_bytes,
            data_api_max_find_limit: raw.data_api_max_find_limit,
        })
    }

    /// The bounds on open cursors in force.
    pub fn cursor_limits(&self) -> crate::route::CursorLimits {
        crate::route::CursorLimits {
            per_client: self.max_cursors_per_client,
            per_user: self.max_cursors_per_user,
        }
    }

    /// How long to wait for the reply to a request whose `maxTimeMS` is `max_time_ms`:
    /// `upstream_timeout`, or, for a command allowed to run longer, its `maxTimeMS` plus
    /// [`MAX_TIME_MARGIN`] (the server checks `maxTimeMS` only now and then, and the reply
    /// still has to travel). `maxTimeMS: 0` means no limit, which gets the plain timeout.
    pub fn reply_deadline(&self, max_time_ms: Option<u64>) -> Duration {
        let asked = max_time_ms.map_or(Duration::ZERO, Duration::from_millis);
        self.upstream_timeout
            .max(asked.saturating_add(MAX_TIME_MARGIN))
            .min(MAX_REPLY_DEADLINE)
    }

    /// Whether `ip` may send a PROXY protocol header (never with `proxy_protocol` off).
    pub fn trusts_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.proxy_protocol != ProxyMode::Off
            && self.proxy_protocol_sources.iter().any(|b| b.contains(ip))
    }

    /// Parses and checks a TOML document with no other layer (tests, embedding).
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_raw(RawConfig::from_toml(text)?)
    }
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Without users every client is served as the upstream account, with no authorization: that
/// mode is for a gateway reachable only from its own host. On any other listener it must be
/// asked for explicitly, or a configuration that lost its users would open the database.
fn check_anonymous(raw: &RawConfig) -> Result<(), ConfigError> {
    if raw.users.is_empty() && !raw.listen.ip().is_loopback() && !raw.allow_anonymous_non_loopback {
        return Err(invalid(format!(
            "no users are configured (anonymous mode: every client acts as the upstream account) and listen = {} is not a loopback address; configure users, listen on loopback, or set allow_anonymous_non_loopback = true (--allow-anonymous-non-loopback) if that is really intended",
            raw.listen
        )));
    }
    Ok(())
}

/// Whether these settings serve anonymous clients on a listener other than loopback (allowed
/// only with `allow_anonymous_non_loopback`; the binary warns about it at start).
pub fn anonymous_beyond_loopback(settings: &Settings) -> bool {
    !settings.users.auth_required() && !settings.listen.ip().is_loopback()
}

/// The PROXY protocol sources: required when the protocol is on (an empty list would refuse
/// every header, so `required` would refuse everyone), and never every address, which would
/// let anyone choose the address the access list sees.
fn proxy_sources(raw: &RawConfig) -> Result<Vec<IpBlock>, ConfigError> {
    let blocks = raw
        .proxy_protocol_sources
        .iter()
        .map(|s| {
            IpBlock::parse(s).map_err(|_| {
                invalid(format!(
                    "proxy_protocol_sources: {s:?} is not an address or CIDR block"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if raw.proxy_protocol != ProxyMode::Off && blocks.is_empty() {
        return Err(invalid(
            "proxy_protocol is on but proxy_protocol_sources is empty: list the load balancers' addresses (e.g. the VPC CIDR) that may send PROXY headers",
        ));
    }
    if crate::access::union_admits_any(&blocks) {
        return Err(invalid(
            "proxy_protocol_sources admits every address: anyone could then choose the client address the access list sees; list the load balancers' addresses only",
        ));
    }
    Ok(blocks)
}

/// Bounds on counts and durations.
fn check_numbers(raw: &RawConfig) -> Result<(), ConfigError> {
    if raw.pool_size == 0 || raw.pool_size > MAX_POOL_SIZE {
        return Err(invalid("pool_size must be between 1 and 10000"));
    }
    if raw.max_clients == 0 {
        return Err(invalid("max_clients must be at least 1"));
    }
    if let Some(t) = raw.max_upstream_connections {
        if t == 0 || t > MAX_UPSTREAM_CONNECTIONS {
            return Err(invalid(
                "max_upstream_connections must be between 1 and 100000",
            ));
        }
    }
    if let Some(p) = raw.max_pinned {
        if p == 0 || p > raw.pool_size {
            return Err(invalid("max_pinned must be between 1 and pool_size"));
        }
    }
    if !(1024..=16 * 1024 * 1024).contains(&raw.data_api_max_body_bytes) {
        return Err(invalid(
            "data_api_max_body_bytes must be between 1024 and 16777216",
        ));
    }
    if !(1..=50_000).contains(&raw.data_api_max_find_limit) {
        return Err(invalid(
            "data_api_max_find_limit must be between 1 and 50000",
        ));
    }
    if raw.data_api_listen.is_some() && raw.users.is_empty() {
        return Err(invalid(
            "data_api_listen needs users: every Data API request acts as a gateway user (an API key's, or an IAM principal's)",
        ));
    }
    for (name, n) in [
        ("max_cursors_per_client", raw.max_cursors_per_client),
        ("max_cursors_per_user", raw.max_cursors_per_user),
        ("max_sessions_per_client", raw.max_sessions_per_client),
        ("max_sessions_per_user", raw.max_sessions_per_user),
    ] {
        if n == 0 {
            return Err(invalid(format!("{name} must be at least 1")));
        }
    }
    if raw.max_inflight_bytes < MAX_MESSAGE_SIZE || raw.max_inflight_bytes > MAX_INFLIGHT_BYTES {
        return Err(invalid(format!(
            "max_inflight_bytes must be between {MAX_MESSAGE_SIZE} (one message of the largest size) and {MAX_INFLIGHT_BYTES}"
        )));
    }
    if raw.max_unauthenticated_message_bytes < MIN_UNAUTHENTICATED_MESSAGE
        || raw.max_unauthenticated_message_bytes > MAX_MESSAGE_SIZE
    {
        return Err(invalid(format!(
            "max_unauthenticated_message_bytes must be between {MIN_UNAUTHENTICATED_MESSAGE} and {MAX_MESSAGE_SIZE}"
        )));
    }
    if raw.sts_max_concurrency == 0 {
        return Err(invalid("sts_max_concurrency must be at least 1"));
    }
    for (name, d) in [
        ("checkout_timeout", raw.checkout_timeout),
        ("handshake_timeout", raw.handshake_timeout),
        ("idle_timeout", raw.idle_timeout),
        ("connect_timeout", raw.connect_timeout),
        ("message_timeout", raw.message_timeout),
        ("client_write_timeout", raw.client_write_timeout),
        ("transaction_idle_timeout", raw.transaction_idle_timeout),
        ("upstream_timeout", raw.upstream_timeout),
        (
            "upstream_srv_rescan_interval",
            raw.upstream_srv_rescan_interval.unwrap_or(Duration::MAX),
        ),
    ] {
        if d.is_zero() {
            return Err(invalid(format!("{name} must be positive")));
        }
    }
    Ok(())
}

type UpstreamParts = (UpstreamConfig, Option<Arc<rustls::ClientConfig>>);

/// The upstream with its overrides folded in, and its TLS configuration.
fn upstream(raw: &RawConfig) -> Result<UpstreamParts, ConfigError> {
    let mut upstream = raw
        .upstream
        .clone()
        .ok_or_else(|| invalid("an upstream URI is required"))?;
    apply_credential_overrides(&mut upstream, raw)?;
    upstream.attach_aws_credential_source();
    if let Some(ca) = &raw.upstream_tls_ca_file {
        upstream.tls_ca_file = Some(ca.clone());
        upstream.tls = true;
    }
    let tls = match upstream.tls {
        true => {
            // Checked here so that connecting later cannot fail on configuration.
            for host in seed_hosts(&upstream) {
                rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| {
                    invalid(format!(
                        "upstream host {host:?} is not a valid TLS server name"
                    ))
                })?;
            }
            Some(crate::tls::upstream_client_config(
                upstream.tls_ca_file.as_ref(),
                upstream.tls_certificate_key_file.as_deref(),
                upstream.tls_allow_invalid_hostnames,
            )?)
        }
        false => None,
    };
    Ok((upstream, tls))
}

/// The host names of the seeds (for SRV, the name looked up).
fn seed_hosts(upstream: &UpstreamConfig) -> Vec<&str> {
    match &upstream.seeds {
        crate::upstream::Seeds::Hosts(hosts) => {
            hosts.iter().map(|h| crate::upstream::host_of(h)).collect()
        }
        crate::upstream::Seeds::Srv { host, .. } => vec![host.as_str()],
    }
}

/// `upstream_username` / `upstream_password` (files and environment keep the password out of
/// the URI) override the URI's credential.
fn apply_credential_overrides(
    upstream: &mut UpstreamConfig,
    raw: &RawConfig,
) -> Result<(), ConfigError> {
    use crate::upstream::UpstreamAuth;
    if raw.upstream_username.is_none() && raw.upstream_password.is_none() {
        return Ok(());
    }
    match &mut upstream.auth {
        UpstreamAuth::Aws { .. } => Err(invalid(
            "upstream_username/upstream_password do not apply to MONGODB-AWS; use AWS credentials",
        )),
        UpstreamAuth::Scram {
            username, password, ..
        } => {
            if let Some(user) = &raw.upstream_username {
                *username = user.clone();
            }
            if let Some(pass) = &raw.upstream_password {
                *password = pass.clone();
            }
            Ok(())
        }
        UpstreamAuth::None => {
            let Some(user) = &raw.upstream_username else {
                return Err(invalid(
                    "an upstream password was given without a user name",
                ));
            };
            upstream.auth = UpstreamAuth::Scram {
                username: user.clone(),
                password: raw.upstream_password.clone().unwrap_or_else(|| "".into()),
                source: "admin".into(),
                mechanism: None,
            };
            Ok(())
        }
    }
}

/// The listener's TLS configuration, when TLS is enabled.
/// The Data API's HTTPS: both files, or neither.
fn data_api_tls(raw: &RawConfig) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
    match (&raw.data_api_tls_cert_file, &raw.data_api_tls_key_file) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            let mut cfg = (*crate::tls::server_config(cert, key, None)?).clone();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Some(Arc::new(cfg)))
        }
        _ => Err(invalid(
            "data_api_tls_cert_file and data_api_tls_key_file go together",
        )),
    }
}

fn tls_server(raw: &RawConfig) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
    if raw.tls_mode == TlsMode::Disabled {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&raw.tls_cert_file, &raw.tls_key_file) else {
        return Err(invalid(
            "tls_mode allowed/required needs tls_cert_file and tls_key_file",
        ));
    };
    crate::tls::server_config(cert, key, raw.tls_client_ca_file.as_deref()).map(Some)
}

#[cfg(test)]
mod tests;
