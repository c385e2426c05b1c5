//! What departed clients leave behind upstream, and its release: open transactions are aborted,
//! cursors killed, sessions ended. Best effort: failures are logged, never surfaced, and a
//! connection whose state is in doubt after a failed clean-up command is closed, not reused.
//! Each command waits at most [`CLEANUP_REPLY_TIMEOUT`] for its reply: a half-open upstream
//! must not keep a departed client's connections checked out for ever.

use std::collections::HashMap;

use bson::{doc, Bson, RawDocumentBuf};

use super::Pinned;
use std::sync::Arc;

use crate::upstream::topology::select::Need;
use crate::upstream::topology::Topology;
use crate::upstream::UpstreamError;

/// Longest wait for the reply to one clean-up command (the default `upstream_timeout`).
const CLEANUP_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a departing client connection leaves to clean up upstream.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Cursor ids to kill, by the member they live on and namespace.
    pub cursors: HashMap<(Arc<str>, String), Vec<i64>>,
    sessions: Vec<RawDocumentBuf>,
    transactions: Vec<(RawDocumentBuf, Pinned)>,
    /// Cursors forgotten here but left open upstream, for another gateway to continue.
    pub handed_off: usize,
}

impl Leftovers {
    /// Adds a session whose last client left, with its pinned transaction if one was open.
    pub fn end_session(&mut self, lsid: Vec<u8>, pinned: Option<Pinned>) {
        let Ok(doc) = RawDocumentBuf::from_bytes(lsid) else {
            return;
        };
        if let Some(p) = pinned {
            self.transactions.push((doc.clone(), p));
        }
        self.sessions.push(doc);
    }

    /// Adds an open transaction to abort, of a session that lives on.
    pub fn abort_transaction(&mut self, lsid: Vec<u8>, pinned: Pinned) {
        if let Ok(doc) = RawDocumentBuf::from_bytes(lsid) {
            self.transactions.push((doc, pinned));
        }
    }

    /// Transactions to abort.
    pub fn transactions(&self) -> usize {
        self.transactions.len()
    }

    /// Sessions to end.
    pub fn ended_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Aborts the open transactions, kills the cursors and ends the sessions upstream.
    pub async fn release(self, upstream: &Arc<Topology>) {
        for (lsid, mut p) in self.transactions {
            let abort = doc! {
                "abortTransaction": 1,
                "lsid": Bson::Document(lsid.to_document().unwrap_or_default()),
                "txnNumber": p.txn_number,
                "autocommit": false,
                "$db": "admin",
            };
            // A failed abort leaves the connection's state unknown: drop it instead.
            if p.conn
                .conn()
                .command_within(&abort, CLEANUP_REPLY_TIMEOUT)
                .await
                .is_ok()
            {
                p.conn.release();
            }
        }
        let sessions: Vec<Bson> = self
            .sessions
            .iter()
            .filter_map(|d| d.to_document().ok().map(Bson::Document))
            .collect();
        // Each cursor dies on the member it lives on; a member that left took them along.
        for ((member, ns), ids) in self.cursors {
            let Ok(mut conn) = upstream.checkout_on(&member).await else {
                tracing::debug!("no upstream connection to release a departed client's cursors");
                continue;
            };
            let (db, coll) = ns.split_once('.').unwrap_or((ns.as_str(), ""));
            let kill = doc! { "killCursors": coll, "cursors": ids, "$db": db };
            if !is_transport_error(
                &conn
                    .conn()
                    .command_within(&kill, CLEANUP_REPLY_TIMEOUT)
                    .await,
            ) {
                conn.release();
            }
        }
        if sessions.is_empty() {
            return;
        }
        let Ok(mut conn) = upstream.checkout(Need::Write).await else {
            tracing::debug!("no upstream connection to end a departed client's sessions");
            return;
        };
        let end = doc! { "endSessions": sessions, "$db": "admin" };
        // Servers without sessions answer CommandNotFound; that is fine.
        if !is_transport_error(
            &conn
                .conn()
                .command_within(&end, CLEANUP_REPLY_TIMEOUT)
                .await,
        ) {
            conn.release();
        }
    }
}

/// Whether a gateway command failed in a way that leaves its connection unusable (as opposed
/// to a clean `{ok: 0}` answer).
fn is_transport_error<T>(r: &Result<T, UpstreamError>) -> bool {
    matches!(r, Err(e) if !e.connection_is_clean())
}
