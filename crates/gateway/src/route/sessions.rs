//! Which client connections use each logical session, and the upstream connection an open
//! transaction of that session is pinned to.
//!
//! A session leaves this table when the last client connection that used it disconnects. Whether
//! it is also ended upstream is [`super::Routes::leave`]'s call: yes when this gateway is the
//! only one that can serve it (the driver client that owned it is gone), no when the gateways
//! share `session_key` (the driver may go on in it through another). Generic over the pinned
//! value so the bookkeeping can be tested without an upstream.
//!
//! Sessions are also counted per user (setting `max_sessions_per_user`): session ids are
//! namespaced by identity, so each session belongs to the one user whose connection first used
//! it, and counts against that user until it ends.

use std::collections::{HashMap, HashSet};

#[derive(Debug)]
struct Entry<P> {
    live_connections: usize,
    pinned: Option<P>,
    /// The transaction number the gateway aborted for being idle, so that its next statement
    /// is answered NoSuchTransaction instead of running outside any transaction.
    reaped: Option<i64>,
    /// The user the session counts against, when the gateway authenticates clients.
    user: Option<Box<str>>,
}

/// Sessions in use, keyed by the raw lsid document.
#[derive(Debug)]
pub struct Sessions<P> {
    by_lsid: HashMap<Vec<u8>, Entry<P>>,
    /// Sessions known now, per user.
    per_user: HashMap<Box<str>, usize>,
}

impl<P> Default for Sessions<P> {
    fn default() -> Self {
        Sessions {
            by_lsid: HashMap::new(),
            per_user: HashMap::new(),
        }
    }
}

/// A session whose last client connection left.
#[derive(Debug)]
pub struct Ended<P> {
    /// The raw lsid document.
    pub lsid: Vec<u8>,
    /// The transaction's pinned connection, if one was open.
    pub pinned: Option<P>,
}

impl<P> Sessions<P> {
    /// One more client connection, of `user` if it has one, uses `lsid`.
    pub fn join(&mut self, lsid: &[u8], user: Option<&str>) {
        let per_user = &mut self.per_user;
        self.by_lsid
            .entry(lsid.to_vec())
            .or_insert_with(|| {
                if let Some(u) = user {
                    *per_user.entry(u.into()).or_default() += 1;
                }
                Entry {
                    live_connections: 0,
                    pinned: None,
                    reaped: None,
                    user: user.map(Into::into),
                }
            })
            .live_connections += 1;
    }

    /// Whether `user` may use `lsid` within `limit` sessions: a session already known always
    /// may; a new one only while the user holds fewer than `limit`.
    pub fn admits(&self, lsid: &[u8], user: &str, limit: usize) -> bool {
        self.by_lsid.contains_key(lsid) || self.held_by_user(user) < limit
    }

    /// Sessions `user` holds now.
    pub fn held_by_user(&self, user: &str) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    /// Takes the value pinned for `lsid`, if its transaction holds one.
    pub fn take_pinned(&mut self, lsid: &[u8]) -> Option<P> {
        self.by_lsid.get_mut(lsid)?.pinned.take()
    }

    /// Pins `value` to `lsid` until its transaction ends. Returns it back when the session is no
    /// longer known (its last client left meanwhile).
    pub fn pin(&mut self, lsid: &[u8], value: P) -> Option<P> {
        match self.by_lsid.get_mut(lsid) {
            Some(s) => {
                s.pinned = Some(value);
                None
            }
            None => Some(value),
        }
    }

    /// Takes every pinned value `stale` picks (it returns the transaction's number), and
    /// remembers that number as aborted.
    pub fn take_stale(&mut self, stale: impl Fn(&P) -> Option<i64>) -> Vec<(Vec<u8>, P)> {
        let mut out = Vec::new();
        for (lsid, s) in self.by_lsid.iter_mut() {
            let Some(txn) = s.pinned.as_ref().and_then(&stale) else {
                continue;
            };
            s.reaped = Some(txn);
            out.extend(s.pinned.take().map(|p| (lsid.clone(), p)));
        }
        out
    }

    /// Whether transaction `txn` of `lsid` was aborted by [`Sessions::take_stale`].
    pub fn was_reaped(&self, lsid: &[u8], txn: i64) -> bool {
        self.by_lsid
            .get(lsid)
            .is_some_and(|s| s.reaped == Some(txn))
    }

    /// A client connection that used `keys` left: returns the sessions it was the last user of.
    pub fn leave(&mut self, keys: &HashSet<Vec<u8>>) -> Vec<Ended<P>> {
        let mut out = Vec::new();
        for key in keys {
            let Some(s) = self.by_lsid.get_mut(key) else {
                continue;
            };
            s.live_connections = s.live_connections.saturating_sub(1);
            if s.live_connections == 0 {
                let s = self.by_lsid.remove(key).expect("present");
                if let Some(user) = &s.user {
                    self.forget_one_of(user);
                }
                out.push(Ended {
                    lsid: key.clone(),
                    pinned: s.pinned,
                });
            }
        }
        out
    }

