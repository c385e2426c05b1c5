//! The upstream deployment: its members, one monitor and one bounded pool per member, and
//! server selection that waits for a suitable member (the Server Discovery and Monitoring and
//! Server Selection specifications).
//!
//! The description is one immutable value behind a `watch` channel: a selection reads the
//! current value without a lock, and a request waiting for a primary wakes when it changes.
//! Member bookkeeping (monitors, pools) changes under one mutex, together with the description,
//! so a member's pool exists exactly while the member is part of the topology. A member that
//! leaves is closed: its idle connections at once, checked-out ones when they come back.
//!
//! Operation failures feed back here ([`Topology::on_failure`]): a "not primary" / "node is
//! recovering" reply or a network error marks the member Unknown and wakes its monitor, as a
//! driver does, so the next selection waits for the new primary instead of failing again.

mod checkout;
pub mod monitor;
pub mod select;
pub mod server;
pub mod srv_watch;
pub mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use self::monitor::MonitorHandle;
use self::server::{normalize, smooth_rtt, ServerDescription, ServerType, TopologyVersion};
use self::state::{TopologyDescription, TopologyType};
use super::config::{Seeds, UpstreamConfig};
use super::conn::UpstreamInfo;
use super::connector::TcpConnector;
use super::pool::{Pool, PoolLimits, UpstreamPool};
use super::total::Total;
use crate::metrics::Metrics;

/// How each member's pool is shaped; changed by reloads, applied to every member.
#[derive(Debug, Clone, Copy)]
pub struct PoolShape {
    /// Most connections per member.
    pub size: usize,
    /// Most connections across all members; `None` is `size` per member and no more bound.
    pub total: Option<usize>,
    /// Most of them pinned by transactions.
    pub max_pinned: usize,
    /// Timeouts.
    pub limits: PoolLimits,
}

/// One member's running parts.
#[derive(Debug)]
struct Member {
    pool: Arc<UpstreamPool>,
    monitor: Arc<MonitorHandle>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Member {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.pool.close();
    }
}

/// The deployment.
#[derive(Debug)]
pub struct Topology {
    cfg: Arc<UpstreamConfig>,
    tls: Option<Arc<rustls::ClientConfig>>,
    shape: Mutex<PoolShape>,
    total: Arc<Total>,
    state: watch::Sender<Arc<TopologyDescription>>,
    members: Mutex<BTreeMap<String, Member>>,
    info: ArcSwap<Option<UpstreamInfo>>,
    metrics: Arc<Metrics>,
    started: std::sync::Once,
}

impl Topology {
    /// The topology of `cfg`'s seeds (SRV names must be resolved into `seeds` by the caller),
    /// with no monitor running yet: [`Topology::start`] (or the first selection) starts them.
    pub fn new(
        cfg: UpstreamConfig,
        seeds: Vec<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
        shape: PoolShape,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let opts = &cfg.topology;
        let direct = opts.direct_connection.unwrap_or(false);
        let desc =
            TopologyDescription::new(&seeds, opts.replica_set.clone(), direct, opts.load_balanced);
        let (state, _) = watch::channel(Arc::new(desc));
        Arc::new(Topology {
            cfg: Arc::new(cfg),
            tls,
            shape: Mutex::new(shape),
            total: Total::new(shape.total),
            state,
            members: Mutex::new(BTreeMap::new()),
            info: ArcSwap::from_pointee(None),
            metrics,
            started: std::sync::Once::new(),
        })
    }

    /// The seeds a configuration names directly (`mongodb+srv` names are resolved elsewhere).
    pub fn seeds_of(cfg: &UpstreamConfig) -> Vec<String> {
        match &cfg.seeds {
            Seeds::Hosts(hosts) => hosts.clone(),
            Seeds::Srv { host, .. } => vec![format!("{host}:27017")],
        }
    }

    /// Starts a monitor and a pool for every member; idempotent. Needs a tokio runtime.
    pub fn start(self: &Arc<Self>) {
        self.started.call_once(|| {
            let desc = self.state.borrow().clone();
            self.reconcile(&desc);
        });
    }

    /// The current description.
    pub fn description(&self) -> Arc<TopologyDescription> {
        self.state.borrow().clone()
    }

