//! The upstream connection string: `mongodb://` with a seed list or `mongodb+srv://` with a
//! DNS name, parsed by the official driver's parser (`mongodb::options::ConnectionString`) and
//! turned into an [`UpstreamConfig`].
//!
//! The option lists and the pre-check live in [`super::uri_options`]; here the driver's result
//! is mapped and the combinations the specifications forbid are refused (connection-string,
//! load-balancer, SDAM and server-selection specifications). Nothing is resolved here: an SRV
//! name stays a name until [`crate::upstream::srv`] looks it up. Errors never echo a password,
//! whether they come from the driver or from here (`uri_options::redact`).

use std::time::Duration;

use mongodb::error::ErrorKind;
use mongodb::options::{AuthMechanism, ConnectionString, Credential, HostInfo, ServerAddress, Tls};
use mongomux_auth::{Mechanism, Secret};

use super::uri_options::{prefilter, redact, secret_fragments, Prefiltered};
use super::ConfigError;
use crate::upstream::read_pref::{ReadMode, ReadPreference, TagSet};
pub use crate::upstream::UpstreamConfig;
use crate::upstream::{host_port, AwsStatic, Seeds, TopologyOptions, UpstreamAuth};

/// The smallest `heartbeatFrequencyMS` (server monitoring specification).
const MIN_HEARTBEAT: Duration = Duration::from_millis(500);
/// The idle-write period mongod uses, which `maxStalenessSeconds` must exceed with the
/// heartbeat (server selection specification).
const IDLE_WRITE_PERIOD: Duration = Duration::from_secs(10);

/// What parsing learnt beside the configuration (for `check-config`'s summary).
#[derive(Debug, Clone, Default)]
pub struct UriReport {
    /// Options present that the gateway accepts and ignores, as written.
    pub ignored: Vec<String>,
}

/// Parses an upstream connection string (connection-string specification, both schemes).
/// Errors never echo the URI's password or session token.
pub fn parse_uri(uri: &str) -> Result<UpstreamConfig, ConfigError> {
    parse_uri_report(uri).map(|(cfg, _)| cfg)
}

/// [`parse_uri`], also saying which options were ignored.
pub fn parse_uri_report(uri: &str) -> Result<(UpstreamConfig, UriReport), ConfigError> {
    build(uri).map_err(|msg| ConfigError::Invalid(redact(msg, &secret_fragments(uri))))
}

fn build(uri: &str) -> Result<(UpstreamConfig, UriReport), String> {
    let pre = prefilter(uri)?;
    let mut cs = ConnectionString::parse(&pre.driver_uri).map_err(driver_message)?;
    let seeds = seeds(&cs, &pre)?;
    let auth = auth(cs.credential.take(), cs.default_database.as_deref())?;
    let topology = topology(&cs)?;
    let (tls, tls_ca_file, tls_certificate_key_file) = match cs.tls.take() {
        Some(Tls::Enabled(o)) => (true, o.ca_file_path, o.cert_key_file_path),
        Some(Tls::Disabled) | None => (false, None, None),
    };
    if pre.allow_invalid_hostnames && !tls {
        return Err("tlsAllowInvalidHostnames needs TLS to the upstream".into());
    }
    let cfg = UpstreamConfig {
        seeds,
        topology,
        auth,
        tls,
        tls_ca_file,
        tls_certificate_key_file,
        tls_allow_invalid_hostnames: pre.allow_invalid_hostnames,
        compressors: pre.compressors,
        app_name: cs.app_name.take(),
        aws_credentials: None,
        resolver: None,
    };
    check_combinations(&cfg)?;
    Ok((
        cfg,
        UriReport {
            ignored: pre.ignored,
        },
    ))
}

/// The driver's own message, prefixed once. Callers redact it.
fn driver_message(e: mongodb::error::Error) -> String {
    let detail = match *e.kind {
        ErrorKind::InvalidArgument { message, .. } => message,
        other => other.to_string(),
    };
    format!("upstream URI: {detail}")
}