    fn forget_one_of(&mut self, user: &str) {
        if let Some(n) = self.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
    }

    /// Sessions known now.
    pub fn len(&self) -> usize {
        self.by_lsid.len()
    }

    /// Whether no session is known.
    pub fn is_empty(&self) -> bool {
        self.by_lsid.is_empty()
    }
}

/// The sessions one client connection has used, registered once each. Bounded by the setting
/// `max_sessions_per_client`: a request that would exceed it is refused before it is
/// forwarded ([`UsedSessions::admits`]), so every session a client reaches upstream is recorded
/// here, and released ([`super::Routes::leave`]) when the client leaves.
#[derive(Debug, Default)]
pub struct UsedSessions {
    keys: HashSet<Vec<u8>>,
}

impl UsedSessions {
    /// Whether a request with `lsid` stays within `limit` sessions for this connection.
    pub fn admits(&self, lsid: &[u8], limit: usize) -> bool {
        self.keys.len() < limit || self.keys.contains(lsid)
    }

    /// Records `lsid`; true when it is new for this connection and must be joined.
    pub fn first_use(&mut self, lsid: &[u8]) -> bool {
        if self.keys.contains(lsid) {
            return false;
        }
        self.keys.insert(lsid.to_vec());
        true
    }

    /// The registered keys.
    pub fn keys(&self) -> &HashSet<Vec<u8>> {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_with_its_last_connection() {
        let mut s: Sessions<u32> = Sessions::default();
        s.join(b"A", None);
        s.join(b"A", None);
        let one: HashSet<Vec<u8>> = [b"A".to_vec()].into();
        assert!(s.leave(&one).is_empty(), "one connection still uses A");
        let ended = s.leave(&one);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].lsid, b"A");
        assert!(s.is_empty());
    }

    #[test]
    fn stale_pins_are_taken_and_remembered_as_aborted() {
        let mut s: Sessions<(u32, i64)> = Sessions::default();
        s.join(b"A", None);
        s.join(b"B", None);
        s.pin(b"A", (10, 7));
        s.pin(b"B", (99, 3));
        // Values below 50 count as idle for long enough.
        let taken = s.take_stale(|&(age, txn)| (age < 50).then_some(txn));
        assert_eq!(taken, vec![(b"A".to_vec(), (10, 7))]);
        assert!(s.was_reaped(b"A", 7));
        assert!(
            !s.was_reaped(b"A", 8),
            "a later transaction of the session is not refused"
        );
        assert!(!s.was_reaped(b"B", 3));
        assert_eq!(
            s.take_pinned(b"B"),
            Some((99, 3)),
            "a busy one stays pinned"
        );
    }

    #[test]
    fn pinning_and_its_release() {
        let mut s: Sessions<u32> = Sessions::default();
        assert_eq!(s.pin(b"A", 1), Some(1), "unknown session: handed back");
        s.join(b"A", None);
        assert_eq!(s.pin(b"A", 2), None);
        assert_eq!(s.take_pinned(b"A"), Some(2));
        assert_eq!(s.take_pinned(b"A"), None, "taken once");
        s.pin(b"A", 3);
        let ended = s.leave(&[b"A".to_vec()].into());
        assert_eq!(
            ended[0].pinned,
            Some(3),
            "the departing session's transaction is handed over"
        );
    }

    #[test]
    fn sessions_are_counted_per_user_until_they_end() {
        let mut s: Sessions<u32> = Sessions::default();
        s.join(b"A", Some("u"));
        s.join(b"A", Some("u"));
        s.join(b"B", Some("u"));
        s.join(b"C", Some("v"));
        s.join(b"D", None);
        assert_eq!((s.held_by_user("u"), s.held_by_user("v")), (2, 1));
        assert!(
            !s.admits(b"E", "u", 2),
            "a third session of u is over the bound"
        );
        assert!(
            s.admits(b"A", "u", 2),
            "a known session always is within it"
        );
        assert!(s.admits(b"E", "v", 2), "another user is not affected");
        let a: HashSet<Vec<u8>> = [b"A".to_vec()].into();
        s.leave(&a);
        assert_eq!(s.held_by_user("u"), 2, "A still has a connection");
        s.leave(&a);
        assert_eq!(s.held_by_user("u"), 1);
        assert!(s.admits(b"E", "u", 2), "an ended session makes room");
        s.leave(&[b"B".to_vec(), b"C".to_vec()].into());
        assert!(s.per_user.is_empty(), "no empty counts are kept");
    }

    #[test]
    fn used_sessions_are_bounded_and_registered_once() {
        let mut u = UsedSessions::default();
        assert!(u.admits(b"A", 2));
        assert!(u.first_use(b"A"));
        assert!(!u.first_use(b"A"));
        assert!(u.first_use(b"B"));
        assert!(!u.admits(b"C", 2), "a third session is over the bound");
        assert!(u.admits(b"A", 2), "a known session always is within it");
        assert!(u.admits(b"C", 3), "a raised bound admits it (live reload)");
        assert_eq!(u.keys().len(), 2);
    }
}