    /// The upstream configuration (TXT options folded in for `mongodb+srv`).
    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// The read preference of requests that carry none (the URI's).
    pub fn default_read_preference(&self) -> &crate::upstream::read_pref::ReadPreference {
        &self.cfg.topology.read_preference
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        self.cfg.topology.heartbeat_frequency
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.cfg.topology.connect_timeout
    }

    pub(crate) fn tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// A monitor's result for one member (its `rtt` already what the member's should be).
    pub(crate) fn on_check(self: &Arc<Self>, sd: ServerDescription) {
        self.apply_check(sd, false);
    }

    /// The result of an awaitable (streaming) `hello`, whose delay is not a round trip: the
    /// member keeps the round-trip time it has (from the round-trip task), whatever `sd` says.
    pub(crate) fn on_streamed_check(self: &Arc<Self>, sd: ServerDescription) {
        self.apply_check(sd, true);
    }

    fn apply_check(self: &Arc<Self>, mut sd: ServerDescription, keep_rtt: bool) {
        let before = sd.server_type;
        let address = sd.address.clone();
        let mut members = self.lock_members();
        let mut desc = (**self.state.borrow()).clone();
        if keep_rtt {
            // Read under the lock, so that a sample recorded meanwhile is not lost.
            sd.rtt = desc.servers.get(&address).and_then(|s| s.rtt);
        }
        let old = desc.servers.get(&address).map(|s| s.server_type);
        if !desc.apply(sd) {
            return;
        }
        if old != Some(before) {
            tracing::info!(member = %address.escape_debug(), from = old.map_or("removed", ServerType::name), to = before.name(), topology = desc.kind.name(), "upstream member changed state");
        }
        self.publish(&mut members, desc);
    }

    /// A round-trip sample from a streaming member's latency task, folded into the member's
    /// average.
    pub(crate) fn on_rtt(&self, address: &str, sample: Duration) {
        let _members = self.lock_members();
        let mut desc = (**self.state.borrow()).clone();
        if let Some(s) = desc.servers.get_mut(address) {
            s.rtt = Some(smooth_rtt(s.rtt, sample));
            self.state.send_replace(Arc::new(desc));
        }
    }

    /// The smoothed round-trip time recorded for the member at `address`, if any.
    pub fn rtt_of(&self, address: &str) -> Option<Duration> {
        self.state.borrow().servers.get(address).and_then(|s| s.rtt)
    }

    /// An operation on `address` failed in a way that puts the member's state in doubt
    /// (not primary, node recovering, network error): it becomes Unknown and is checked now.
    /// `clear_pool` closes its idle connections too (network errors, shutdown). An error that
    /// carries a `topologyVersion` no newer than the member's known one is old news (the
    /// monitor already saw the change) and changes nothing.
    pub fn on_failure(
        self: &Arc<Self>,
        address: &str,
        why: &str,
        clear_pool: bool,
        version: Option<TopologyVersion>,
    ) {
        let address = normalize(address);
        let mut members = self.lock_members();
        let mut desc = (**self.state.borrow()).clone();
        let Some(known) = desc.servers.get(&address) else {
            return;
        };
        if known.server_type == ServerType::Unknown {
            return;
        }
        if let (Some(new), Some(old)) = (version, known.topology_version) {
            if !old.is_older_than(&new) {
                return;
            }
        }
        tracing::info!(member = %address.escape_debug(), why, "upstream member marked unknown after a failed operation");
        desc.mark_unknown(&address, why.to_string());
        if let Some(m) = members.get(&address) {
            if clear_pool {
                m.pool.close_idle();
            }
            m.monitor.check_now.notify_one();
        }
        self.publish(&mut members, desc);
    }

    /// Replaces the member list after an SRV rescan (sharded clusters and unknown topologies).
    pub fn on_srv_hosts(self: &Arc<Self>, hosts: &[String]) {
        let mut members = self.lock_members();
        let mut desc = (**self.state.borrow()).clone();
        if !matches!(desc.kind, TopologyType::Sharded | TopologyType::Unknown) || hosts.is_empty() {
            return;
        }
        desc.replace_seeds(hosts);
        self.publish(&mut members, desc);
    }

    fn publish(
        self: &Arc<Self>,
        members: &mut BTreeMap<String, Member>,
        desc: TopologyDescription,
    ) {
        let desc = Arc::new(desc);
        self.state.send_replace(desc.clone());
        self.reconcile_locked(members, &desc);
        self.show(members, &desc);
    }

