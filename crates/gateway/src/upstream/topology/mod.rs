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
use tokio::time::Instant;

use self::monitor::MonitorHandle;
use self::select::{Need, NoMember};
use self::server::{normalize, smooth_rtt, ServerDescription, ServerType, TopologyVersion};
use self::state::{TopologyDescription, TopologyType};
use super::config::{Seeds, UpstreamConfig};
use super::conn::UpstreamInfo;
use super::connector::TcpConnector;
use super::error::UpstreamError;
use super::pool::{Pool, PoolLimits, Pooled, UpstreamPool};
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

    /// The pool of a member that can serve `need`, waiting up to the server selection timeout
    /// for one (an election, a member coming back).
    pub async fn select(
        self: &Arc<Self>,
        need: Need<'_>,
    ) -> Result<(String, Arc<UpstreamPool>), UpstreamError> {
        self.start();
        let opts = &self.cfg.topology;
        let deadline = Instant::now() + opts.server_selection_timeout;
        let mut changes = self.state.subscribe();
        let mut first_miss = true;
        loop {
            let desc = changes.borrow_and_update().clone();
            if desc.kind == TopologyType::LoadBalanced {
                if let Some(found) = self.only_member() {
                    return Ok(found);
                }
            }
            match select::suitable(&desc, need, opts.heartbeat_frequency, opts.local_threshold) {
                Ok(found) => {
                    if let Some(sd) = select::pick(&found) {
                        if let Some(pool) = self.pool_of(&sd.address) {
                            return Ok((sd.address.clone(), pool));
                        }
                    }
                }
                Err(NoMember::Invalid(why)) => return Err(UpstreamError::BadReadPreference(why)),
                Err(NoMember::NoneSuitable) => {}
            }
            if first_miss {
                // Polling members are checked now; streaming ones report changes themselves.
                self.request_checks();
                first_miss = false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, changes.changed()).await.is_err() {
                let why = no_member_message(&desc, need, opts.server_selection_timeout);
                return Err(match need {
                    Need::Write => UpstreamError::NoPrimary(why),
                    Need::Read(_) => UpstreamError::NoMember(why),
                });
            }
        }
    }

    /// Waits until every member has been checked once (answered or failed), at most until
    /// `deadline`: before that, "no member" means "not known yet", not "down".
    pub async fn wait_checked(self: &Arc<Self>, deadline: Instant) {
        self.start();
        let mut changes = self.state.subscribe();
        loop {
            let checked = changes
                .borrow_and_update()
                .servers
                .values()
                .all(|s| s.server_type != ServerType::Unknown || s.error.is_some());
            if checked {
                return;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// A member that can serve `need` now, without waiting.
    pub fn select_now(&self, need: Need<'_>) -> Option<Arc<UpstreamPool>> {
        let opts = &self.cfg.topology;
        let desc = self.description();
        if desc.kind == TopologyType::LoadBalanced {
            return self.only_member().map(|(_, p)| p);
        }
        let found =
            select::suitable(&desc, need, opts.heartbeat_frequency, opts.local_threshold).ok()?;
        self.pool_of(&select::pick(&found)?.address)
    }

    /// Learns the upstream's facts (wire versions, flavour) through a pooled connection, if
    /// no connection has yet, waiting at most until `deadline` and never for a member that
    /// is known to be down.
    pub async fn learn_info(self: &Arc<Self>, deadline: Instant) {
        if self.upstream_info().is_some() {
            return;
        }
        self.wait_checked(deadline).await;
        let Some(pool) = self.select_now(Need::Write) else {
            return;
        };
        if let Ok(Ok(conn)) = tokio::time::timeout_at(deadline, pool.checkout()).await {
            conn.release();
            self.note_info(&pool);
        }
    }

    fn only_member(&self) -> Option<(String, Arc<UpstreamPool>)> {
        let members = self.lock_members();
        members
            .iter()
            .next()
            .map(|(a, m)| (a.clone(), m.pool.clone()))
    }

    /// The pool of the member at `address`, if it is still part of the topology.
    pub fn pool_of(&self, address: &str) -> Option<Arc<UpstreamPool>> {
        self.lock_members().get(address).map(|m| m.pool.clone())
    }

    /// Checks out a connection to a member that can serve `need`.
    pub async fn checkout(self: &Arc<Self>, need: Need<'_>) -> Result<Pooled, UpstreamError> {
        let (_, pool) = self.select(need).await?;
        let conn = pool.checkout().await;
        self.note_info(&pool);
        conn
    }

    /// Checks out a connection to pin for a transaction (always a primary or a router).
    pub async fn checkout_pinned(self: &Arc<Self>) -> Result<Pooled, UpstreamError> {
        let (_, pool) = self.select(Need::Write).await?;
        let conn = pool.checkout_pinned().await;
        self.note_info(&pool);
        conn
    }

    /// Checks out a connection for a transaction statement that holds no pinned connection:
    /// to the primary, or in a sharded cluster to the router the session picks
    /// ([`select::router_for_session`]), the same on every gateway.
    pub async fn checkout_for_session(
        self: &Arc<Self>,
        key: &[u8],
    ) -> Result<Pooled, UpstreamError> {
        let (_, pool) = self.select(Need::Write).await?;
        let desc = self.description();
        if let Some(router) = select::router_for_session(&desc, key) {
            return self.checkout_on(router).await;
        }
        let conn = pool.checkout().await;
        self.note_info(&pool);
        conn
    }

    /// Checks out a connection to the member at `address` (a cursor continues where it was
    /// opened); fails if the member has left.
    pub async fn checkout_on(self: &Arc<Self>, address: &str) -> Result<Pooled, UpstreamError> {
        let pool = self
            .pool_of(address)
            .ok_or_else(|| UpstreamError::MemberGone(address.to_string()))?;
        pool.checkout().await
    }

    fn note_info(&self, pool: &UpstreamPool) {
        if let Some(info) = pool.upstream_info() {
            if **self.info.load() != Some(info) {
                self.info.store(Arc::new(Some(info)));
            }
        }
    }

    /// What the upstream said about itself (wire versions, session timeout, flavour), from
    /// the last member a connection was opened to.
    pub fn upstream_info(&self) -> Option<UpstreamInfo> {
        **self.info.load()
    }

    fn request_checks(&self) {
        let desc = self.description();
        for (address, m) in self.lock_members().iter() {
            let unknown = desc
                .servers
                .get(address)
                .is_none_or(|s| s.server_type == ServerType::Unknown);
            if unknown || !m.monitor.is_streaming() {
                m.monitor.check_now.notify_one();
            }
        }
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

    /// Open pooled connections across members.
    pub fn open_count(&self) -> usize {
        self.pools().iter().map(|p| p.open_count()).sum()
    }
}

fn no_member_message(desc: &TopologyDescription, need: Need<'_>, waited: Duration) -> String {
    let wanted = match need {
        Need::Write => "a primary".to_string(),
        Need::Read(rp) => format!("a member for read preference {}", rp.mode.name()),
    };
    let members: Vec<String> = desc
        .servers
        .values()
        .map(|s| match &s.error {
            Some(e) => format!("{} {} ({})", s.address, s.server_type.name(), e),
            None => format!("{} {}", s.address, s.server_type.name()),
        })
        .collect();
    format!(
        "no upstream member available: waited {waited:?} for {wanted}; topology {} [{}]",
        desc.kind.name(),
        members.join(", ")
    )
}

#[cfg(test)]
#[path = "rtt_tests.rs"]
mod rtt_tests;
