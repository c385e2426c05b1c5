//! The initial-DNS-seedlist-discovery and SRV-polling rules, with no network: which SRV
//! targets a name may return, what a TXT record may say and how it folds into the URI's
//! options, the `srvMaxHosts` subset, and the rescan interval.
//!
//! Names are compared as DNS names (`hickory_proto::rr::Name`: labels, case-insensitive), never
//! as strings.

use std::time::Duration;

use hickory_resolver::proto::rr::Name;
use rand::seq::SliceRandom;
use url::form_urlencoded;

use super::SrvError;
use crate::upstream::{Seeds, UpstreamAuth, UpstreamConfig};

/// The shortest rescan interval the polling specification allows.
pub const MIN_RESCAN: Duration = Duration::from_secs(60);

/// The SRV name to look up, `_{service}._tcp.{host}`, and the host as a DNS name.
pub fn srv_query(host: &str, service_name: &str) -> Result<(Name, Name), SrvError> {
    let invalid = |reason: String| SrvError::Invalid {
        name: host.to_string(),
        reason,
    };
    // RFC 6335 section 5.1, with the length the seedlist specification allows.
    let service_ok = !service_name.is_empty()
        && service_name.len() <= 62
        && service_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && service_name.bytes().any(|b| b.is_ascii_alphabetic());
    if !service_ok {
        return Err(invalid(format!(
            "srvServiceName {service_name:?} is not a valid service name"
        )));
    }
    let mut name = Name::from_ascii(host).map_err(|e| invalid(format!("not a DNS name: {e}")))?;
    name.set_fqdn(true);
    let query = name
        .prepend_label("_tcp")
        .and_then(|n| n.prepend_label(format!("_{service_name}")))
        .map_err(|e| invalid(format!("cannot form the SRV name: {e}")))?;
    Ok((query, name))
}

/// Whether `target` may be a member of `host`'s deployment: it lies in `host`'s
/// `{domainname}` (the host minus its first label when it has three or more labels, else the
/// host itself) and has more labels than that domain.
pub fn target_allowed(host: &Name, target: &Name) -> bool {
    let domain = match host.num_labels() >= 3 {
        true => host.base_name(),
        false => host.clone(),
    };
    domain.zone_of(target) && target.num_labels() > domain.num_labels()
}

/// `target:port`, lower-case, without the root dot.
pub fn member_address(target: &Name, port: u16) -> String {
    let mut t = target.to_lowercase();
    t.set_fqdn(false);
    crate::upstream::host_port(&t.to_ascii(), port)
}

/// Options a TXT record carried (connection-string syntax).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxtOptions {
    /// `authSource`.
    pub auth_source: Option<String>,
    /// `replicaSet`.
    pub replica_set: Option<String>,
    /// `loadBalanced`.
    pub load_balanced: Option<bool>,
}

impl TxtOptions {
    /// The options as `key=value` pairs, for a summary.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(v) = &self.auth_source {
            out.push(("authSource", v.clone()));
        }
        if let Some(v) = &self.replica_set {
            out.push(("replicaSet", v.clone()));
        }
        if let Some(v) = self.load_balanced {
            out.push(("loadBalanced", v.to_string()));
        }
        out
    }
}

/// Reads the TXT records of `host`: none, or exactly one whose strings, concatenated, are
/// options; only `authSource`, `replicaSet` and `loadBalanced` are allowed.
pub fn parse_txt(host: &str, records: &[Vec<Vec<u8>>]) -> Result<TxtOptions, SrvError> {
    let invalid = |reason: String| SrvError::Invalid {
        name: host.to_string(),
        reason: format!("TXT record: {reason}"),
    };
    let record = match records {
        [] => return Ok(TxtOptions::default()),
        [one] => one.concat(),
        _ => {
            return Err(invalid(format!(
                "{} records found; at most one is allowed",
                records.len()
            )))
        }
    };
    let mut out = TxtOptions::default();
    let mut seen = Vec::new();
    for (key, value) in form_urlencoded::parse(&record) {
        let lc = key.to_ascii_lowercase();
        if seen.contains(&lc) {
            return Err(invalid(format!("option {key} is given twice")));
        }
        seen.push(lc.clone());
        match lc.as_str() {
            "authsource" if !value.is_empty() => out.auth_source = Some(value.into_owned()),
            "replicaset" if !value.is_empty() => out.replica_set = Some(value.into_owned()),
            "loadbalanced" => {
                out.load_balanced = Some(match value.as_ref() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(invalid("loadBalanced must be true or false".into())),
                })
            }
            "authsource" | "replicaset" => return Err(invalid(format!("option {key} is empty"))),
            _ => {
                return Err(invalid(format!(
                    "option {key} is not allowed (only authSource, replicaSet, loadBalanced)"
                )))
            }
        }
    }
    Ok(out)
}

