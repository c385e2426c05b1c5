//! Limits on what clients may hold: the client limit ([`client_limit`]), the bytes of messages in
//! flight ([`inflight`]), connections per source address, and the throttle that slows down
//! password guessing.
//!
//! The failed-login throttle keeps a bounded table of recent authentication failures, keyed
//! twice: by (source IP, user name) and by source IP alone. Each failure beyond a small
//! allowance doubles the delay before that key's next authentication attempt is processed (up
//! to a cap); an attempt waits for its source's slot before any work and for its (source, user) slot once
//! it names its user, before its proof is checked. A success forgives only its own
//! (source, user) key: an attacker who guesses one account's password while logging in to
//! another account of their own does not reset their guessing budget, and the per-source key
//! (with a larger allowance) bounds guessing spread over many user names. The delay is served
//! inside the offending connection's own task, so a guessing source slows only itself.

pub mod client_limit;
pub mod inflight;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures per (source, user) forgiven before delays start.
const ALLOWANCE: u32 = 5;
/// Failures per source (any user) forgiven before delays start: larger, because one address
/// may front many legitimate clients (NAT), each allowed a few mistakes.
const SOURCE_ALLOWANCE: u32 = 20;
/// Failures older than this are forgotten.
const WINDOW: Duration = Duration::from_secs(60);
/// Longest delay per attempt.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Keys remembered at most; the table is pruned when it grows past this.
const MAX_KEYS: usize = 100_000;
/// Longest user name kept in a key; longer names share the key of their prefix.
const MAX_USER_KEY: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// Attempts under this key are spaced out: the next one may start no earlier than this,
    /// so opening many connections in parallel does not multiply the guessing rate.
    next_slot: Instant,
}

/// Longest a queued attempt waits; beyond that the attempt fails at once.
const MAX_QUEUE: Duration = Duration::from_secs(30);

/// `None` as the user: the source as a whole.
type Key = (IpAddr, Option<String>);

fn key(ip: IpAddr, user: Option<&str>) -> Key {
    let user = user.map(|u| crate::text::bounded_prefix(u, MAX_USER_KEY).to_string());
    (ip, user)
}

/// Authentication failures per (source, user) and per source.
#[derive(Debug, Default)]
pub struct AuthLimiter {
    table: Mutex<HashMap<Key, Failures>>,
}

impl AuthLimiter {
    /// Reserves the next attempt slot for source `ip` and says how long to wait for it: zero
    /// within the allowance, then an exponentially growing spacing between attempts from the
    /// source, shared by all of its connections. `None` means the queue is too long: fail the
    /// attempt without checking it.
    pub fn reserve_source(&self, ip: IpAddr) -> Option<Duration> {
        let mut table = self.table.lock().expect("limiter lock");
        reserve_key(&mut table, &key(ip, None), SOURCE_ALLOWANCE)
    }

    /// The same for `user` from `ip`, once the attempt names its user (before its proof is
    /// checked).
    pub fn reserve_user(&self, ip: IpAddr, user: &str) -> Option<Duration> {
        let mut table = self.table.lock().expect("limiter lock");
        reserve_key(&mut table, &key(ip, Some(user)), ALLOWANCE)
    }

    /// Records a failed attempt from `ip`, against the source and, when known, `user`.
    pub fn failed(&self, ip: IpAddr, user: Option<&str>) {
        let mut table = self.table.lock().expect("limiter lock");
        if table.len() >= MAX_KEYS {
            table.retain(|_, f| f.last.elapsed() < WINDOW);
        }
        if table.len() >= MAX_KEYS {
            // Keep the keys being throttled; a flood of one-off failures must not evict them.
            table.retain(|(_, u), f| {
                f.count
                    >= if u.is_some() {
                        ALLOWANCE
                    } else {
                        SOURCE_ALLOWANCE
                    }
            });
        }
        count_failure(&mut table, key(ip, None));
        if user.is_some() {
            count_failure(&mut table, key(ip, user));
        }
    }

    /// Forgets the failures of `user` from `ip` after that user logged in from there. The
    /// source's own count stays: a success says nothing about guesses at other accounts.
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        self.table
            .lock()
            .expect("limiter lock")
            .remove(&key(ip, Some(user)));
    }
}

fn reserve_key(table: &mut HashMap<Key, Failures>, k: &Key, allowance: u32) -> Option<Duration> {
    let Some(f) = table.get_mut(k) else {
        return Some(Duration::ZERO);
    };
    if f.last.elapsed() >= WINDOW || f.count < allowance {
        return Some(Duration::ZERO);
    }
    let exp = (f.count - allowance).min(16);
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

fn count_failure(table: &mut HashMap<Key, Failures>, k: Key) {
    if table.len() >= MAX_KEYS && !table.contains_key(&k) {
        return;
    }
    let now = Instant::now();
    let entry = table.entry(k).or_insert(Failures {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_per_source_and_user_only() {
        let l = AuthLimiter::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let u = Some("victim");
        for _ in 0..ALLOWANCE {
            assert_eq!(l.reserve_user(a, "victim"), Some(Duration::ZERO));
            l.failed(a, u);
        }
        let first = l.reserve_user(a, "victim").unwrap();
        assert!(first <= Duration::from_millis(100) && first > Duration::from_millis(90));
        // A parallel attempt queues behind the first.
        let second = l.reserve_user(a, "victim").unwrap();
        assert!(second > Duration::from_millis(190));
        assert_eq!(l.reserve_user(b, "victim"), Some(Duration::ZERO));
        assert_eq!(l.reserve_user(a, "other"), Some(Duration::ZERO));
        for _ in 0..20 {
            l.failed(a, u);
        }
        let mut queued = 0;
        while l.reserve_user(a, "victim").is_some() {
            queued += 1;
        }
        assert!(queued <= 6, "the queue is bounded: {queued}");
        l.succeeded(a, "victim");
        assert!(l.reserve_user(a, "victim").is_some());
    }

    #[test]
    fn another_accounts_success_does_not_reset_the_throttle() {
        let l = AuthLimiter::default();
        let a: IpAddr = "127.0.0.4".parse().unwrap();
        for _ in 0..ALLOWANCE + 3 {
            l.failed(a, Some("victim"));
        }
        // The attacker logs in to their own account from the same source.
        l.succeeded(a, "attacker");
        assert!(l.reserve_user(a, "victim").unwrap() > Duration::ZERO);
        assert_eq!(l.reserve_user(a, "attacker"), Some(Duration::ZERO));
    }

    #[test]
    fn guessing_across_many_users_is_throttled_by_source() {
        let l = AuthLimiter::default();
        let a: IpAddr = "127.0.0.5".parse().unwrap();
        for i in 0..SOURCE_ALLOWANCE + 2 {
            l.failed(a, Some(&format!("user{i}")));
        }
        assert_eq!(l.reserve_user(a, "fresh"), Some(Duration::ZERO));
        assert!(l.reserve_source(a).unwrap() > Duration::ZERO);
        l.succeeded(a, "fresh");
        assert!(
            l.reserve_source(a).unwrap() > Duration::ZERO,
            "a success keeps the source count"
        );
    }

    #[test]
    fn long_user_names_share_a_bounded_key() {
        let ip: IpAddr = "127.0.0.6".parse().unwrap();
        let long = "é".repeat(1000);
        assert!(key(ip, Some(&long)).1.unwrap().len() <= MAX_USER_KEY);
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
