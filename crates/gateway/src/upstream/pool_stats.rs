//! What a pool tells operators about itself (the admin surface's pools and upstream
//! connections): counters kept beside the pool's own bookkeeping, and the record of every
//! connection it has open. The Prometheus gauges sum over all members; these are per member, and
//! carry the checkout wait's percentiles.
//!
//! The connection records live in the pool's stock, under the lock the pool already takes to
//! hand out and take back connections, so keeping them costs no extra lock; their number is
//! bounded by the pool size.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::conn::ConnMeta;
use crate::metrics::latency::{LatencyRecorder, Percentiles};

/// Per-pool counters.
#[derive(Debug, Default)]
pub(super) struct PoolCounters {
    pub(super) waiting: AtomicUsize,
    pub(super) in_use: AtomicUsize,
    pub(super) pinned: AtomicUsize,
    pub(super) timeouts: AtomicU64,
    pub(super) waits: LatencyRecorder,
}

/// Counts one checkout waiting for a slot while it lives.
pub(super) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub(super) fn new(n: &'a AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnState {
    Idle,
    InUse,
    Pinned,
}

/// One open connection, as the pool knows it.
#[derive(Debug)]
pub(super) struct ConnRecord {
    pub(super) meta: Arc<ConnMeta>,
    pub(super) opened: Instant,
    pub(super) since: Instant,
    pub(super) state: ConnState,
}

impl ConnRecord {
    pub(super) fn in_use(meta: Arc<ConnMeta>) -> ConnRecord {
        let now = Instant::now();
        ConnRecord {
            meta,
            opened: now,
            since: now,
            state: ConnState::InUse,
        }
    }

    pub(super) fn set(&mut self, state: ConnState) {
        self.state = state;
        self.since = Instant::now();
    }

    pub(super) fn report(&self, now: Instant) -> ConnReport {
        ConnReport {
            member: self.meta.address.to_string(),
            id: self.meta.id,
            state: match self.state {
                ConnState::Idle => "idle",
                ConnState::InUse => "inUse",
                ConnState::Pinned => "pinned",
            },
            age_secs: secs(now.duration_since(self.opened)),
            state_secs: secs(now.duration_since(self.since)),
            open_cursors: self.meta.open_cursors.load(Ordering::Relaxed),
        }
    }
}

fn secs(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// One pool, for operators.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolReport {
    /// The member (`host:port`).
    pub member: String,
    /// Most connections the pool may hold.
    pub size: usize,
    /// Open now, idle and checked out.
    pub open: usize,
    /// Checked out now (pinned included).
    pub in_use: usize,
    /// Idle now.
    pub idle: usize,
    /// Pinned to a transaction now.
    pub pinned: usize,
    /// Most connections that may be pinned at once.
    pub max_pinned: usize,
    /// Checkouts waiting for a slot now.
    pub waiting: usize,
    /// Checkouts that gave up waiting, since start.
    pub checkout_timeouts: u64,
    /// Time checkouts waited for a slot, since start.
    pub checkout_wait: Percentiles,
}

/// One upstream connection, for operators.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnReport {
    /// The member it is connected to.
    pub member: String,
    /// The gateway's id of the connection (as in its log lines).
    pub id: u64,
    /// `idle`, `inUse` or `pinned`.
    pub state: &'static str,
    /// Seconds since it was opened.
    pub age_secs: f64,
    /// Seconds in its current state.
    pub state_secs: f64,
    /// Cursors opened on it that are still open.
    pub open_cursors: i64,
}
