//! Refusing replayed MONGODB-AWS signed requests before they reach STS.
//!
//! A signed GetCallerIdentity request is bound to the server nonce of one conversation, so STS
//! itself refuses it anywhere else; but a request that this gateway has already sent once (a
//! victim's login, captured on the way) must not cost a second STS call or be tried again at
//! all. Every signature sent to STS is remembered for as long as its X-Amz-Date is acceptable
//! (twice the clock skew: a date may be that far in the past or the future), and a signature
//! seen before is refused locally. The table is bounded: past its capacity the oldest entries go
//! first, and STS's own nonce check still stands behind it.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mongomux_auth::aws::MAX_CLOCK_SKEW;

/// Signatures remembered at most (about 100 bytes each).
const CAPACITY: usize = 100_000;

/// Signatures already sent to STS, oldest first.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<(Instant, String)>,
}

impl ReplayGuard {
    /// Records `signature` and says whether this is its first use.
    pub fn first_use(&self, signature: &str) -> bool {
        self.first_use_at(signature, Instant::now(), CAPACITY)
    }

    fn first_use_at(&self, signature: &str, now: Instant, capacity: usize) -> bool {
        let keep = MAX_CLOCK_SKEW * 2 + Duration::from_secs(60);
        let mut seen = self.seen.lock().expect("replay lock");
        while let Some((at, _)) = seen.order.front() {
            if now.saturating_duration_since(*at) < keep && seen.order.len() < capacity {
                break;
            }
            let (_, old) = seen.order.pop_front().expect("front exists");
            seen.set.remove(&old);
        }
        if !seen.set.insert(signature.to_string()) {
            return false;
        }
        seen.order.push_back((now, signature.to_string()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_used_once() {
        let g = ReplayGuard::default();
        assert!(g.first_use("aa"));
        assert!(!g.first_use("aa"));
        assert!(g.first_use("bb"));
    }

    #[test]
    fn expires_and_stays_bounded() {
        let g = ReplayGuard::default();
        let t0 = Instant::now();
        assert!(g.first_use_at("aa", t0, 10));
        let later = t0 + MAX_CLOCK_SKEW * 3;
        assert!(
            g.first_use_at("aa", later, 10),
            "forgotten after its date expired"
        );
        for i in 0..50 {
            g.first_use_at(&format!("s{i}"), later, 10);
        }
        let seen = g.seen.lock().unwrap();
        assert!(seen.order.len() <= 10 && seen.set.len() <= 10);
    }
}
