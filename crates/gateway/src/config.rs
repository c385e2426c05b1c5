//! Gateway configuration: the TOML file format, defaults, validation, and the upstream URI.
//!
//! Owns the meaning of every setting. The binary layers command-line flags and environment
//! variables over a file through [`Config::apply`]; nothing else reads settings from the
//! environment. Secrets (the upstream password) are held as [`Secret`] so that printing a
//! `Config` never shows them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mongomux_auth::{Mechanism, Secret};
use serde::Deserialize;

use crate::access::{AccessEntryConfig, AccessList};
use crate::error::GatewayError;
use crate::tls::TlsMode;

/// All settings of `mongomux serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// The upstream deployment, as a `mongodb://` URI (credentials allowed).
    #[serde(deserialize_with = "de_upstream")]
    pub upstream: Option<UpstreamConfig>,
    /// Overrides the URI's user name.
    pub upstream_username: Option<String>,
    /// Overrides the URI's password.
    #[serde(deserialize_with = "de_secret")]
    pub upstream_password: Option<Secret>,
    /// Hard cap on upstream connections.
    pub pool_size: usize,
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
    /// Source addresses allowed to connect; empty means loopback only.
    pub access: Vec<AccessEntryConfig>,
    /// Permits an access entry that admits every address.
    pub allow_any_address: bool,
    /// Most concurrent client connections from one source address; 0 means no limit (the
    /// default, because a whole Lambda fleet behind one NAT gateway shares one address).
    pub max_connections_per_source: usize,
    /// TLS for clients.
    pub tls_mode: TlsMode,
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
    pub users: Vec<crate::users::UserConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:27018".parse().expect("valid address"),
            upstream: None,
            upstream_username: None,
            upstream_password: None,
            pool_size: 10,
            checkout_timeout: Duration::from_secs(5),
            max_clients: 10_000,
            metrics_listen: None,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            max_pinned: None,
            connect_timeout: Duration::from_secs(10),
            access: Vec::new(),
            allow_any_address: false,
            users: Vec::new(),
            max_connections_per_source: 0,
            aws_sts_host: "sts.amazonaws.com".to_string(),
            sts_endpoint: None,
            sts_max_concurrency: 32,
            sts_timeout: Duration::from_secs(10),
            tls_mode: TlsMode::Disabled,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            upstream_tls_ca_file: None,
        }
    }
}

