//! Routing state shared by all client connections: who owns each cursor, which client
//! connections use each logical session, and which upstream connection each open transaction
//! is pinned to.
//!
//! All upstream connections authenticate as the same gateway user, so the upstream cannot tell
//! clients apart; this table is what keeps one client from continuing or killing another's
//! cursor. A cursor belongs to the logical session (`lsid`) it was opened under, because a
//! driver's pool may send the `getMore` on any of its connections but always with the cursor's
//! session; with client authentication the lsid is already namespaced per identity, so two
//! identities never share a key. Cursors opened without a session belong to the one client
//! connection that opened them.
//!
//! A session's cursors are killed, its transaction aborted and the session ended upstream when
//! the last client connection that used it disconnects: that is when the driver client that
//! owned it is gone.
//!
//! # Concurrency note
//! One mutex guards the table. It is taken only for cursor replies, getMore/killCursors,
//! transaction statements and the first use of a session on a connection, never across an
//! await, so it is never held while talking to the upstream.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bson::{doc, Bson, RawDocumentBuf};

use crate::context::Context;
use crate::upstream::{ConnMeta, PooledConn};

/// Most distinct sessions one client connection registers; drivers reuse a handful.
const MAX_SESSIONS_PER_CONNECTION: usize = 1000;

/// Who may use a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Requests carrying this lsid (raw bytes of the lsid document).
    Session(Vec<u8>),
    /// The client connection with this gateway-local id (cursor opened without a session).
    Connection(i64),
}

#[derive(Debug)]
struct CursorEntry {
    owner: Owner,
    ns: String,
    conn: Arc<ConnMeta>,
}

/// A transaction in progress and the connection it is pinned to.
#[derive(Debug)]
pub struct Pinned {
    /// The pinned connection.
    pub conn: PooledConn,
    /// The transaction's number, for aborting it if its client vanishes.
    pub txn_number: i64,
}

#[derive(Debug, Default)]
struct SessionEntry {
    live_connections: usize,
    pinned: Option<Pinned>,
}

#[derive(Debug, Default)]
struct Table {
    cursors: HashMap<i64, CursorEntry>,
    sessions: HashMap<Vec<u8>, SessionEntry>,
}

/// What a departing session or connection leaves to clean up upstream.
#[derive(Debug, Default)]
pub struct Leftovers {
    cursors: HashMap<String, Vec<i64>>,
    sessions: Vec<RawDocumentBuf>,
    transactions: Vec<(RawDocumentBuf, Pinned)>,
}

/// The gateway-wide routing table.
#[derive(Debug, Default)]
pub struct Routing {
    table: Mutex<Table>,
}

impl Routing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("routing lock")
    }

    /// Whether a request may use cursor `id`: one carrying the cursor's session, or one
    /// without a session (drivers send killCursors for a dropped cursor that way) on a client
    /// connection that has used the cursor's session, and so belongs to the same driver client.
    pub fn may_use_cursor(
        &self,
        id: i64,
        lsid: Option<&[u8]>,
        connection: i64,
        connection_sessions: &HashSet<Vec<u8>>,
    ) -> bool {
        match self.lock().cursors.get(&id).map(|c| &c.owner) {
            Some(Owner::Session(s)) => match lsid {
                Some(l) => l == s.as_slice(),
                None => connection_sessions.contains(s),
            },
            Some(Owner::Connection(c)) => *c == connection,
            None => false,
        }
    }

    /// Records a cursor the upstream opened.
    pub fn add_cursor(&self, ctx: &Context, id: i64, ns: &str, owner: Owner, conn: &Arc<ConnMeta>) {
        if id == 0 {
            return;
        }
        conn.open_cursors.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.open_cursors.fetch_add(1, Ordering::Relaxed);
        let entry = CursorEntry {
            owner,
            ns: ns.to_string(),
            conn: conn.clone(),
        };
        if let Some(old) = self.lock().cursors.insert(id, entry) {
            forget(ctx, &old);
        }
    }

    /// Forgets a cursor that is exhausted or killed.
    pub fn remove_cursor(&self, ctx: &Context, id: i64) {
        if let Some(old) = self.lock().cursors.remove(&id) {
            forget(ctx, &old);
        }
    }

    /// Registers that a client connection uses session `lsid`.
    pub fn join_session(&self, lsid: &[u8]) {
        self.lock()
            .sessions
            .entry(lsid.to_vec())
            .or_default()
            .live_connections += 1;
    }

    /// Takes the connection pinned for session `lsid`, if its transaction holds one.
    pub fn take_pinned(&self, lsid: &[u8]) -> Option<Pinned> {
        self.lock().sessions.get_mut(lsid)?.pinned.take()
    }

    /// Pins a connection to session `lsid` until its transaction ends. Returns it back when
    /// the session is no longer known (its last client left meanwhile).
    pub fn pin(&self, lsid: &[u8], pinned: Pinned) -> Option<Pinned> {
        match self.lock().sessions.get_mut(lsid) {
            Some(s) => {
                s.pinned = Some(pinned);
                None
            }
            None => Some(pinned),
        }
    }

    /// A client connection left: releases its own cursors, and everything of the sessions it
    /// was the last user of.
    pub fn leave(&self, ctx: &Context, connection: i64, sessions: &HashSet<Vec<u8>>) -> Leftovers {
        let mut out = Leftovers::default();
        let mut table = self.lock();
        let mut gone: HashSet<Vec<u8>> = HashSet::new();
        for key in sessions {
            if let Some(s) = table.sessions.get_mut(key) {
                s.live_connections = s.live_connections.saturating_sub(1);
                if s.live_connections == 0 {
                    let s = table.sessions.remove(key).expect("present");
                    if let Ok(doc) = RawDocumentBuf::from_bytes(key.clone()) {
                        if let Some(p) = s.pinned {
                            out.transactions.push((doc.clone(), p));
                        }
                        out.sessions.push(doc);
                    }
                    gone.insert(key.clone());
                }
            }
        }
        let mine: Vec<i64> = table
            .cursors
            .iter()
            .filter(|(_, c)| match &c.owner {
                Owner::Connection(id) => *id == connection,
                Owner::Session(s) => gone.contains(s),
            })
            .map(|(id, _)| *id)
            .collect();
        for id in mine {
            let c = table.cursors.remove(&id).expect("present");
            forget(ctx, &c);
            out.cursors.entry(c.ns).or_default().push(id);
        }
        out
    }
}

