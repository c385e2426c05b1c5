//! [`Total`]: the bound on pooled upstream connections across every member's pool
//! (`max_upstream_connections`), next to each pool's own bound (`pool_size`).
//!
//! A replica set of five members with `pool_size = 50` could otherwise see 250 connections
//! from one gateway; operators size the whole deployment's connection budget, so they need one
//! number that holds across members. Each open pooled connection, idle or in use, holds one
//! permit of the shared bound from the moment it is opened until it closes. A checkout that
//! needs a new connection while the total is spent first closes the oldest idle connection of
//! any member (so idle connections to a member nobody reads from cannot starve the primary),
//! then waits, within its checkout timeout, for a permit; while anyone waits, a connection that
//! comes back is closed rather than kept idle, which hands its permit to the first waiter.
//!
//! Unset, the bound is as large as a semaphore allows, so it costs one uncontended atomic
//! operation per connection opened and nothing per checkout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::bound::{Bound, Permit};

/// What the shared bound needs from a member's pool: its oldest idle connection, to close.
pub(crate) trait IdleSource: Send + Sync {
    /// When the oldest idle connection went idle; `None` when there is none.
    fn oldest_idle(&self) -> Option<Instant>;
    /// Closes the oldest idle connection, releasing its permit; false when there was none.
    fn close_oldest_idle(&self) -> bool;
}

/// The connection budget shared by all member pools of one gateway.
pub struct Total {
    bound: Arc<Bound>,
    waiting: AtomicUsize,
    pools: Mutex<Vec<Weak<dyn IdleSource>>>,
}

impl std::fmt::Debug for Total {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Total")
            .field("capacity", &self.bound.capacity())
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish()
    }
}

/// The capacity that stands for "no total bound".
fn capacity_of(limit: Option<usize>) -> usize {
    limit.unwrap_or(Semaphore::MAX_PERMITS)
}

impl Total {
    /// A budget of `limit` connections; `None` is no bound beyond each pool's own.
    pub fn new(limit: Option<usize>) -> Arc<Total> {
        Arc::new(Total {
            bound: Bound::new(capacity_of(limit)),
            waiting: AtomicUsize::new(0),
            pools: Mutex::new(Vec::new()),
        })
    }

    /// Changes the budget (reload). Growing serves waiters at once; shrinking is paid as
    /// connections close, and returning connections close while it is being paid.
    pub fn resize(&self, limit: Option<usize>) {
        self.bound.resize(capacity_of(limit));
    }

    /// The budget in force; `None` when unbounded.
    pub fn limit(&self) -> Option<usize> {
        let c = self.bound.capacity();
        (c != Semaphore::MAX_PERMITS).then_some(c)
    }

    /// Makes `pool`'s idle connections candidates for closing when the budget is spent.
    pub(crate) fn register(&self, pool: Weak<dyn IdleSource>) {
        let mut pools = self.lock_pools();
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
    }

    /// A permit for one more open connection, waiting until `deadline`; `None` at the deadline
    /// or when the bound is closed.
    pub(crate) async fn acquire(&self, deadline: Instant) -> Option<Permit> {
        if let Some(p) = self.bound.try_acquire() {
            return Some(p);
        }
        // Counted before looking for an idle connection to close, so a connection returned
        // meanwhile is closed (its permit passed on) rather than parked idle.
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        self.close_oldest_idle();
        match tokio::time::timeout_at(deadline, self.bound.acquire()).await {
            Ok(Ok(p)) => Some(p),
            _ => None,
        }
    }

    /// Whether a connection coming back should close instead of staying idle: someone waits
    /// for a permit, or a shrink is being paid.
    pub(crate) fn wants_permits(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0 || self.bound.in_debt()
    }

    /// Closes the oldest idle connection across the registered pools, if any.
    fn close_oldest_idle(&self) {
        let pools: Vec<Arc<dyn IdleSource>> =
            self.lock_pools().iter().filter_map(Weak::upgrade).collect();
        let oldest = pools
            .iter()
            .filter_map(|p| p.oldest_idle().map(|t| (t, p)))
            .min_by_key(|(t, _)| *t);
        if let Some((_, pool)) = oldest {
            pool.close_oldest_idle();
        }
    }

    fn lock_pools(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn IdleSource>>> {
        self.pools.lock().expect("total lock")
    }
}

/// Uncounts a waiter however its wait ends (permit, deadline, cancelled checkout).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[path = "total_tests.rs"]
mod tests;
