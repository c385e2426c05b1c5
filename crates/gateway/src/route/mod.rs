//! Routing state shared by all client connections: cursor ownership ([`cursors`]) and the ids
//! clients see for cursors ([`cursor_ids`]), the sessions
//! each client uses and the transactions pinned to upstream connections ([`sessions`]), and the
//! clean-up upstream when clients leave ([`cleanup`]).
//!
//! # Concurrency note
//! One mutex guards both tables. It is taken only for cursor replies, getMore/killCursors,
//! transaction statements and the first use of a session on a connection, never across an await,
//! so it is never held while talking to the upstream.

pub mod cleanup;
pub mod cursor_ids;
pub mod cursors;
pub mod sessions;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;
use crate::upstream::{ConnMeta, PooledConn};

pub use cleanup::Leftovers;
pub use cursors::{CursorLimit, CursorLimits, Opener, Owner};
pub use sessions::UsedSessions;

use cursors::{Cursor, Cursors};
use sessions::Sessions;

/// A transaction in progress and the connection it is pinned to.
#[derive(Debug)]
pub struct Pinned {
    /// The pinned connection.
    pub conn: PooledConn,
    /// The transaction's number, for aborting it if its client vanishes.
    pub txn_number: i64,
    /// When its last statement finished: the start of its idleness.
    pub since: std::time::Instant,
}

#[derive(Debug, Default)]
struct Tables {
    cursors: Cursors,
    sessions: Sessions<Pinned>,
}

/// The gateway-wide routing tables.
#[derive(Debug)]
pub struct Routes {
    tables: Mutex<Tables>,
    metrics: Arc<Metrics>,
    /// Whether the gateways of the deployment share `session_key`, so that sessions and their
    /// cursors outlive this gateway's connections ([`Routes::leave`]).
    shared_sessions: bool,
}

impl Routes {
    /// Empty tables; cursor counts are reported to `metrics`. Sessions end with this gateway's
    /// last connection using them.
    pub fn new(metrics: Arc<Metrics>) -> Routes {
        Routes {
            tables: Mutex::default(),
            metrics,
            shared_sessions: false,
        }
    }

    /// Empty tables for a gateway that shares `session_key` with others: a session and its
    /// cursors may go on through them after this gateway's last connection using it left.
    pub fn with_shared_sessions(metrics: Arc<Metrics>) -> Routes {
        Routes {
            shared_sessions: true,
            ..Routes::new(metrics)
        }
    }

    /// Whether sessions and their cursors outlive this gateway's connections (a shared key).
    pub fn shares_sessions(&self) -> bool {
        self.shared_sessions
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().expect("routing lock")
    }

    /// Cursors the client connection `connection` opened that are still open.
    pub fn cursors_opened_by(&self, connection: i64) -> usize {
        self.lock().cursors.held_by_connection(connection)
    }

    /// Logical sessions the gateway knows now, and cursors open now.
    pub fn counts(&self) -> (usize, usize) {
        let tables = self.lock();
        (tables.sessions.len(), tables.cursors.len())
    }

    /// Whether a request may use cursor `id` (see [`Cursors::may_use`]).
    pub fn may_use_cursor(
        &self,
        id: i64,
        lsid: Option<&[u8]>,
        connection: i64,
        used: &UsedSessions,
    ) -> bool {
        self.lock()
            .cursors
            .may_use(id, lsid, connection, used.keys())
    }

    /// Records a cursor the upstream opened on `conn` for `opener`, unless that would exceed
    /// `limits`: then nothing is recorded, and the caller must kill the cursor upstream, since
    /// a cursor the gateway does not track can never be released.
    pub fn add_cursor(
        &self,
        id: i64,
        ns: &str,
        owner: Owner,
        opener: Opener,
        conn: &Arc<ConnMeta>,
        limits: CursorLimits,
    ) -> Result<(), CursorLimit> {
        if id == 0 {
            return Ok(());
        }
        let replaced = {
            let mut tables = self.lock();
            tables.cursors.admit(&opener, limits)?;
            let cursor = Cursor {
                owner,
                opener,
                ns: ns.to_string(),
                conn: conn.clone(),
            };
            tables.cursors.insert(id, cursor)
        };
        conn.open_cursors.fetch_add(1, Ordering::Relaxed);
        self.metrics.open_cursors.inc();
        if let Some(old) = replaced {
            self.forget(&old);
        }
        Ok(())
    }

