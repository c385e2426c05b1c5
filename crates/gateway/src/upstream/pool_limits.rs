//! The timeouts a pool reads on every use ([`PoolLimits`]), kept as atomics so the hot path
//! reads them without a lock and a reload can change them under running checkouts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The timeouts the pool reads on every use; swapped whole by [`Pool::set_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Longest wait for a slot (and, separately, for a transaction pin).
    pub checkout_timeout: Duration,
    /// Longest time to open and authenticate a connection.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

/// [`PoolLimits`] readable on the hot path with one relaxed load each. The three values are
/// independent, so a reader that sees one new and one old value during a swap is still right.
#[derive(Debug)]
pub(super) struct LiveLimits {
    checkout_nanos: AtomicU64,
    connect_nanos: AtomicU64,
    idle_nanos: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl LiveLimits {
    pub(super) fn new(limits: PoolLimits) -> LiveLimits {
        let live = LiveLimits {
            checkout_nanos: AtomicU64::new(0),
            connect_nanos: AtomicU64::new(0),
            idle_nanos: AtomicU64::new(0),
        };
        live.set(limits);
        live
    }

    pub(super) fn set(&self, limits: PoolLimits) {
        self.checkout_nanos
            .store(nanos(limits.checkout_timeout), Ordering::Relaxed);
        self.connect_nanos
            .store(nanos(limits.connect_timeout), Ordering::Relaxed);
        self.idle_nanos
            .store(nanos(limits.idle_timeout), Ordering::Relaxed);
    }

    pub(super) fn checkout(&self) -> Duration {
        Duration::from_nanos(self.checkout_nanos.load(Ordering::Relaxed))
    }

    pub(super) fn connect(&self) -> Duration {
        Duration::from_nanos(self.connect_nanos.load(Ordering::Relaxed))
    }

    pub(super) fn idle(&self) -> Duration {
        Duration::from_nanos(self.idle_nanos.load(Ordering::Relaxed))
    }
}