fn seeds(cs: &ConnectionString, pre: &Prefiltered) -> Result<Seeds, String> {
    match &cs.host_info {
        HostInfo::DnsRecord(host) => Ok(Seeds::Srv {
            host: host.clone(),
            service_name: cs
                .srv_service_name
                .clone()
                .unwrap_or_else(|| "mongodb".into()),
            max_hosts: cs.srv_max_hosts.filter(|n| *n > 0),
            uri_auth_source: pre.auth_source,
            uri_load_balanced: pre.load_balanced,
        }),
        HostInfo::HostIdentifiers(addresses) => addresses
            .iter()
            .map(|a| match a {
                ServerAddress::Tcp { host, port } => Ok(host_port(host, port.unwrap_or(27017))),
                #[allow(unreachable_patterns)]
                _ => Err(
                    "upstream URI: Unix domain sockets are not supported; give host:port"
                        .to_string(),
                ),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Seeds::Hosts),
        _ => Err("upstream URI: unsupported host form".into()),
    }
}

/// The credential. SCRAM without a forced mechanism when the URI names a user and no
/// mechanism; MONGODB-AWS with or without static credentials.
fn auth(credential: Option<Credential>, default_db: Option<&str>) -> Result<UpstreamAuth, String> {
    let Some(c) = credential else {
        return Ok(UpstreamAuth::None);
    };
    let properties = c.mechanism_properties.unwrap_or_default();
    let mechanism = match &c.mechanism {
        None => None,
        Some(AuthMechanism::ScramSha1) => Some(Mechanism::ScramSha1),
        Some(AuthMechanism::ScramSha256) => Some(Mechanism::ScramSha256),
        Some(AuthMechanism::MongoDbAws) => {
            return aws(c.username, c.password, c.source.as_deref(), &properties)
        }
        Some(other) => {
            return Err(format!(
                "upstream authMechanism {} is not supported; use SCRAM-SHA-256, SCRAM-SHA-1 or MONGODB-AWS",
                other.as_str()
            ))
        }
    };
    if let Some((key, _)) = properties.iter().next() {
        return Err(format!(
            "upstream URI: authMechanismProperties {key} does not apply to SCRAM"
        ));
    }
    let Some(username) = c.username else {
        return Err("upstream URI: authSource or authMechanism without a user name".into());
    };
    Ok(UpstreamAuth::Scram {
        username,
        password: Secret::new(c.password.unwrap_or_default()),
        // Connection-string specification: the URI's database, else `admin`.
        source: c
            .source
            .or_else(|| default_db.map(str::to_string))
            .unwrap_or_else(|| "admin".into()),
        mechanism,
    })
}

fn aws(
    username: Option<String>,
    password: Option<String>,
    source: Option<&str>,
    properties: &bson::Document,
) -> Result<UpstreamAuth, String> {
    if source.is_some_and(|s| s != "$external") {
        return Err("upstream MONGODB-AWS takes authSource=$external or none".into());
    }
    let mut session_token = None;
    for (key, value) in properties {
        match (key.as_str(), value.as_str()) {
            ("AWS_SESSION_TOKEN", Some(token)) => session_token = Some(Secret::new(token)),
            _ => {
                return Err(format!(
                    "upstream URI: authMechanismProperties {key} does not apply to MONGODB-AWS (only AWS_SESSION_TOKEN)"
                ))
            }
        }
    }
    let static_credentials = match (username, password) {
        (None, None) if session_token.is_none() => None,
        (Some(access_key_id), Some(secret)) => Some(AwsStatic {
            access_key_id,
            secret_access_key: Secret::new(secret),
            session_token,
        }),
        _ => {
            return Err(
                "upstream MONGODB-AWS credentials in the URI need both an access key id (user name) and a secret key (password)"
                    .into(),
            )
        }
    };
    Ok(UpstreamAuth::Aws { static_credentials })
}

fn topology(cs: &ConnectionString) -> Result<TopologyOptions, String> {
    let d = TopologyOptions::default();
    let heartbeat = cs.heartbeat_frequency.unwrap_or(d.heartbeat_frequency);
    if heartbeat < MIN_HEARTBEAT {
        return Err("upstream heartbeatFrequencyMS must be at least 500".into());
    }
    let positive = |name: &str, v: Option<Duration>, default: Duration| {
        match v {
        Some(v) if v.is_zero() => Err(format!(
            "upstream {name}=0 (no limit) is not supported: every wait of the gateway has a deadline"
        )),
        v => Ok(v.unwrap_or(default)),
    }
    };
    let read_preference = read_preference(cs.read_preference.as_ref())?;
    if let Some(staleness) = read_preference.max_staleness {
        if staleness < heartbeat + IDLE_WRITE_PERIOD {
            return Err(
                "upstream maxStalenessSeconds must be at least heartbeatFrequencyMS + 10 s".into(),
            );
        }
    }
    Ok(TopologyOptions {
        replica_set: cs.replica_set.clone(),
        direct_connection: cs.direct_connection,
        load_balanced: cs.load_balanced.unwrap_or(false),
        heartbeat_frequency: heartbeat,
        local_threshold: cs.local_threshold.unwrap_or(d.local_threshold),
        server_selection_timeout: positive(
            "serverSelectionTimeoutMS",
            cs.server_selection_timeout,
            d.server_selection_timeout,
        )?,
        connect_timeout: positive("connectTimeoutMS", cs.connect_timeout, d.connect_timeout)?,
        read_preference,
    })
}

fn read_preference(
    rp: Option<&mongodb::options::ReadPreference>,
) -> Result<ReadPreference, String> {
    use mongodb::options::ReadPreference as D;
    let Some(rp) = rp else {
        return Ok(ReadPreference::primary());
    };
    let (mode, options) = match rp {
        D::Primary => (ReadMode::Primary, None),
        D::Secondary { options } => (ReadMode::Secondary, options.as_ref()),
        D::PrimaryPreferred { options } => (ReadMode::PrimaryPreferred, options.as_ref()),
        D::SecondaryPreferred { options } => (ReadMode::SecondaryPreferred, options.as_ref()),
        D::Nearest { options } => (ReadMode::Nearest, options.as_ref()),
        _ => return Err(format!("upstream readPreference {rp} is not supported")),
    };
    let tag_sets = options
        .and_then(|o| o.tag_sets.as_ref())
        .map(|sets| {
            sets.iter()
                .map(|set| {
                    // The driver keeps a tag set as a map; sorted so equal URIs compare equal.
                    let mut tags: TagSet =
                        set.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    tags.sort();
                    tags
                })
                .collect()
        })
        .unwrap_or_default();
    let max_staleness = options.and_then(|o| o.max_staleness);
    ReadPreference::new(mode, tag_sets, max_staleness).map_err(|e| format!("upstream URI: {e}"))
}

/// Combinations the specifications forbid that the driver's parser leaves to the client.
fn check_combinations(cfg: &UpstreamConfig) -> Result<(), String> {
    let t = &cfg.topology;
    let hosts = match &cfg.seeds {
        Seeds::Hosts(h) => Some(h.len()),
        Seeds::Srv { .. } => None,
    };
    if t.direct_connection == Some(true) && hosts.is_some_and(|n| n > 1) {
        return Err("upstream directConnection=true needs exactly one host".into());
    }
    if t.load_balanced {
        if hosts.is_some_and(|n| n > 1) {
            return Err("upstream loadBalanced=true needs exactly one host".into());
        }
        if t.replica_set.is_some() {
            return Err("upstream loadBalanced=true cannot be combined with replicaSet".into());
        }
        if t.direct_connection == Some(true) {
            return Err(
                "upstream loadBalanced=true cannot be combined with directConnection=true".into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "uri_tests.rs"]
mod tests;