    /// The member cursor `id` was opened on (`getMore` and `killCursors` must go there).
    pub fn cursor_member(&self, id: i64) -> Option<Arc<str>> {
        self.lock().cursors.member_of(id)
    }

    /// Forgets a cursor that is exhausted or killed; returns its namespace if it was known.
    pub fn remove_cursor(&self, id: i64) -> Option<String> {
        let removed = self.lock().cursors.remove(id)?;
        self.forget(&removed);
        Some(removed.ns)
    }

    fn forget(&self, c: &Cursor) {
        c.conn.open_cursors.fetch_sub(1, Ordering::Relaxed);
        self.metrics.open_cursors.dec();
    }

    /// Registers that a client connection (of `user`, when it has one) uses session `lsid`,
    /// once per connection.
    pub fn note_session(&self, used: &mut UsedSessions, lsid: &[u8], user: Option<&str>) {
        if used.first_use(lsid) {
            self.lock().sessions.join(lsid, user);
        }
    }

    /// Whether `user` may use session `lsid` within `limit` sessions of its own
    /// (`max_sessions_per_user`): a session it already has always may.
    pub fn user_session_admits(&self, lsid: &[u8], user: &str, limit: usize) -> bool {
        self.lock().sessions.admits(lsid, user, limit)
    }

    /// Takes the connection pinned for session `lsid`, if its transaction holds one.
    pub fn take_pinned(&self, lsid: &[u8]) -> Option<Pinned> {
        self.lock().sessions.take_pinned(lsid)
    }

    /// Pins a connection to session `lsid` until its transaction ends. Returns it back when the
    /// session is no longer known (its last client left meanwhile).
    pub fn pin(&self, lsid: &[u8], pinned: Pinned) -> Option<Pinned> {
        self.lock().sessions.pin(lsid, pinned)
    }

    /// Takes the transactions whose pinned connection has been idle since before `cutoff`, to
    /// abort them; their next statement is refused ([`Routes::was_reaped`]).
    pub fn take_idle_transactions(&self, cutoff: std::time::Instant) -> Leftovers {
        let mut out = Leftovers::default();
        let stale = self
            .lock()
            .sessions
            .take_stale(|p| (p.since < cutoff).then_some(p.txn_number));
        for (lsid, pinned) in stale {
            self.metrics.transactions_reaped_total.inc();
            out.abort_transaction(lsid, pinned);
        }
        out
    }

    /// Whether the gateway aborted transaction `txn` of session `lsid` for being idle.
    pub fn was_reaped(&self, lsid: &[u8], txn: i64) -> bool {
        self.lock().sessions.was_reaped(lsid, txn)
    }