/// Where and as whom the gateway connects upstream.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `host:port`.
    pub address: String,
    /// User name for SCRAM, if any.
    pub username: Option<String>,
    /// Password for SCRAM, if any.
    pub password: Option<Secret>,
    /// Database the user is defined in.
    pub auth_source: String,
    /// Mechanism forced by the URI; otherwise negotiated.
    pub mechanism: Option<Mechanism>,
    /// Connect with TLS (`tls=true` / `ssl=true`).
    pub tls: bool,
    /// CA file for the upstream's certificate (`tlsCAFile`).
    pub tls_ca_file: Option<PathBuf>,
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Config, GatewayError> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| GatewayError::Config(e.message().to_string()))?;
        Ok(cfg)
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, GatewayError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GatewayError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// Folds the username/password overrides into the upstream settings and checks that the
    /// whole makes sense. Call once after all layers are applied.
    pub fn finish(mut self) -> Result<Config, GatewayError> {
        let mut upstream = self
            .upstream
            .take()
            .ok_or_else(|| GatewayError::Config("an upstream URI is required".into()))?;
        if let Some(user) = self.upstream_username.take() {
            upstream.username = Some(user);
        }
        if let Some(pass) = self.upstream_password.take() {
            upstream.password = Some(pass);
        }
        if let Some(ca) = self.upstream_tls_ca_file.take() {
            upstream.tls_ca_file = Some(ca);
            upstream.tls = true;
        }
        if upstream.tls {
            crate::tls::client_config(upstream.tls_ca_file.as_ref())?;
        }
        if upstream.password.is_some() && upstream.username.is_none() {
            return Err(GatewayError::Config(
                "an upstream password was given without a user name".into(),
            ));
        }
        self.upstream = Some(upstream);
        if self.pool_size == 0 || self.pool_size > 10_000 {
            return Err(GatewayError::Config(
                "pool_size must be between 1 and 10000".into(),
            ));
        }
        if self.max_clients == 0 {
            return Err(GatewayError::Config(
                "max_clients must be at least 1".into(),
            ));
        }
        if let Some(p) = self.max_pinned {
            if p == 0 || p > self.pool_size {
                return Err(GatewayError::Config(
                    "max_pinned must be between 1 and pool_size".into(),
                ));
            }
        }
        self.access_list()?;
        self.tls_server()?;
        self.sts_endpoint()?;
        if self.sts_max_concurrency == 0 {
            return Err(GatewayError::Config(
                "sts_max_concurrency must be at least 1".into(),
            ));
        }
        crate::users::UserStore::from_config(&self.users)?;
        for (name, d) in [
            ("checkout_timeout", self.checkout_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if d.is_zero() {
                return Err(GatewayError::Config(format!("{name} must be positive")));
            }
        }
        Ok(self)
    }

    /// The listener's TLS configuration, when TLS is enabled.
    pub fn tls_server(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, GatewayError> {
        if self.tls_mode == TlsMode::Disabled {
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else {
            return Err(GatewayError::Config(
                "tls_mode allowed/required needs tls_cert_file and tls_key_file".into(),
            ));
        };
        crate::tls::server_config(cert, key, self.tls_client_ca_file.as_deref()).map(Some)
    }

    /// Where STS requests go.
    pub fn sts_endpoint(&self) -> Result<crate::sts::StsEndpoint, GatewayError> {
        match &self.sts_endpoint {
            Some(url) => crate::sts::StsEndpoint::parse(url),
            None => crate::sts::StsEndpoint::parse(&format!("https://{}", self.aws_sts_host)),
        }
    }

    /// The access list these settings describe.
    pub fn access_list(&self) -> Result<AccessList, GatewayError> {
        AccessList::from_config(&self.access, self.allow_any_address)
    }

    /// The effective pinning bound.
    pub fn pinned_limit(&self) -> usize {
        self.max_pinned
            .unwrap_or_else(|| (self.pool_size / 2).max(1))
    }

    /// The upstream settings; present once [`Config::finish`] succeeded.
    pub fn upstream(&self) -> &UpstreamConfig {
        self.upstream
            .as_ref()
            .expect("Config::finish checks that an upstream is set")
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

/// Parses `mongodb://[user[:pass]@]host[:port][/db][?options]` (connection-string spec).
/// Errors never echo the URI, since it may carry a password.
pub fn parse_uri(uri: &str) -> Result<UpstreamConfig, GatewayError> {
    let rest = uri
        .strip_prefix("mongodb://")
        .ok_or_else(|| GatewayError::Config("upstream URI must start with mongodb://".into()))?;
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        Some(u) => {
            let (user, pass) = match u.split_once(':') {
                Some((a, b)) => (a, Some(b)),
                None => (u, None),
            };
            (
                Some(percent_decode(user)?),
                pass.map(|p| percent_decode(p).map(Secret::new))
                    .transpose()?,
            )
        }
        None => (None, None),
    };
    if hosts.is_empty() {
        return Err(GatewayError::Config("upstream URI has no host".into()));
    }
    if hosts.contains(',') {
        return Err(GatewayError::Config(
            "upstream URI lists several hosts; mongomux connects to one upstream address (a mongos or a load balancer)".into(),
        ));
    }
    let address = if hosts.starts_with('[')
        || hosts
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hosts.to_string()
    } else {
        format!("{hosts}:27017")
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, q),
        None => (tail, ""),
    };
    let default_db = path.trim_start_matches('/');
    let mut auth_source = None;
    let mut mechanism = None;
    let mut tls = false;
    let mut tls_ca_file = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k.to_ascii_lowercase().as_str() {
            "authsource" => auth_source = Some(percent_decode(v)?),
            "authmechanism" => {
                mechanism = Some(Mechanism::from_name(v).ok_or_else(|| {
                    GatewayError::Config(format!(
                        "unsupported upstream authMechanism {v:?}; use SCRAM-SHA-256 or SCRAM-SHA-1"
                    ))
                })?)
            }
            "tls" | "ssl" => tls = v.eq_ignore_ascii_case("true"),
            "tlscafile" => tls_ca_file = Some(PathBuf::from(percent_decode(v)?)),
            // Options that describe client behaviour the gateway does not need.
            "directconnection"
            | "appname"
            | "retrywrites"
            | "retryreads"
            | "w"
            | "maxpoolsize"
            | "serverselectiontimeoutms"
            | "connecttimeoutms" => {}
            other => {
                return Err(GatewayError::Config(format!(
                    "unsupported upstream URI option {other:?}"
                )))
            }
        }
    }
    let auth_source = auth_source.unwrap_or_else(|| {
        if default_db.is_empty() {
            "admin".to_string()
        } else {
            default_db.to_string()
        }
    });
    Ok(UpstreamConfig {
        address,
        username,
        password,
        auth_source,
        mechanism,
        tls: tls || tls_ca_file.is_some(),
        tls_ca_file,
    })
}

fn percent_decode(s: &str) -> Result<String, GatewayError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    GatewayError::Config("bad percent-encoding in upstream URI".into())
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| GatewayError::Config("upstream URI is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_with_credentials() {
        let u = parse_uri("mongodb://us%40er:p%3Ass@127.0.0.1:27017/app?authSource=admin&authMechanism=SCRAM-SHA-1").unwrap();
        assert_eq!(u.address, "127.0.0.1:27017");
        assert_eq!(u.username.as_deref(), Some("us@er"));
        assert_eq!(u.password.as_ref().unwrap().expose(), "p:ss");
        assert_eq!(u.auth_source, "admin");
        assert_eq!(u.mechanism, Some(Mechanism::ScramSha1));
        assert!(!format!("{u:?}").contains("p:ss"));
    }

    #[test]
    fn uri_defaults_and_errors() {
        let u = parse_uri("mongodb://db.example").unwrap();
        assert_eq!(u.address, "db.example:27017");
        assert_eq!(u.auth_source, "admin");
        let u = parse_uri("mongodb://h:1/app").unwrap();
        assert_eq!(u.auth_source, "app");
        assert!(parse_uri("http://h").is_err());
        assert!(parse_uri("mongodb://a,b").is_err());
        let err = parse_uri("mongodb://u:secretpw@h/?bogus=1").unwrap_err();
        assert!(!err.to_string().contains("secretpw"));
    }

    #[test]
    fn toml_and_validation() {
        let cfg = Config::from_toml(
            "listen = \"127.0.0.1:0\"\nupstream = \"mongodb://u:pw@127.0.0.1:27017\"\npool_size = 4\ncheckout_timeout = \"250ms\"\n",
        )
        .unwrap()
        .finish()
        .unwrap();
        assert_eq!(cfg.pool_size, 4);
        assert_eq!(cfg.checkout_timeout, Duration::from_millis(250));
        assert_eq!(cfg.pinned_limit(), 2);
        assert!(!format!("{cfg:?}").contains("pw@"));
        assert!(Config::from_toml("bogus = 1").is_err());
        assert!(Config::default().finish().is_err());
        let mut c = Config::from_toml("upstream = \"mongodb://h\"").unwrap();
        c.pool_size = 0;
        assert!(c.finish().is_err());
    }
}
