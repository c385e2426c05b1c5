//! Where and as whom the gateway connects upstream: the upstream's own settings, owned here so
//! that the connection code does not depend on the settings as a whole (the settings build this
//! value from the URI, [`crate::settings::parse_uri`]).

use std::path::PathBuf;

use mongomux_auth::{Mechanism, Secret};

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

impl UpstreamConfig {
    /// Whether `other` connects to the same place, as the same user, the same way. A password
    /// change counts: the pool authenticates with it.
    pub fn same_as(&self, other: &UpstreamConfig) -> bool {
        self.address == other.address
            && self.username == other.username
            && self.password.as_ref().map(Secret::expose)
                == other.password.as_ref().map(Secret::expose)
            && self.auth_source == other.auth_source
            && self.mechanism == other.mechanism
            && self.tls == other.tls
            && self.tls_ca_file == other.tls_ca_file
    }

    /// The host part of the address, as a TLS server name is checked against.
    pub fn host(&self) -> &str {
        self.address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
    }
}