fn forget(ctx: &Context, c: &CursorEntry) {
    c.conn.open_cursors.fetch_sub(1, Ordering::Relaxed);
    ctx.metrics.open_cursors.fetch_sub(1, Ordering::Relaxed);
}

/// Sessions one client connection has registered.
#[derive(Debug, Default)]
pub struct ConnectionSessions {
    keys: HashSet<Vec<u8>>,
}

impl ConnectionSessions {
    /// Registers `lsid` for this connection on first use.
    pub fn note(&mut self, routing: &Routing, lsid: &[u8]) {
        if self.keys.len() < MAX_SESSIONS_PER_CONNECTION && !self.keys.contains(lsid) {
            self.keys.insert(lsid.to_vec());
            routing.join_session(lsid);
        }
    }

    /// The registered keys.
    pub fn keys(&self) -> &HashSet<Vec<u8>> {
        &self.keys
    }
}

impl Leftovers {
    /// Releases upstream what departed clients held: aborts their open transactions, kills
    /// their cursors, ends their sessions. Best effort: failures are logged, never surfaced.
    pub async fn release(self, ctx: &Context) {
        for (lsid, mut p) in self.transactions {
            let abort = doc! {
                "abortTransaction": 1,
                "lsid": Bson::Document(lsid.to_document().unwrap_or_default()),
                "txnNumber": p.txn_number,
                "autocommit": false,
                "$db": "admin",
            };
            // A failed abort leaves the connection's state unknown: drop it instead.
            if p.conn.conn().command(&abort).await.is_ok() {
                p.conn.release();
            }
        }
        let sessions: Vec<Bson> = self
            .sessions
            .iter()
            .filter_map(|d| d.to_document().ok().map(Bson::Document))
            .collect();
        if self.cursors.is_empty() && sessions.is_empty() {
            return;
        }
        let Ok(mut conn) = ctx.pool.checkout().await else {
            tracing::debug!("no upstream connection to release a departed client's cursors");
            return;
        };
        let mut clean = true;
        for (ns, ids) in self.cursors {
            let (db, coll) = ns.split_once('.').unwrap_or((ns.as_str(), ""));
            let kill = doc! { "killCursors": coll, "cursors": ids, "$db": db };
            clean &= !is_transport_error(&conn.conn().command(&kill).await);
        }
        if !sessions.is_empty() && clean {
            let end = doc! { "endSessions": sessions, "$db": "admin" };
            // Servers without sessions answer CommandNotFound; that is fine.
            clean &= !is_transport_error(&conn.conn().command(&end).await);
        }
        if clean {
            conn.release();
        }
    }
}

/// Whether a gateway command failed in a way that leaves its connection unusable (as opposed
/// to a clean `{ok: 0}` answer).
fn is_transport_error<T>(r: &Result<T, crate::upstream::UpstreamError>) -> bool {
    matches!(r, Err(e) if !e.connection_is_clean())
}
