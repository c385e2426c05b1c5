//! `mongodb+srv` resolution: the SRV lookup of `_{srvServiceName}._tcp.{host}` and the TXT
//! lookup of `{host}` (initial DNS seedlist discovery specification), and the rescans the
//! SRV-polling specification asks for when the deployment is sharded.
//!
//! [`SrvResolver`] owns the DNS client (hickory, the resolver the driver itself uses; the
//! system's resolver unless `upstream_resolver` names one). It only looks names up and applies
//! [`rules`]; it never connects to a member and never decides when to rescan: the topology
//! code calls [`SrvResolver::rescan`] after [`rescan_interval`]. Every lookup has a deadline.
//! Errors name the DNS name and the reason, never a credential (the config's secrets are not
//! read here).

pub mod rules;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;

pub use rules::{apply_rescan, rescan_interval, ScanOutcome, TxtOptions, MIN_RESCAN};

use super::{Seeds, UpstreamConfig};

/// Deadline of one lookup, retries included.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(10);

/// Why a `mongodb+srv` name could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SrvError {
    /// The DNS query failed or returned no records.
    #[error("{kind} lookup of {name} failed: {reason}")]
    Lookup {
        /// `SRV` or `TXT`.
        kind: &'static str,
        /// The name looked up.
        name: String,
        /// What the resolver said.
        reason: String,
    },
    /// The records break a rule of the specification.
    #[error("{name}: {reason}")]
    Invalid {
        /// The SRV host of the URI.
        name: String,
        /// The rule broken.
        reason: String,
    },
    /// The configuration has no SRV name to resolve.
    #[error("the upstream URI is not a mongodb+srv URI")]
    NotSrv,
    /// The resolver could not be set up (no usable system configuration).
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(String),
}

/// The outcome of the initial lookup.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Member addresses (`host:port`), after `srvMaxHosts`.
    pub hosts: Vec<String>,
    /// Every verified SRV host, before `srvMaxHosts`.
    pub found: usize,
    /// The configuration with the TXT options folded in (seeds stay [`Seeds::Srv`], so the
    /// topology code knows to rescan).
    pub config: UpstreamConfig,
    /// The TXT options, as found.
    pub txt: TxtOptions,
    /// The SRV name looked up (`_mongodb._tcp.host.`).
    pub srv_name: String,
    /// The lowest TTL of the SRV records.
    pub min_ttl: Option<Duration>,
}

impl Resolved {
    /// For [`rescan_interval`].
    pub fn outcome(&self) -> ScanOutcome {
        ScanOutcome::Found {
            min_ttl: self.min_ttl,
        }
    }
}

/// The outcome of a rescan: verified hosts, and the ones refused (to log, not to use).
#[derive(Debug, Clone)]
pub struct Rescan {
    /// Every verified SRV host (`host:port`); feed to [`apply_rescan`].
    pub found: Vec<String>,
    /// Targets outside the name's domain, dropped.
    pub rejected: Vec<String>,
    /// The lowest TTL of the SRV records.
    pub min_ttl: Option<Duration>,
}

impl Rescan {
    /// For [`rescan_interval`]: a rescan with no verified host counts as failed.
    pub fn outcome(&self) -> ScanOutcome {
        match self.found.is_empty() {
            true => ScanOutcome::Failed,
            false => ScanOutcome::Found {
                min_ttl: self.min_ttl,
            },
        }
    }
}

/// SRV records as looked up: verified members, refused targets, lowest TTL.
struct SrvAnswer {
    found: Vec<String>,
    rejected: Vec<String>,
    min_ttl: Option<Duration>,
}

/// Looks up `mongodb+srv` names.
#[derive(Clone)]
pub struct SrvResolver {
    dns: TokioResolver,
}

impl std::fmt::Debug for SrvResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrvResolver").finish_non_exhaustive()
    }
}