    /// A client connection left: takes what it leaves behind, for [`Leftovers::release`].
    ///
    /// Always the cursors it opened without a session, which nobody else can continue. Of the
    /// sessions it was this gateway's last user of: without a shared key, everything (their
    /// cursors are killed, their transaction aborted and the sessions ended, since no other
    /// gateway can continue them). With one ([`Routes::with_shared_sessions`]), the driver
    /// may go on in such a session through another gateway, so the session is not ended and
    /// its cursors are not killed: they are forgotten here (and counted off their opener's
    /// bounds), left to the upstream's own timeouts or to the driver's `killCursors` and
    /// `endSessions`, and another gateway, or this one again, adopts them by their id. A
    /// load-balanced connection (`bound`) also takes every cursor it opened and the open
    /// transaction of every session it used, since a load-balanced driver pins those to the
    /// connection.
    pub fn leave(&self, connection: i64, used: &UsedSessions, bound: bool) -> Leftovers {
        let mut out = Leftovers::default();
        let orphans = {
            let mut tables = self.lock();
            let ended = tables.sessions.leave(used.keys());
            let gone: HashSet<Vec<u8>> = ended.iter().map(|e| e.lsid.clone()).collect();
            for e in ended {
                match (self.shared_sessions, e.pinned) {
                    (false, pinned) => out.end_session(e.lsid, pinned),
                    // A pinned connection nothing here could ever release: its transaction is
                    // aborted (only a load-balanced client pins one when the key is shared).
                    (true, Some(pinned)) => out.abort_transaction(e.lsid, pinned),
                    (true, None) => {}
                }
            }
            if bound {
                for lsid in used.keys().iter().filter(|k| !gone.contains(*k)) {
                    if let Some(pinned) = tables.sessions.take_pinned(lsid) {
                        out.abort_transaction(lsid.clone(), pinned);
                    }
                }
            }
            tables.cursors.take_orphans(connection, &gone, bound)
        };
        let mut by_ns: HashMap<(Arc<str>, String), Vec<i64>> = HashMap::new();
        for (id, c) in orphans {
            self.forget(&c);
            let kill = match c.owner {
                Owner::Connection(_) => true,
                Owner::Session(_) => {
                    !self.shared_sessions || (bound && c.opener.connection == connection)
                }
            };
            if !kill {
                c.conn.note_handed_off();
                self.metrics.cursors_handed_off_total.inc();
                out.handed_off += 1;
                continue;
            }
            by_ns
                .entry((c.conn.address.clone(), c.ns))
                .or_default()
                .push(id);
        }
        out.cursors = by_ns;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CursorLimits = CursorLimits {
        per_client: 1000,
        per_user: 5000,
    };

    fn opener(connection: i64) -> Opener {
        Opener {
            connection,
            user: None,
        }
    }

    #[test]
    fn a_cursor_over_the_bound_is_not_recorded() {
        let metrics = Arc::new(Metrics::default());
        let routes = Routes::new(metrics.clone());
        let conn = Arc::new(ConnMeta::default());
        let limits = CursorLimits {
            per_client: 1,
            per_user: 10,
        };
        routes
            .add_cursor(1, "db.a", Owner::Connection(7), opener(7), &conn, limits)
            .unwrap();
        let refused = routes.add_cursor(2, "db.a", Owner::Connection(7), opener(7), &conn, limits);
        assert_eq!(refused, Err(CursorLimit::Client(1)));
        assert!(!routes.may_use_cursor(2, None, 7, &UsedSessions::default()));
        assert_eq!(conn.open_cursors.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.open_cursors.get(), 1);
        routes.remove_cursor(1);
        assert_eq!(metrics.open_cursors.get(), 0);
        routes
            .add_cursor(2, "db.a", Owner::Connection(7), opener(7), &conn, limits)
            .unwrap();
    }

    /// A real lsid document: leftovers keep only sessions whose key parses as one.
    fn lsid(n: u8) -> Vec<u8> {
        bson::rawdoc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![n; 16] } }
            .into_bytes()
    }

    #[test]
    fn cursors_are_counted_and_released_when_their_owner_leaves() {
        let metrics = Arc::new(Metrics::default());
        let routes = Routes::new(metrics.clone());
        let conn = Arc::new(ConnMeta::default());
        let mut used = UsedSessions::default();
        let s = lsid(1);
        routes.note_session(&mut used, &s, None);
        routes
            .add_cursor(
                1,
                "db.a",
                Owner::Session(s.clone()),
                opener(7),
                &conn,
                LIMITS,
            )
            .unwrap();
        routes
            .add_cursor(2, "db.b", Owner::Connection(7), opener(7), &conn, LIMITS)
            .unwrap();
        routes
            .add_cursor(0, "db.c", Owner::Connection(7), opener(7), &conn, LIMITS)
            .unwrap();
        assert_eq!(
            conn.open_cursors.load(Ordering::Relaxed),
            2,
            "id 0 is no cursor"
        );
        assert!(routes.may_use_cursor(1, Some(&s), 9, &UsedSessions::default()));
        assert!(routes.may_use_cursor(2, None, 7, &used));
        assert!(!routes.may_use_cursor(2, None, 8, &used));
        let left = routes.leave(7, &used, false);
        assert_eq!(left.cursors.len(), 2, "both namespaces");
        assert_eq!(left.ended_sessions(), 1);
        assert_eq!(conn.open_cursors.load(Ordering::Relaxed), 0);
        assert!(!routes.may_use_cursor(1, Some(&s), 9, &used));
    }

    #[test]
    fn a_session_shared_by_two_connections_outlives_the_first() {
        let routes = Routes::new(Arc::new(Metrics::default()));
        let conn = Arc::new(ConnMeta::default());
        let (mut a, mut b) = (UsedSessions::default(), UsedSessions::default());
        routes.note_session(&mut a, b"S", None);
        routes.note_session(&mut b, b"S", None);
        routes
            .add_cursor(
                1,
                "db.a",
                Owner::Session(b"S".to_vec()),
                opener(1),
                &conn,
                LIMITS,
            )
            .unwrap();
        let left = routes.leave(1, &a, false);
        assert!(left.cursors.is_empty() && left.ended_sessions() == 0);
        assert!(routes.may_use_cursor(1, None, 2, &b));
        assert_eq!(routes.remove_cursor(1).as_deref(), Some("db.a"));
        assert_eq!(routes.remove_cursor(1), None);
        assert!(!routes.may_use_cursor(1, None, 2, &b));
        assert_eq!(conn.open_cursors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_load_balanced_connection_takes_the_cursors_it_opened_though_the_session_lives_on() {
        let routes = Routes::new(Arc::new(Metrics::default()));
        let conn = Arc::new(ConnMeta::default());
        let (mut a, mut b) = (UsedSessions::default(), UsedSessions::default());
        routes.note_session(&mut a, b"S", None);
        routes.note_session(&mut b, b"S", None);
        for (id, opened_by) in [(1, 1), (2, 2)] {
            let owner = Owner::Session(b"S".to_vec());
            routes
                .add_cursor(id, "db.a", owner, opener(opened_by), &conn, LIMITS)
                .unwrap();
        }
        let left = routes.leave(1, &a, true);
        assert_eq!(left.ended_sessions(), 0, "B still uses the session");
        let killed: Vec<i64> = left.cursors.values().flatten().copied().collect();
        assert_eq!(killed, [1], "only the cursor connection 1 opened");
        assert!(routes.may_use_cursor(2, None, 2, &b));
    }

    #[test]
    fn with_a_shared_key_a_departing_gateway_hands_its_sessions_cursors_off() {
        let metrics = Arc::new(Metrics::default());
        let routes = Routes::with_shared_sessions(metrics.clone());
        let conn = Arc::new(ConnMeta::default());
        let mut used = UsedSessions::default();
        let s = lsid(1);
        routes.note_session(&mut used, &s, Some("u"));
        assert!(!routes.user_session_admits(b"other", "u", 1));
        let session_owned = Owner::Session(s.clone());
        routes
            .add_cursor(1, "db.a", session_owned, opener(7), &conn, LIMITS)
            .unwrap();
        routes
            .add_cursor(2, "db.b", Owner::Connection(7), opener(7), &conn, LIMITS)
            .unwrap();
        let left = routes.leave(7, &used, false);
        assert_eq!(left.ended_sessions(), 0, "the driver may use it elsewhere");
        let killed: Vec<i64> = left.cursors.values().flatten().copied().collect();
        assert_eq!(killed, [2], "only the cursor opened without a session");
        assert_eq!(left.handed_off, 1);
        // Forgotten here, counted off every bound, and the connection kept for the cursor.
        assert_eq!(routes.counts(), (0, 0));
        assert!(
            routes.user_session_admits(b"other", "u", 1),
            "off the user's bound"
        );
        assert_eq!(routes.cursors_opened_by(7), 0);
        assert_eq!(metrics.open_cursors.get(), 0);
        assert_eq!(conn.open_cursors.load(Ordering::Relaxed), 0);
        assert!(conn.may_carry_cursors(std::time::Duration::from_secs(600)));
        assert!(!conn.may_carry_cursors(std::time::Duration::ZERO));
        // The session goes on through this gateway too: its cursor is adopted again by id.
        assert_eq!(routes.cursor_member(1), None);
    }

    #[test]
    fn with_a_shared_key_a_load_balanced_connection_still_takes_its_cursors() {
        let routes = Routes::with_shared_sessions(Arc::new(Metrics::default()));
        let conn = Arc::new(ConnMeta::default());
        let (mut a, mut b) = (UsedSessions::default(), UsedSessions::default());
        routes.note_session(&mut a, b"S", None);
        routes.note_session(&mut b, b"T", None);
        for (id, opened_by, session) in [(1, 1, b"S"), (2, 2, b"T")] {
            let owner = Owner::Session(session.to_vec());
            routes
                .add_cursor(id, "db.a", owner, opener(opened_by), &conn, LIMITS)
                .unwrap();
        }
        let left = routes.leave(1, &a, true);
        assert_eq!(left.ended_sessions(), 0);
        let killed: Vec<i64> = left.cursors.values().flatten().copied().collect();
        assert_eq!(
            killed,
            [1],
            "the cursor the load-balanced connection opened"
        );
        assert_eq!(left.handed_off, 0);
        let left = routes.leave(2, &b, false);
        assert!(left.cursors.is_empty() && left.handed_off == 1);
    }
}