    fn reconcile(self: &Arc<Self>, desc: &TopologyDescription) {
        let mut members = self.lock_members();
        self.reconcile_locked(&mut members, desc);
        self.show(&members, desc);
    }

    /// Starts parts for new members and stops them for members that left.
    fn reconcile_locked(
        self: &Arc<Self>,
        members: &mut BTreeMap<String, Member>,
        desc: &TopologyDescription,
    ) {
        members.retain(|address, _| desc.servers.contains_key(address));
        for address in desc.servers.keys() {
            if members.contains_key(address) {
                continue;
            }
            members.insert(address.clone(), self.spawn_member(address));
        }
    }

    fn spawn_member(self: &Arc<Self>, address: &str) -> Member {
        let shape = *self.shape.lock().expect("shape lock");
        let connector = TcpConnector::new(self.cfg.clone(), address.to_string(), self.tls.clone());
        let pool = Pool::sharing(
            connector,
            (shape.size, shape.max_pinned),
            shape.limits,
            self.metrics.clone(),
            self.total.clone(),
        );
        let monitor = Arc::new(MonitorHandle::default());
        let mut tasks = Vec::new();
        if !self.cfg.topology.load_balanced {
            let weak = Arc::downgrade(self);
            tasks.push(
                tokio::spawn(monitor::run(
                    weak.clone(),
                    address.to_string(),
                    monitor.clone(),
                ))
                .abort_handle(),
            );
            tasks.push(
                tokio::spawn(monitor::measure_rtt(
                    weak,
                    address.to_string(),
                    monitor.clone(),
                ))
                .abort_handle(),
            );
        }
        Member {
            pool,
            monitor,
            tasks,
        }
    }

    /// Updates the per-member metrics (also called on the periodic reap, for the counts).
    fn show(&self, members: &BTreeMap<String, Member>, desc: &TopologyDescription) {
        for (address, sd) in &desc.servers {
            let open = members.get(address).map_or(0, |m| m.pool.open_count());
            self.metrics
                .set_member(address, sd.server_type.name(), open);
        }
        for gone in self.metrics.shown_members() {
            if !desc.servers.contains_key(&gone) {
                self.metrics.forget_member(&gone);
            }
        }
    }

    fn lock_members(&self) -> MutexGuard<'_, BTreeMap<String, Member>> {
        self.members.lock().expect("topology lock")
    }

    /// Each member's address and pool, in address order (for operators' reports).
    pub fn member_pools(&self) -> Vec<(String, Arc<UpstreamPool>)> {
        self.lock_members()
            .iter()
            .map(|(address, m)| (address.clone(), m.pool.clone()))
            .collect()
    }

    fn pools(&self) -> Vec<Arc<UpstreamPool>> {
        self.lock_members()
            .values()
            .map(|m| m.pool.clone())
            .collect()
    }

    /// Applies a reload's pool size and timeouts to every member, and to members added later.
    pub fn reshape(&self, shape: PoolShape) {
        *self.shape.lock().expect("shape lock") = shape;
        self.total.resize(shape.total);
        for pool in self.pools() {
            pool.resize(shape.size, shape.max_pinned);
            pool.set_limits(shape.limits);
        }
    }

    /// The pool shape in force.
    pub fn shape(&self) -> PoolShape {
        *self.shape.lock().expect("shape lock")
    }

    /// Closes idle connections past their timeout, on every member, and refreshes the
    /// per-member metrics.
    pub fn reap_idle(&self) {
        for pool in self.pools() {
            pool.reap_idle();
        }
        let desc = self.description();
        self.show(&self.lock_members(), &desc);
    }

    /// Closes every idle connection (drain).
    pub fn close_idle(&self) {
        for pool in self.pools() {
            pool.close_idle();
        }
    }

    /// Idle connections across members that may carry cursors clients still use.
    pub fn carrying_cursors(&self) -> usize {
        self.pools().iter().map(|p| p.carrying_cursors()).sum()
    }

    /// Open pooled connections across members.
    pub fn open_count(&self) -> usize {
        self.pools().iter().map(|p| p.open_count()).sum()
    }
}

#[cfg(test)]
#[path = "rtt_tests.rs"]
mod rtt_tests;
