//! Per-client routing state: the cursors a client opened, the logical sessions it used and the
//! upstream connections its open transactions pin.
//!
//! All upstream connections authenticate as the same gateway user, so the upstream cannot tell
//! clients apart; this table is what keeps one client from continuing or killing another
//! client's cursor. It is owned by the client's task (no locks) and torn down when the client
//! disconnects: cursors are killed upstream, transactions aborted, sessions ended.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bson::{doc, Bson, RawDocument, RawDocumentBuf};

use crate::context::Context;
use crate::upstream::{ConnMeta, PooledConn};

/// Most distinct sessions remembered per client for `endSessions` at disconnect; drivers reuse
/// a handful, and sessions beyond this simply expire upstream.
const MAX_TRACKED_SESSIONS: usize = 1000;

/// A cursor a client owns.
#[derive(Debug)]
pub struct OwnedCursor {
    /// `db.collection` the cursor reads.
    pub ns: String,
    /// The upstream connection that created it.
    pub conn: Arc<ConnMeta>,
}

/// A transaction in progress and the connection it is pinned to.
#[derive(Debug)]
pub struct Pinned {
    /// The pinned connection.
    pub conn: PooledConn,
    /// The transaction's number, for aborting it if the client vanishes.
    pub txn_number: i64,
    /// The session document, as the client sent it.
    pub lsid: RawDocumentBuf,
}

/// Routing state of one client connection.
#[derive(Debug, Default)]
pub struct ClientState {
    cursors: HashMap<i64, OwnedCursor>,
    sessions: HashSet<Vec<u8>>,
    pinned: HashMap<Vec<u8>, Pinned>,
}

impl ClientState {
    /// Whether the client owns cursor `id`.
    pub fn owns_cursor(&self, id: i64) -> bool {
        self.cursors.contains_key(&id)
    }

    /// Records a cursor the upstream opened for this client.
    pub fn add_cursor(&mut self, ctx: &Context, id: i64, ns: &str, conn: &Arc<ConnMeta>) {
        if id == 0 {
            return;
        }
        conn.open_cursors.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.open_cursors.fetch_add(1, Ordering::Relaxed);
        let old = self.cursors.insert(
            id,
            OwnedCursor {
                ns: ns.to_string(),
                conn: conn.clone(),
            },
        );
        if let Some(old) = old {
            Self::forget(ctx, old);
        }
    }

    /// Forgets a cursor that is exhausted or killed.
    pub fn remove_cursor(&mut self, ctx: &Context, id: i64) {
        if let Some(c) = self.cursors.remove(&id) {
            Self::forget(ctx, c);
        }
    }

    fn forget(ctx: &Context, c: OwnedCursor) {
        c.conn.open_cursors.fetch_sub(1, Ordering::Relaxed);
        ctx.metrics.open_cursors.fetch_sub(1, Ordering::Relaxed);
    }

    /// Remembers a session id the client used.
    pub fn note_session(&mut self, lsid: &RawDocument) {
        if self.sessions.len() < MAX_TRACKED_SESSIONS {
            self.sessions.insert(lsid.as_bytes().to_vec());
        }
    }

    /// Forgets sessions the client ended itself.
    pub fn forget_session(&mut self, lsid: &[u8]) {
        self.sessions.remove(lsid);
    }

    /// Takes the connection pinned for session `lsid`, if a transaction holds one.
    pub fn take_pinned(&mut self, lsid: &[u8]) -> Option<Pinned> {
        self.pinned.remove(lsid)
    }

    /// Pins a connection to session `lsid` until its transaction ends.
    pub fn pin(&mut self, pinned: Pinned) {
        self.pinned.insert(pinned.lsid.as_bytes().to_vec(), pinned);
    }

    /// Releases everything the client held upstream: aborts open transactions, kills its
    /// cursors, ends its sessions. Best effort: failures are logged, never surfaced.
    pub async fn teardown(mut self, ctx: &Context) {
        for (_, mut p) in self.pinned.drain() {
            let abort = doc! {
                "abortTransaction": 1,
                "lsid": Bson::Document(p.lsid.to_document().unwrap_or_default()),
                "txnNumber": p.txn_number,
                "autocommit": false,
                "$db": "admin",
            };
            // A failed abort leaves the connection's state unknown: drop it instead.
            if p.conn.conn().command(&abort).await.is_ok() {
                p.conn.release();
            }
        }
        let mut by_ns: HashMap<String, Vec<i64>> = HashMap::new();
        for (id, c) in self.cursors.drain() {
            by_ns.entry(c.ns.clone()).or_default().push(id);
            Self::forget(ctx, c);
        }
        let sessions: Vec<Bson> = self
            .sessions
            .drain()
            .filter_map(|bytes| RawDocumentBuf::from_bytes(bytes).ok())
            .filter_map(|d| d.to_document().ok().map(Bson::Document))
            .collect();
        if by_ns.is_empty() && sessions.is_empty() {
            return;
        }
        let Ok(mut conn) = ctx.pool.checkout().await else {
            tracing::debug!("no upstream connection to release a departed client's cursors");
            return;
        };
        let mut clean = true;
        for (ns, ids) in by_ns {
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
fn is_transport_error<T>(r: &Result<T, crate::GatewayError>) -> bool {
    matches!(r, Err(e) if !matches!(e, crate::GatewayError::UpstreamRefused { .. }))
}
