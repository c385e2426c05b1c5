//! Limits on what clients may hold: the client limit ([`client_limit`]), connections per source
//! address, and the throttle that slows down password guessing.
//!
//! The failed-login throttle owns a bounded table of recent authentication failures per source IP. Each failure beyond a
//! small allowance doubles the delay before that source's next authentication attempt is
//! processed (up to a cap). The delay is served inside the offending connection's own task, so a
//! guessing source slows only itself.

pub mod client_limit;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures forgiven before delays start.
const ALLOWANCE: u32 = 5;
/// Failures older than this are forgotten.
const WINDOW: Duration = Duration::from_secs(60);
/// Longest delay per attempt.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Sources remembered at most; the table is pruned when it grows past this.
const MAX_SOURCES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// Attempts from this source are spaced out: the next one may start no earlier than this,
    /// so opening many connections in parallel does not multiply the guessing rate.
    next_slot: Instant,
}

/// Longest a source's queued attempt waits; beyond that the attempt fails at once.
const MAX_QUEUE: Duration = Duration::from_secs(30);

/// Authentication failures per source address.
#[derive(Debug, Default)]
pub struct AuthLimiter {
    table: Mutex<HashMap<IpAddr, Failures>>,
}

impl AuthLimiter {
    /// Reserves the next attempt slot for `ip` and says how long to wait for it: zero within
    /// the allowance, then an exponentially growing spacing between attempts from the same
    /// source, shared by all of its connections. `None` means the queue is too long: fail the
    /// attempt without checking it.
    pub fn reserve(&self, ip: IpAddr) -> Option<Duration> {
        let mut table = self.table.lock().expect("limiter lock");
        let Some(f) = table.get_mut(&ip) else {
            return Some(Duration::ZERO);
        };
        if f.last.elapsed() >= WINDOW || f.count < ALLOWANCE {
            return Some(Duration::ZERO);
        }
        let exp = (f.count - ALLOWANCE).min(16);
        let step = (Duration::from_millis(100) * 2u32.pow(exp)).min(MAX_DELAY);
        let now = Instant::now();
        let start = f.next_slot.max(now) + step;
        let wait = start - now;
        if wait > MAX_QUEUE {
            return None;
        }
        f.next_slot = start;
        Some(wait)
    }

    /// Records a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let mut table = self.table.lock().expect("limiter lock");
        if table.len() >= MAX_SOURCES {
            table.retain(|_, f| f.last.elapsed() < WINDOW);
        }
        let now = Instant::now();
        let entry = table.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
            next_slot: now,
        });
        if entry.last.elapsed() >= WINDOW {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
    }

    /// Forgets `ip`'s failures after a success.
    pub fn succeeded(&self, ip: IpAddr) {
        self.table.lock().expect("limiter lock").remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_per_source_only() {
        let l = AuthLimiter::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..ALLOWANCE {
            assert_eq!(l.reserve(a), Some(Duration::ZERO));
            l.failed(a);
        }
        let first = l.reserve(a).unwrap();
        assert!(first <= Duration::from_millis(100) && first > Duration::from_millis(90));
        // A parallel attempt queues behind the first.
        let second = l.reserve(a).unwrap();
        assert!(second > Duration::from_millis(190));
        assert_eq!(l.reserve(b), Some(Duration::ZERO));
        for _ in 0..20 {
            l.failed(a);
        }
        let mut queued = 0;
        while l.reserve(a).is_some() {
            queued += 1;
        }
        assert!(queued <= 6, "the queue is bounded: {queued}");
        l.succeeded(a);
        assert_eq!(l.reserve(a), Some(Duration::ZERO));
    }
}

/// Open client connections per source address, for `max_connections_per_source`.
#[derive(Debug, Default)]
pub struct SourceCounts {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A client connection counted against its source; uncounts itself when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    counts: std::sync::Arc<SourceCounts>,
    ip: IpAddr,
}

impl SourceCounts {
    /// Counts a new connection from `ip`, unless `limit` (0 = none) is reached.
    pub fn admit(self: &std::sync::Arc<Self>, ip: IpAddr, limit: usize) -> Option<SourceSlot> {
        let mut open = self.open.lock().expect("source lock");
        let n = open.entry(ip).or_insert(0);
        if limit != 0 && *n >= limit {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().expect("source lock");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod source_tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn per_source_limit() {
        let c = Arc::new(SourceCounts::default());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = c.admit(a, 2).unwrap();
        let _s2 = c.admit(a, 2).unwrap();
        assert!(c.admit(a, 2).is_none());
        assert!(c.admit("127.0.0.3".parse().unwrap(), 2).is_some());
        drop(s1);
        assert!(c.admit(a, 2).is_some());
        assert!(c.admit(a, 0).is_some());
    }
}