impl SrvResolver {
    /// A resolver asking `server` (UDP, then TCP), or the system's resolver when `None`.
    /// Answers are not cached here: every rescan asks the server.
    pub fn new(server: Option<SocketAddr>) -> Result<SrvResolver, SrvError> {
        let builder = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| SrvError::Setup(e.to_string()))?,
        };
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        let dns = builder
            .with_options(opts)
            .build()
            .map_err(|e| SrvError::Setup(e.to_string()))?;
        Ok(SrvResolver { dns })
    }

    /// The addresses of a member's host name (A and AAAA), for connecting through this resolver.
    pub async fn lookup_ips(&self, host: &str) -> Result<Vec<std::net::IpAddr>, SrvError> {
        let lookup = tokio::time::timeout(LOOKUP_DEADLINE, self.dns.lookup_ip(host))
            .await
            .map_err(|_| SrvError::Setup(format!("address lookup of {host:?} timed out")))?
            .map_err(|e| SrvError::Setup(format!("address lookup of {host:?} failed: {e}")))?;
        Ok(lookup.iter().collect())
    }

    /// The initial lookup: SRV and TXT, every rule of the seedlist specification; any target
    /// outside the name's domain is an error.
    pub async fn resolve(&self, cfg: &UpstreamConfig) -> Result<Resolved, SrvError> {
        let Seeds::Srv {
            host,
            service_name,
            max_hosts,
            ..
        } = &cfg.seeds
        else {
            return Err(SrvError::NotSrv);
        };
        let (query, name) = rules::srv_query(host, service_name)?;
        let (srv, txt) = tokio::join!(self.srv(&query, &name), self.txt(&name));
        let srv = srv?;
        if let Some(bad) = srv.rejected.first() {
            return Err(SrvError::Invalid {
                name: host.clone(),
                reason: format!("SRV target {bad} is not within the domain of {host}"),
            });
        }
        let txt = rules::parse_txt(host, &txt?)?;
        let config = rules::fold_txt(cfg, &txt, srv.found.len())?;
        Ok(Resolved {
            found: srv.found.len(),
            hosts: rules::choose_hosts(srv.found, *max_hosts),
            config,
            txt,
            srv_name: query.to_ascii(),
            min_ttl: srv.min_ttl,
        })
    }

    /// A rescan (polling specification): SRV only; targets outside the domain are left out
    /// and reported in [`Rescan::rejected`], not an error. An error means: keep the topology
    /// as it is and rescan after `heartbeatFrequencyMS` ([`rescan_interval`]).
    pub async fn rescan(&self, cfg: &UpstreamConfig) -> Result<Rescan, SrvError> {
        let Seeds::Srv {
            host, service_name, ..
        } = &cfg.seeds
        else {
            return Err(SrvError::NotSrv);
        };
        let (query, name) = rules::srv_query(host, service_name)?;
        let srv = self.srv(&query, &name).await?;
        Ok(Rescan {
            found: srv.found,
            rejected: srv.rejected,
            min_ttl: srv.min_ttl,
        })
    }

    async fn srv(&self, query: &Name, host: &Name) -> Result<SrvAnswer, SrvError> {
        let records = match self.lookup(query, RecordType::SRV).await? {
            Answer::Records(r) => r,
            Answer::Nothing(why) => return Err(lookup_error("SRV", query, why)),
        };
        let mut answer = SrvAnswer {
            found: Vec::new(),
            rejected: Vec::new(),
            min_ttl: None,
        };
        for record in &records {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            let address = rules::member_address(&srv.target, srv.port);
            if !rules::target_allowed(host, &srv.target) {
                answer.rejected.push(address);
                continue;
            }
            let ttl = Duration::from_secs(u64::from(record.ttl));
            answer.min_ttl = Some(answer.min_ttl.map_or(ttl, |m| m.min(ttl)));
            if !answer.found.contains(&address) {
                answer.found.push(address);
            }
        }
        if answer.found.is_empty() && answer.rejected.is_empty() {
            return Err(lookup_error("SRV", query, "no SRV records".into()));
        }
        Ok(answer)
    }

    /// The strings of each TXT record; no record is not an error.
    async fn txt(&self, host: &Name) -> Result<Vec<Vec<Vec<u8>>>, SrvError> {
        let records = match self.lookup(host, RecordType::TXT).await? {
            Answer::Records(r) => r,
            Answer::Nothing(_) => return Ok(Vec::new()),
        };
        Ok(records
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt.txt_data.iter().map(|s| s.to_vec()).collect()),
                _ => None,
            })
            .collect())
    }

    /// One query, within [`LOOKUP_DEADLINE`].
    async fn lookup(&self, name: &Name, kind: RecordType) -> Result<Answer, SrvError> {
        let label = match kind {
            RecordType::SRV => "SRV",
            _ => "TXT",
        };
        match tokio::time::timeout(LOOKUP_DEADLINE, self.dns.lookup(name.clone(), kind)).await {
            Err(_) => Err(lookup_error(label, name, "timed out".into())),
            Ok(Ok(lookup)) => Ok(Answer::Records(lookup.answers().to_vec())),
            Ok(Err(e)) if e.is_nx_domain() => Ok(Answer::Nothing("no such name (NXDOMAIN)".into())),
            Ok(Err(e)) if e.is_no_records_found() => Ok(Answer::Nothing("no records".into())),
            Ok(Err(e)) => Err(lookup_error(label, name, e.to_string())),
        }
    }
}

/// What a query found: records, or an authoritative "nothing" (NXDOMAIN or no records), which
/// is an error for SRV and an empty answer for TXT.
enum Answer {
    Records(Vec<Record>),
    Nothing(String),
}

fn lookup_error(kind: &'static str, name: &Name, reason: String) -> SrvError {
    SrvError::Lookup {
        kind,
        name: name.to_ascii(),
        reason,
    }
}
