//! `mongomux serve`'s flags and environment variables, and how they are layered over the TOML
//! file into one [`RawConfig`]: every setting has a flag and a `MONGOMUX_*` variable, and a
//! flag given wins over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use mongomux_gateway::settings::parse_uri;
use mongomux_gateway::{ConfigError, RawConfig};

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "MONGOMUX_CONFIG")]
    pub config: Option<PathBuf>,
    /// The TOML configuration itself, instead of a file (for containers without a shell or a
    /// writable file system; prefer the environment variable, it may hold secrets).
    #[arg(long, env = "MONGOMUX_CONFIG_TOML", hide_env_values = true)]
    pub config_toml: Option<String>,
    /// Address clients connect to [default: 127.0.0.1:27018].
    #[arg(long, env = "MONGOMUX_LISTEN")]
    listen: Option<SocketAddr>,
    /// Upstream mongodb:// or mongodb+srv:// URI (credentials may be given here or in
    /// --upstream-username / --upstream-password).
    #[arg(long, env = "MONGOMUX_UPSTREAM", hide_env_values = true)]
    upstream: Option<String>,
    /// DNS server (IP:PORT) for mongodb+srv lookups [default: the system's resolver].
    #[arg(long, env = "MONGOMUX_UPSTREAM_RESOLVER")]
    upstream_resolver: Option<SocketAddr>,
    /// Interval between lookups of a sharded mongodb+srv upstream's SRV records, for tests
    /// [default: the lowest SRV TTL, at least 60s].
    #[arg(long, env = "MONGOMUX_UPSTREAM_SRV_RESCAN_INTERVAL", value_parser = humantime::parse_duration)]
    upstream_srv_rescan_interval: Option<Duration>,
    /// Upstream user name, overriding the URI's.
    #[arg(long, env = "MONGOMUX_UPSTREAM_USERNAME")]
    upstream_username: Option<String>,
    /// Upstream password, overriding the URI's (prefer the environment variable).
    #[arg(long, env = "MONGOMUX_UPSTREAM_PASSWORD", hide_env_values = true)]
    upstream_password: Option<String>,
    /// Most pooled connections per upstream member [default: 10].
    #[arg(long, env = "MONGOMUX_POOL_SIZE")]
    pool_size: Option<usize>,
    /// Most pooled connections across all upstream members [default: no cap beyond
    /// pool-size per member].
    #[arg(long, env = "MONGOMUX_MAX_UPSTREAM_CONNECTIONS")]
    max_upstream_connections: Option<usize>,
    /// Longest wait for an upstream connection, e.g. 500ms, 5s [default: 5s].
    #[arg(long, env = "MONGOMUX_CHECKOUT_TIMEOUT", value_parser = humantime::parse_duration)]
    checkout_timeout: Option<Duration>,
    /// Longest wait for an upstream reply before its connection is closed and the client gets
    /// NetworkTimeout (89); a command's longer maxTimeMS, plus 2s, extends it [default: 60s].
    #[arg(long, env = "MONGOMUX_UPSTREAM_TIMEOUT", value_parser = humantime::parse_duration)]
    upstream_timeout: Option<Duration>,
    /// Most client connections at once [default: 10000].
    #[arg(long, env = "MONGOMUX_MAX_CLIENTS")]
    max_clients: Option<usize>,
    /// Address of the Prometheus endpoint (GET /metrics).
    #[arg(long, env = "MONGOMUX_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How long a new client has to send its first message [default: 10s].
    #[arg(long, env = "MONGOMUX_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    handshake_timeout: Option<Duration>,
    /// Idle upstream connections are closed after this [default: 60s].
    #[arg(long, env = "MONGOMUX_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Longest graceful drain on SIGTERM/SIGINT [default: 30s].
    #[arg(long, env = "MONGOMUX_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    drain_timeout: Option<Duration>,
    /// Most upstream connections pinned by open transactions [default: pool-size/2].
    #[arg(long, env = "MONGOMUX_MAX_PINNED")]
    max_pinned: Option<usize>,
    /// Source address or CIDR block allowed to connect; repeat for more [default: loopback only].
    #[arg(long = "access", env = "MONGOMUX_ACCESS", value_delimiter = ',')]
    access: Vec<String>,
    /// Permit an access entry that admits every address (0.0.0.0/0 or ::/0).
    #[arg(long, env = "MONGOMUX_ALLOW_ANY_ADDRESS")]
    allow_any_address: bool,
    /// Permit anonymous mode (no users) on a listener that is not loopback.
    #[arg(long, env = "MONGOMUX_ALLOW_ANONYMOUS_NON_LOOPBACK")]
    allow_anonymous_non_loopback: bool,
    /// Most concurrent connections from one source address; 0 = no limit [default: 0].
    #[arg(long, env = "MONGOMUX_MAX_CONNECTIONS_PER_SOURCE")]
    max_connections_per_source: Option<usize>,
    /// PROXY protocol headers from load balancers: off, optional or required [default: off].
    #[arg(long, env = "MONGOMUX_PROXY_PROTOCOL")]
    proxy_protocol: Option<mongomux_gateway::proxy::ProxyMode>,
    /// Address or CIDR block allowed to send a PROXY header (the load balancers); repeat or
    /// separate with commas. Required when --proxy-protocol is not off.
    #[arg(
        long = "proxy-protocol-sources",
        env = "MONGOMUX_PROXY_PROTOCOL_SOURCES",
        value_delimiter = ','
    )]
    proxy_protocol_sources: Vec<String>,
    /// TLS for clients: disabled, allowed or required [default: disabled].
    #[arg(long, env = "MONGOMUX_TLS_MODE")]
    tls_mode: Option<mongomux_gateway::tls::TlsMode>,
    /// Load-balanced clients (loadBalanced=true): allow, off or required [default: allow].
    #[arg(long, env = "MONGOMUX_LOAD_BALANCED")]
    load_balanced: Option<mongomux_gateway::settings::LoadBalancedMode>,
    /// Server certificate chain, PEM.
    #[arg(long, env = "MONGOMUX_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// Server private key, PEM.
    #[arg(long, env = "MONGOMUX_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// CA that client certificates must chain to (turns on client certificates).
    #[arg(long, env = "MONGOMUX_TLS_CLIENT_CA_FILE")]
    tls_client_ca_file: Option<PathBuf>,
    /// CA file to verify the upstream's certificate (implies TLS to the upstream).
    #[arg(long, env = "MONGOMUX_UPSTREAM_TLS_CA_FILE")]
    upstream_tls_ca_file: Option<PathBuf>,
    /// STS host handed to MONGODB-AWS clients [default: sts.amazonaws.com].
    #[arg(long, env = "MONGOMUX_AWS_STS_HOST")]
    aws_sts_host: Option<String>,
    /// Where STS requests go, e.g. a VPC endpoint [default: https://<aws-sts-host>].
    #[arg(long, env = "MONGOMUX_STS_ENDPOINT")]
    sts_endpoint: Option<String>,
    /// Most concurrent STS calls [default: 32].
    #[arg(long, env = "MONGOMUX_STS_MAX_CONCURRENCY")]
    sts_max_concurrency: Option<usize>,
    /// Deadline of one IAM verification, queueing included [default: 10s].
    #[arg(long, env = "MONGOMUX_STS_TIMEOUT", value_parser = humantime::parse_duration)]
    sts_timeout: Option<Duration>,
    /// Key of session namespacing, hex or base64 (at least 16 bytes); give every gateway of a
    /// deployment the same one [default: random per process].
    #[arg(long, env = "MONGOMUX_SESSION_KEY", hide_env_values = true)]
    session_key: Option<String>,
    /// Most cursors one client connection may hold open [default: 1000].
    #[arg(long, env = "MONGOMUX_MAX_CURSORS_PER_CLIENT")]
    max_cursors_per_client: Option<usize>,
    /// Most cursors one user may hold open over all its connections [default: 5000].
    #[arg(long, env = "MONGOMUX_MAX_CURSORS_PER_USER")]
    max_cursors_per_user: Option<usize>,
    /// Most logical sessions one client connection may use [default: 1000].
    #[arg(long, env = "MONGOMUX_MAX_SESSIONS_PER_CLIENT")]
    max_sessions_per_client: Option<usize>,
    /// Most logical sessions one user may hold over all its connections [default: 20000].
    #[arg(long, env = "MONGOMUX_MAX_SESSIONS_PER_USER")]
    max_sessions_per_user: Option<usize>,
    /// Bytes of large client messages and replies held at once, e.g. 268435456 [default: 256 MiB].
    #[arg(long, env = "MONGOMUX_MAX_INFLIGHT_BYTES")]
    max_inflight_bytes: Option<usize>,
    /// Largest message before a client has authenticated, when users are configured
    /// [default: 65536].
    #[arg(long, env = "MONGOMUX_MAX_UNAUTHENTICATED_MESSAGE_BYTES")]
    max_unauthenticated_message_bytes: Option<usize>,
    /// Longest a client may take to send one whole message [default: 30s].
    #[arg(long, env = "MONGOMUX_MESSAGE_TIMEOUT", value_parser = humantime::parse_duration)]
    message_timeout: Option<Duration>,
    /// Longest a client may take to read one reply [default: 30s].
    #[arg(long, env = "MONGOMUX_CLIENT_WRITE_TIMEOUT", value_parser = humantime::parse_duration)]
    client_write_timeout: Option<Duration>,
    /// An idle transaction holding a pinned upstream connection is aborted after this
    /// [default: 60s].
    #[arg(long, env = "MONGOMUX_TRANSACTION_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    transaction_idle_timeout: Option<Duration>,
    /// Operations taking at least this long are logged as slow, e.g. 100ms, 0s for all
    /// [default: 100ms].
    #[arg(long, env = "MONGOMUX_SLOW_OP_THRESHOLD", value_parser = humantime::parse_duration)]
    slow_op_threshold: Option<Duration>,
    /// SHA-256 (64 hex digits) of the bearer token for the JSON admin endpoints on the metrics
    /// listener (`mongomux admin-token` prints a token and its hash) [default: endpoints off].
    #[arg(long, env = "MONGOMUX_ADMIN_TOKEN_SHA256")]
    admin_token_sha256: Option<String>,
    /// Address of the HTTP Data API, e.g. 127.0.0.1:8080 [default: no Data API].
    #[arg(long, env = "MONGOMUX_DATA_API_LISTEN")]
    data_api_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) for the Data API's HTTPS [default: plain HTTP].
    #[arg(long, env = "MONGOMUX_DATA_API_TLS_CERT_FILE")]
    data_api_tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) for the Data API's HTTPS.
    #[arg(long, env = "MONGOMUX_DATA_API_TLS_KEY_FILE")]
    data_api_tls_key_file: Option<PathBuf>,
    /// Largest Data API request body in bytes [default: 1048576].
    #[arg(long, env = "MONGOMUX_DATA_API_MAX_BODY_BYTES")]
    data_api_max_body_bytes: Option<usize>,
    /// Most documents one Data API find or aggregate returns [default: 1000].
    #[arg(long, env = "MONGOMUX_DATA_API_MAX_FIND_LIMIT")]
    data_api_max_find_limit: Option<usize>,
    /// Log filter in RUST_LOG syntax [default: info].
    #[arg(long, env = "MONGOMUX_LOG")]
    pub log_level: Option<String>,
    /// Log lines as text, or one JSON object per line [default: text].
    #[arg(long, env = "MONGOMUX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl ServeArgs {
    /// The file with the environment and flags layered over it; checked by
    /// [`Settings::from_raw`], not here.
    pub fn into_raw(self) -> Result<RawConfig, ConfigError> {
        let mut cfg = match (&self.config, &self.config_toml) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give the configuration as a file (--config) or as text (MONGOMUX_CONFIG_TOML), not both".into(),
                ))
            }
            (Some(path), None) => RawConfig::from_file(path)?,
            (None, Some(text)) => RawConfig::from_toml(text)?,
            (None, None) => RawConfig::default(),
        };
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(uri) = self.upstream {
            cfg.upstream = Some(parse_uri(&uri)?);
        }
        if self.upstream_resolver.is_some() {
            cfg.upstream_resolver = self.upstream_resolver;
        }
        if self.upstream_srv_rescan_interval.is_some() {
            cfg.upstream_srv_rescan_interval = self.upstream_srv_rescan_interval;
        }
        if let Some(v) = self.upstream_username {
            cfg.upstream_username = Some(v);
        }
        if let Some(v) = self.upstream_password {
            cfg.upstream_password = Some(mongomux_auth::Secret::new(v));
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { cfg.$f = v; } )* };
        }
        set!(
            pool_size,
            checkout_timeout,
            max_clients,
            handshake_timeout,
            idle_timeout,
            drain_timeout,
            max_connections_per_source
        );
        set!(tls_mode, aws_sts_host, sts_max_concurrency, sts_timeout);
        set!(load_balanced);
        set!(upstream_timeout);
        set!(
            max_inflight_bytes,
            max_unauthenticated_message_bytes,
            message_timeout,
            client_write_timeout,
            transaction_idle_timeout,
            slow_op_threshold
        );
        set!(
            max_cursors_per_client,
            max_cursors_per_user,
            max_sessions_per_client,
            max_sessions_per_user
        );
        if self.admin_token_sha256.is_some() {
            cfg.admin_token_sha256 = self.admin_token_sha256;
        }
        if let Some(v) = self.session_key {
            cfg.session_key = Some(mongomux_auth::Secret::new(v));
        }
        if self.sts_endpoint.is_some() {
            cfg.sts_endpoint = self.sts_endpoint;
        }
        for (flag, field) in [
            (self.tls_cert_file, &mut cfg.tls_cert_file),
            (self.tls_key_file, &mut cfg.tls_key_file),
            (self.tls_client_ca_file, &mut cfg.tls_client_ca_file),
            (self.upstream_tls_ca_file, &mut cfg.upstream_tls_ca_file),
            (self.data_api_tls_cert_file, &mut cfg.data_api_tls_cert_file),
            (self.data_api_tls_key_file, &mut cfg.data_api_tls_key_file),
        ] {
            if flag.is_some() {
                *field = flag;
            }
        }
        if self.metrics_listen.is_some() {
            cfg.metrics_listen = self.metrics_listen;
        }
        if self.data_api_listen.is_some() {
            cfg.data_api_listen = self.data_api_listen;
        }
        set!(data_api_max_body_bytes, data_api_max_find_limit);
        if !self.access.is_empty() {
            cfg.access = self
                .access
                .iter()
                .map(|cidr| mongomux_gateway::access::AccessEntryConfig {
                    cidr: cidr.clone(),
                    expires: None,
                    comment: None,
                })
                .collect();
        }
        if let Some(v) = self.proxy_protocol {
            cfg.proxy_protocol = v;
        }
        if !self.proxy_protocol_sources.is_empty() {
            cfg.proxy_protocol_sources = self.proxy_protocol_sources;
        }
        cfg.allow_any_address |= self.allow_any_address;
        cfg.allow_anonymous_non_loopback |= self.allow_anonymous_non_loopback;
        if self.max_pinned.is_some() {
            cfg.max_pinned = self.max_pinned;
        }
        if self.max_upstream_connections.is_some() {
            cfg.max_upstream_connections = self.max_upstream_connections;
        }
        Ok(cfg)
    }
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields (`event`, `peer`, `user`, ...).
    Json,
}
