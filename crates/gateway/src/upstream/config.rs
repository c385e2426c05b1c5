//! Where and as whom the gateway connects upstream: the upstream's own settings, owned here so
//! that the connection code does not depend on the settings as a whole (the settings build this
//! value from the URI, [`crate::settings::parse_uri`]; for `mongodb+srv` the DNS records are
//! folded in by [`crate::upstream::srv`]).
//!
//! The value describes a deployment, not one server: a seed list or an SRV name, the options
//! that steer discovery and server selection, and one credential every member's connections
//! authenticate with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mongomux_auth::{Mechanism, Secret};

use super::aws_credentials::AwsCredentialSource;
use super::read_pref::ReadPreference;

/// Where the members of the upstream deployment are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seeds {
    /// `mongodb://h1:p1,h2:p2`: addresses as `host:port` (IPv6 in brackets), port defaulted.
    Hosts(Vec<String>),
    /// `mongodb+srv://host`: looked up as `_{service_name}._tcp.{host}` (SRV) and `host` (TXT).
    Srv {
        /// The name in the URI (no port).
        host: String,
        /// `srvServiceName`, `mongodb` unless set.
        service_name: String,
        /// `srvMaxHosts`: at most this many of the SRV hosts are used (unset: all; the URI's
        /// 0 is stored as unset).
        max_hosts: Option<u32>,
        /// The URI set `authSource` itself: a TXT record's `authSource` does not override it.
        uri_auth_source: bool,
        /// The URI set `loadBalanced` itself: a TXT record's `loadBalanced` does not override it.
        uri_load_balanced: bool,
    },
}

/// How the gateway authenticates its upstream connections.
#[derive(Debug, Clone, Default)]
pub enum UpstreamAuth {
    /// No credential: the upstream runs without authentication.
    #[default]
    None,
    /// SCRAM with a user name and password; the mechanism is negotiated unless forced.
    Scram {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
        /// Database the user is defined in (`authSource`, default `admin` or the URI's db).
        source: String,
        /// Mechanism forced by the URI (`authMechanism`); otherwise negotiated.
        mechanism: Option<Mechanism>,
    },
    /// MONGODB-AWS: signs an STS `GetCallerIdentity` request with AWS credentials. Credentials
    /// named in the URI (user name = access key id, password = secret key,
    /// `authMechanismProperties=AWS_SESSION_TOKEN:...`) are used as they are; otherwise the
    /// standard AWS provider chain supplies and refreshes them.
    Aws {
        /// Static credentials from the URI, if any.
        static_credentials: Option<AwsStatic>,
    },
}

