//! Server selection and checkout: which member's pool serves a request (waiting up to the
//! server selection timeout for an election or a member coming back), the connection itself,
//! and the upstream's facts learnt from the first connection. Split from the topology's state
//! keeping ([`super`]) because this is the per-request path, that the per-heartbeat one.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::select::{self, Need, NoMember};
use super::server::ServerType;
use super::state::{TopologyDescription, TopologyType};
use super::Topology;
use crate::upstream::conn::UpstreamInfo;
use crate::upstream::error::UpstreamError;
use crate::upstream::pool::{Pooled, UpstreamPool};

impl Topology {
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
