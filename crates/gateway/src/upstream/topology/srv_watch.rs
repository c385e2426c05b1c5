//! `mongodb+srv` upstreams: the SRV (and TXT) lookup before the topology exists, and the
//! rescans that follow a sharded cluster's router list without a restart (the "Polling SRV
//! Records for mongos Discovery" specification).
//!
//! The first lookup must finish before anything connects: its TXT record may name the
//! `authSource` the pools log in with and the `replicaSet` that decides the topology's type. A
//! failed first lookup is a start-up error, as a driver fails to build its client. Rescans
//! change only the member list, and only while the topology is sharded (or not yet known).

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::state::TopologyType;
use super::Topology;
use crate::upstream::srv::{apply_rescan, rescan_interval, ScanOutcome, SrvError, SrvResolver};
use crate::upstream::{Seeds, UpstreamConfig};

/// What the topology starts from: the configuration (for SRV, with the TXT options folded in;
/// the settings keep the URI as written, so a reload compares like with like), the seeds (the
/// URI's hosts, or what the SRV lookup found), and the resolver when rescans will be needed.
pub struct Start {
    /// The configuration the pools and monitors use.
    pub config: UpstreamConfig,
    /// The first members.
    pub seeds: Vec<String>,
    /// For rescans.
    pub resolver: Option<SrvResolver>,
}

/// Resolves `cfg`'s seeds (a DNS lookup for `mongodb+srv`).
pub async fn initial_seeds(
    cfg: &UpstreamConfig,
    resolver_address: Option<std::net::SocketAddr>,
) -> Result<Start, SrvError> {
    if !matches!(cfg.seeds, Seeds::Srv { .. }) {
        return Ok(Start {
            config: cfg.clone(),
            seeds: Topology::seeds_of(cfg),
            resolver: None,
        });
    }
    let resolver = SrvResolver::new(resolver_address)?;
    let resolved = resolver.resolve(cfg).await?;
    tracing::info!(
        srv = %resolved.srv_name.escape_debug(),
        found = resolved.found,
        used = resolved.hosts.len(),
        "upstream SRV record resolved"
    );
    let mut config = resolved.config.clone();
    // The credential source (if any) stays the one attached to the settings.
    config.aws_credentials = cfg.aws_credentials.clone();
    Ok(Start {
        config,
        seeds: resolved.hosts,
        resolver: Some(resolver),
    })
}

impl Topology {
    /// Starts the SRV rescans (a no-op for a URI that named its hosts).
    pub fn watch_srv(self: &Arc<Self>, resolver: SrvResolver, configured: Option<Duration>) {
        tokio::spawn(rescans(Arc::downgrade(self), resolver, configured));
    }
}

async fn rescans(topology: Weak<Topology>, resolver: SrvResolver, configured: Option<Duration>) {
    let mut outcome = ScanOutcome::Found { min_ttl: None };
    loop {
        let Some(t) = topology.upgrade() else { return };
        let heartbeat = t.heartbeat();
        drop(t);
        tokio::time::sleep(rescan_interval(outcome, heartbeat, configured)).await;
        let Some(t) = topology.upgrade() else { return };
        if !matches!(
            t.description().kind,
            TopologyType::Sharded | TopologyType::Unknown
        ) {
            // Replica sets follow their primary's host list; load balancers have one name.
            return;
        }
        let rescan = resolver.rescan(t.config()).await;
        outcome = match rescan {
            Ok(found) => {
                let outcome = found.outcome();
                if !found.rejected.is_empty() {
                    tracing::warn!(rejected = ?found.rejected, "SRV rescan returned hosts outside the SRV name's domain; ignored");
                }
                if matches!(outcome, ScanOutcome::Found { .. }) {
                    let current: Vec<String> = t.description().servers.keys().cloned().collect();
                    let max_hosts = match &t.config().seeds {
                        Seeds::Srv { max_hosts, .. } => *max_hosts,
                        Seeds::Hosts(_) => None,
                    };
                    let next = apply_rescan(&current, &found.found, max_hosts);
                    if next != current {
                        tracing::info!(members = ?next, "SRV rescan changed the router list");
                    }
                    t.on_srv_hosts(&next);
                }
                outcome
            }
            Err(e) => {
                tracing::warn!(error = %e, "SRV rescan failed; keeping the current routers");
                ScanOutcome::Failed
            }
        };
    }
}