impl UpstreamAuth {
    /// Whether two credentials are the same (secrets compared in plain text: this decides
    /// whether pools must reconnect, not whether a login succeeds).
    pub fn same_as(&self, other: &UpstreamAuth) -> bool {
        fn same(a: Option<&Secret>, b: Option<&Secret>) -> bool {
            a.map(Secret::expose) == b.map(Secret::expose)
        }
        match (self, other) {
            (UpstreamAuth::None, UpstreamAuth::None) => true,
            (
                UpstreamAuth::Scram {
                    username: u1,
                    password: p1,
                    source: s1,
                    mechanism: m1,
                },
                UpstreamAuth::Scram {
                    username: u2,
                    password: p2,
                    source: s2,
                    mechanism: m2,
                },
            ) => u1 == u2 && same(Some(p1), Some(p2)) && s1 == s2 && m1 == m2,
            (
                UpstreamAuth::Aws {
                    static_credentials: a,
                },
                UpstreamAuth::Aws {
                    static_credentials: b,
                },
            ) => match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    a.access_key_id == b.access_key_id
                        && same(Some(&a.secret_access_key), Some(&b.secret_access_key))
                        && same(a.session_token.as_ref(), b.session_token.as_ref())
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// AWS credentials written into the upstream URI.
#[derive(Debug, Clone)]
pub struct AwsStatic {
    /// Access key id (the URI's user name).
    pub access_key_id: String,
    /// Secret access key (the URI's password).
    pub secret_access_key: Secret,
    /// `AWS_SESSION_TOKEN` from `authMechanismProperties`.
    pub session_token: Option<Secret>,
}

/// Options that steer discovery, monitoring and server selection (the SDAM and server
/// selection specifications' knobs, as the URI sets them).
#[derive(Debug, Clone, PartialEq)]
pub struct TopologyOptions {
    /// `replicaSet`: the set name every member must report.
    pub replica_set: Option<String>,
    /// `directConnection`: talk to the one seed only, whatever it is.
    pub direct_connection: Option<bool>,
    /// `loadBalanced`: the one seed is a load balancer in front of mongos.
    pub load_balanced: bool,
    /// `heartbeatFrequencyMS` (default 10 s).
    pub heartbeat_frequency: Duration,
    /// `localThresholdMS` (default 15 ms).
    pub local_threshold: Duration,
    /// `serverSelectionTimeoutMS` (default 30 s).
    pub server_selection_timeout: Duration,
    /// `connectTimeoutMS` (default 10 s).
    pub connect_timeout: Duration,
    /// `readPreference`, `readPreferenceTags`, `maxStalenessSeconds`: the default for requests
    /// that carry no `$readPreference` of their own.
    pub read_preference: ReadPreference,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        TopologyOptions {
            replica_set: None,
            direct_connection: None,
            load_balanced: false,
            heartbeat_frequency: Duration::from_secs(10),
            local_threshold: Duration::from_millis(15),
            server_selection_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            read_preference: ReadPreference::default(),
        }
    }
}

/// Where and as whom the gateway connects upstream.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The seed list or SRV name.
    pub seeds: Seeds,
    /// Discovery and selection options.
    pub topology: TopologyOptions,
    /// The credential.
    pub auth: UpstreamAuth,
    /// Connect with TLS (`tls=true` / `ssl=true`; on by default for `mongodb+srv`).
    pub tls: bool,
    /// CA file for the upstream's certificates (`tlsCAFile`).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (`tlsCertificateKeyFile`).
    pub tls_certificate_key_file: Option<PathBuf>,
    /// `tlsAllowInvalidHostnames` (tests and private CAs only).
    pub tls_allow_invalid_hostnames: bool,
    /// `compressors` the URI names, in order of preference: offered in the `hello` of every
    /// pooled connection, which then uses the first the member accepts (upstream::compression).
    pub compressors: Vec<String>,
    /// `appName` the gateway reports in its own `hello`.
    pub app_name: Option<String>,
    /// Where MONGODB-AWS credentials come from when the URI names none (the AWS provider
    /// chain): one source, built with the settings at start-up and shared by every connection
    /// through this `Arc`, so its cache serves them all. `None` for other credentials.
    pub aws_credentials: Option<Arc<AwsCredentialSource>>,
    /// The DNS resolver member host names are looked up with when `upstream_resolver` is set
    /// (a VPC's own resolver, or a test's); otherwise the system's (`getaddrinfo`).
    pub resolver: Option<super::srv::SrvResolver>,
}

impl UpstreamConfig {
    /// A plain config for one `host:port`, no credential, no TLS (tests and defaults).
    pub fn single(address: impl Into<String>) -> Self {
        UpstreamConfig {
            seeds: Seeds::Hosts(vec![address.into()]),
            topology: TopologyOptions::default(),
            auth: UpstreamAuth::None,
            tls: false,
            tls_ca_file: None,
            tls_certificate_key_file: None,
            tls_allow_invalid_hostnames: false,
            compressors: Vec::new(),
            app_name: None,
            aws_credentials: None,
            resolver: None,
        }
    }

    /// Gives a MONGODB-AWS credential without keys in the URI its credential source, the AWS
    /// provider chain (nothing is read or fetched before the first login). The settings call
    /// this once per configuration they build; the pool keeps the start-up one.
    pub fn attach_aws_credential_source(&mut self) {
        if let UpstreamAuth::Aws {
            static_credentials: None,
        } = self.auth
        {
            self.aws_credentials = Some(Arc::new(AwsCredentialSource::default_chain()));
        }
    }

    /// Whether `other` connects to the same place, as the same user, the same way. A password
    /// change counts: the pools authenticate with it.
    /// The AWS credential source is not compared: both draw from the same environment.
    pub fn same_as(&self, other: &UpstreamConfig) -> bool {
        self.seeds == other.seeds
            && self.topology == other.topology
            && self.auth.same_as(&other.auth)
            && self.tls == other.tls
            && self.tls_ca_file == other.tls_ca_file
            && self.tls_certificate_key_file == other.tls_certificate_key_file
            && self.tls_allow_invalid_hostnames == other.tls_allow_invalid_hostnames
            && self.compressors == other.compressors
            && self.app_name == other.app_name
    }

    /// The SCRAM user name, if the credential is SCRAM.
    pub fn scram_user(&self) -> Option<(&str, &str)> {
        match &self.auth {
            UpstreamAuth::Scram {
                username, source, ..
            } => Some((username, source)),
            _ => None,
        }
    }
}

/// The host part of `host:port`, as a TLS server name is checked against.
pub fn host_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// `host:port`, with an IPv6 literal in brackets: the form of every member address.
pub fn host_port(host: &str, port: u16) -> String {
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{host}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    }
}