/// The configuration with the TXT options folded in (the URI's own options win), checked
/// against the rules that need both: `srvMaxHosts` with `replicaSet` or `loadBalanced`, and
/// `loadBalanced` with several hosts or a replica set.
pub fn fold_txt(
    cfg: &UpstreamConfig,
    txt: &TxtOptions,
    hosts_found: usize,
) -> Result<UpstreamConfig, SrvError> {
    let Seeds::Srv {
        host,
        max_hosts,
        uri_auth_source,
        uri_load_balanced,
        ..
    } = &cfg.seeds
    else {
        return Ok(cfg.clone());
    };
    let invalid = |reason: &str| SrvError::Invalid {
        name: host.clone(),
        reason: reason.to_string(),
    };
    let mut out = cfg.clone();
    if out.topology.replica_set.is_none() {
        out.topology.replica_set = txt.replica_set.clone();
    }
    if let (false, Some(lb)) = (uri_load_balanced, txt.load_balanced) {
        out.topology.load_balanced = lb;
    }
    if let (false, Some(source), UpstreamAuth::Scram { source: s, .. }) =
        (uri_auth_source, &txt.auth_source, &mut out.auth)
    {
        // MONGODB-AWS always authenticates against `$external`, whatever the TXT says.
        *s = source.clone();
    }
    let t = &out.topology;
    if max_hosts.is_some() && t.replica_set.is_some() {
        return Err(invalid(
            "srvMaxHosts cannot be combined with replicaSet (from the URI or the TXT record)",
        ));
    }
    if t.load_balanced {
        if max_hosts.is_some() {
            return Err(invalid(
                "srvMaxHosts cannot be combined with loadBalanced=true",
            ));
        }
        if hosts_found > 1 {
            return Err(invalid("loadBalanced=true needs exactly one SRV record"));
        }
        if t.replica_set.is_some() {
            return Err(invalid(
                "loadBalanced=true cannot be combined with replicaSet",
            ));
        }
    }
    Ok(out)
}

/// `srvMaxHosts` of the initial lookup: all hosts, or that many chosen at random
/// (Fisher-Yates, as the specification recommends).
pub fn choose_hosts(mut hosts: Vec<String>, max_hosts: Option<u32>) -> Vec<String> {
    match max_hosts {
        Some(n) if (n as usize) < hosts.len() => {
            let (chosen, _) = hosts.partial_shuffle(&mut rand::thread_rng(), n as usize);
            chosen.to_vec()
        }
        _ => hosts,
    }
}

/// The members after a rescan (polling specification): hosts no longer found are dropped,
/// hosts still found are kept as they are, and new hosts are added (at random, up to
/// `srvMaxHosts` members, when it is set).
pub fn apply_rescan(current: &[String], found: &[String], max_hosts: Option<u32>) -> Vec<String> {
    let mut kept: Vec<String> = current
        .iter()
        .filter(|h| found.contains(h))
        .cloned()
        .collect();
    let mut new: Vec<String> = found
        .iter()
        .filter(|h| !kept.contains(h))
        .cloned()
        .collect();
    let room = match max_hosts {
        Some(n) => (n as usize).saturating_sub(kept.len()),
        None => new.len(),
    };
    new.shuffle(&mut rand::thread_rng());
    kept.extend(new.into_iter().take(room));
    kept
}

/// How a scan of the SRV records ended, for [`rescan_interval`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOutcome {
    /// At least one verified host; the lowest TTL among the SRV records, if known.
    Found {
        /// The lowest TTL.
        min_ttl: Option<Duration>,
    },
    /// A DNS error, no records, or no verified host.
    Failed,
}

/// When to rescan after a scan (polling specification): the lowest SRV TTL but at least 60 s;
/// 60 s when the TTL is unknown; `heartbeatFrequencyMS` after a failure. `configured`
/// (`upstream_srv_rescan_interval`, for tests) replaces all of it.
pub fn rescan_interval(
    outcome: ScanOutcome,
    heartbeat: Duration,
    configured: Option<Duration>,
) -> Duration {
    if let Some(c) = configured {
        return c;
    }
    match outcome {
        ScanOutcome::Found { min_ttl } => min_ttl.map_or(MIN_RESCAN, |t| t.max(MIN_RESCAN)),
        ScanOutcome::Failed => heartbeat,
    }
}
