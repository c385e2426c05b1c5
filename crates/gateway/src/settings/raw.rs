//! The raw configuration: the TOML file format and its defaults, as serde reads it.
//!
//! The binary layers command-line flags and environment variables over a file by writing into
//! one [`RawConfig`]; nothing else reads settings from the environment. Secrets (the upstream
//! password, the session key) are held as [`Secret`] so that printing a `RawConfig` never shows
//! them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mongomux_auth::Secret;
use serde::Deserialize;

use super::uri::{parse_uri, UpstreamConfig};
use super::ConfigError;
use crate::access::AccessEntryConfig;
use crate::identity::users::UserConfig;
use crate::proxy::ProxyMode;
use crate::tls::TlsMode;

/// All settings of `mongomux serve` as written: one layer (file, environment, flags) or the
/// result of layering them. Nothing here is checked yet; [`super::Settings::from_raw`] does that.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// The upstream deployment, as a `mongodb://` or `mongodb+srv://` URI (credentials allowed).
    #[serde(deserialize_with = "de_upstream")]
    pub upstream: Option<UpstreamConfig>,
    /// DNS server (`host:port`) for `mongodb+srv` lookups; unset: the system's resolver.
    pub upstream_resolver: Option<SocketAddr>,
    /// Replaces the SRV rescan interval (lowest TTL, at least 60 s); for tests.
    #[serde(with = "humantime_serde")]
    pub upstream_srv_rescan_interval: Option<Duration>,
    /// Overrides the URI's user name.
    pub upstream_username: Option<String>,
    /// Overrides the URI's password.
    #[serde(deserialize_with = "de_secret")]
    pub upstream_password: Option<Secret>,
    /// Hard cap on pooled connections per upstream member.
    pub pool_size: usize,
    /// Hard cap on pooled connections across all upstream members (default: none beyond
    /// `pool_size` per member).
    pub max_upstream_connections: Option<usize>,
    /// How long a request waits for an upstream connection.
    #[serde(with = "humantime_serde")]
    pub checkout_timeout: Duration,
    /// Most client connections served at once.
    pub max_clients: usize,
    /// Prometheus endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a new client has to send its first message.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Idle upstream connections older than this are closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a drain may take before remaining clients are cut off.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Most upstream connections that open transactions may pin at once
    /// (default: half the pool, at least one).
    pub max_pinned: Option<usize>,
    /// Deadline for opening, handshaking and authenticating one upstream connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for an upstream reply (longer for a command whose `maxTimeMS` is longer);
    /// then the connection is closed and the client gets NetworkTimeout.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Source addresses allowed to connect; empty means loopback only.
    pub access: Vec<AccessEntryConfig>,
    /// Permits an access entry that admits every address.
    pub allow_any_address: bool,
    /// Permits anonymous mode (no users configured) on a listener that is not loopback.
    pub allow_anonymous_non_loopback: bool,
    /// Most concurrent client connections from one source address; 0 means no limit (the
    /// default, because a whole Lambda fleet behind one NAT gateway shares one address).
    pub max_connections_per_source: usize,
    /// PROXY protocol headers on the client listener: off, optional or required.
    pub proxy_protocol: ProxyMode,
    /// Addresses or CIDR blocks (the load balancers) allowed to send a PROXY header; required
    /// when `proxy_protocol` is not off.
    pub proxy_protocol_sources: Vec<String>,
    /// TLS for clients.
    pub tls_mode: TlsMode,
    /// Whether clients may, must or must not connect in load-balanced mode.
    pub load_balanced: LoadBalancedMode,
    /// Server certificate chain (PEM).
    pub tls_cert_file: Option<PathBuf>,
    /// Server private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// CA that client certificates must chain to; unset means no client certificates.
    pub tls_client_ca_file: Option<PathBuf>,
    /// CA file for verifying the upstream's certificate (overrides the URI's `tlsCAFile`).
    pub upstream_tls_ca_file: Option<PathBuf>,
    /// The STS host handed to MONGODB-AWS clients (`h`); they sign requests for it.
    pub aws_sts_host: String,
    /// Where STS requests are sent; default `https://<aws_sts_host>`. Set it for VPC
    /// endpoints or a local test server.
    pub sts_endpoint: Option<String>,
    /// Most STS calls at once; logins beyond it queue.
    pub sts_max_concurrency: usize,
    /// Deadline of one IAM verification, queueing included.
    #[serde(with = "humantime_serde")]
    pub sts_timeout: Duration,
    /// Gateway users; none means client authentication is off.
    pub users: Vec<UserConfig>,
    /// Key of session namespacing (hex or base64), shared by the gateways of one deployment;
    /// unset means a random key per process.
    #[serde(deserialize_with = "de_secret")]
    pub session_key: Option<Secret>,
    /// Most cursors one client connection may hold open.
    pub max_cursors_per_client: usize,
    /// Most cursors one user may hold open over all its connections to this gateway.
    pub max_cursors_per_user: usize,
    /// Most logical sessions one client connection may use.
    pub max_sessions_per_client: usize,
    /// Most logical sessions one user may hold over all its connections to this gateway.
    pub max_sessions_per_user: usize,
    /// Bytes of large client messages and replies held at once, over all connections.
    pub max_inflight_bytes: usize,
    /// Largest message a client may send before it has authenticated (when users are
    /// configured).
    pub max_unauthenticated_message_bytes: usize,
    /// How long a client may take to send one whole message, from its first byte (waiting for
    /// the in-flight budget included).
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// How long a client may take to read one reply.
    #[serde(with = "humantime_serde")]
    pub client_write_timeout: Duration,
    /// A transaction holding a pinned upstream connection with no statement for this long is
    /// aborted and its connection returned to the pool.
    #[serde(with = "humantime_serde")]
    pub transaction_idle_timeout: Duration,
    /// Operations taking this long or longer are logged (`event: slow_operation`).
    #[serde(with = "humantime_serde")]
    pub slow_op_threshold: Duration,
    /// SHA-256 (hex) of the bearer token of the JSON admin endpoints on the metrics listener
    /// (`mongomux admin-token` makes one); unset turns them off.
    pub admin_token_sha256: Option<String>,
    /// Address of the HTTP Data API; unset: no Data API.
    pub data_api_listen: Option<std::net::SocketAddr>,
    /// Certificate chain (PEM) of the Data API's HTTPS; unset: plain HTTP.
    pub data_api_tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of the Data API's HTTPS.
    pub data_api_tls_key_file: Option<PathBuf>,
    /// Largest Data API request body.
    pub data_api_max_body_bytes: usize,
    /// Most documents one Data API `find` or `aggregate` returns.
    pub data_api_max_find_limit: usize,
    /// Data API keys, each acting as a gateway user.
    pub api_keys: Vec<crate::identity::api_keys::ApiKeyConfig>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            listen: "127.0.0.1:27018".parse().expect("valid address"),
            upstream: None,
            upstream_resolver: None,
            upstream_srv_rescan_interval: None,
            upstream_username: None,
            upstream_password: None,
            pool_size: 10,
            max_upstream_connections: None,
            checkout_timeout: Duration::from_secs(5),
            max_clients: 10_000,
            metrics_listen: None,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            max_pinned: None,
            connect_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(60),
            access: Vec::new(),
            allow_any_address: false,
            allow_anonymous_non_loopback: false,
            users: Vec::new(),
            max_connections_per_source: 0,
            proxy_protocol: ProxyMode::Off,
            proxy_protocol_sources: Vec::new(),
            aws_sts_host: "sts.amazonaws.com".to_string(),
            sts_endpoint: None,
            sts_max_concurrency: 32,
            sts_timeout: Duration::from_secs(10),
            tls_mode: TlsMode::Disabled,
            load_balanced: LoadBalancedMode::Allow,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            upstream_tls_ca_file: None,
            session_key: None,
            max_cursors_per_client: 1000,
            max_cursors_per_user: 5000,
            max_sessions_per_client: 1000,
            // Above the default max_clients: a fleet of functions sharing one user, each
            // with a session or two on its one connection, stays under it.
            max_sessions_per_user: 20_000,
            max_inflight_bytes: 256 * 1024 * 1024,
            max_unauthenticated_message_bytes: 64 * 1024,
            message_timeout: Duration::from_secs(30),
            client_write_timeout: Duration::from_secs(30),
            transaction_idle_timeout: Duration::from_secs(60),
            slow_op_threshold: Duration::from_millis(100),
            admin_token_sha256: None,
            data_api_listen: None,
            data_api_tls_cert_file: None,
            data_api_tls_key_file: None,
            data_api_max_body_bytes: 1024 * 1024,
            data_api_max_find_limit: 1000,
            api_keys: Vec::new(),
        }
    }
}

impl RawConfig {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Syntax(e.message().to_string()))
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text)
    }
}

fn de_upstream<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<UpstreamConfig>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| parse_uri(&s).map_err(serde::de::Error::custom))
        .transpose()
}

fn de_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Secret::new))
}

/// Which clients the listener serves, by the `loadBalanced` field of their first `hello` (the
/// drivers' load-balancer specification). One listener serves both kinds: the handshake says
/// which a client is, so no second port (and no second target group) is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancedMode {
    /// Both kinds.
    #[default]
    Allow,
    /// Only clients that do not say `loadBalanced: true`; the others get error 354.
    Off,
    /// Only load-balanced clients; the others get error 354.
    Required,
}

impl std::str::FromStr for LoadBalancedMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(LoadBalancedMode::Allow),
            "off" => Ok(LoadBalancedMode::Off),
            "required" => Ok(LoadBalancedMode::Required),
            other => Err(format!(
                "unknown load-balanced mode {:?}: use allow, off or required",
                other.escape_debug().to_string()
            )),
        }
    }
}
