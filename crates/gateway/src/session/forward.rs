//! Forwarding: the exchange with the upstream for one request, and the bookkeeping it needs —
//! the session is registered for the client, a transaction's statements go to the connection
//! pinned for it, cursors in replies are recorded for their owner, and `getMore`/`killCursors`
//! reach the upstream only for cursors the client owns.

use std::sync::Arc;
use std::time::Instant;

use bson::doc;
use bytes::BytesMut;
use mongomux_wire::{rewrite_ids, strip_checksum, MsgFlags, OpMsg};

use super::reply::Outcome;
use super::{client_gone, Session};
use crate::command::reply::{reply_cursor, reply_error_code};
use crate::command::CommandView;
use crate::error::GatewayError;
use crate::route::{Owner, Pinned};
use crate::upstream::{ConnMeta, PooledConn, UpstreamError};

impl Session {
    /// Forwards a request upstream and relays the reply, keeping the routing tables current.
    pub(super) async fn forward(&mut self, mut frame: BytesMut, view: &CommandView) -> Outcome {
        if let Some(lsid) = &view.lsid {
            self.shared
                .routes
                .note_session(&mut self.used_sessions, lsid.as_bytes());
        }
        let in_txn = view.in_transaction;
        let mut conn = match self.connection_for(view).await {
            Ok(c) => c,
            Err(e) => return self.replier().error(view.request_id, e.into(), in_txn),
        };
        // Exhaust replies cannot be multiplexed, so the upstream is never allowed to stream.
        // moreToCome is cleared too: some servers (FerretDB 1.x) reply to it anyway, and a
        // reply nobody reads would poison the pooled connection. The gateway waits for that
        // reply and drops it, so the client still gets fire-and-forget and the connection
        // goes back clean, with this client's operations kept in order.
        let (_, len) = strip_checksum(
            &mut frame,
            MsgFlags::EXHAUST_ALLOWED | MsgFlags::MORE_TO_COME,
        );
        frame.truncate(len);
        let started = Instant::now();
        let result = tokio::select! {
            r = conn.conn().round_trip(&mut frame) => r,
            // A client that hung up will never read the reply: stop waiting for it and free the
            // slot. Dropping `conn` mid-exchange closes it, which also cancels the operation on
            // servers that tie operations to their connection.
            // An unacknowledged write is still carried out when its client leaves at once.
            _ = client_gone(self.framed.get_ref().tcp()), if !view.more_to_come => {
                tracing::debug!(peer = %self.peer, "client left while its request was upstream");
                return Outcome::Close;
            }
        };
        self.shared
            .metrics
            .upstream_latency
            .observe(started.elapsed());
        let mut reply = match result {
            // Dropping `conn` here closes it: its state is unknown.
            Ok(r) => r,
            Err(e) if view.more_to_come => {
                tracing::debug!(peer = %self.peer, error = %e, "unacknowledged write failed upstream");
                return Outcome::Silent;
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "upstream exchange failed");
                return self.replier().error(view.request_id, e.into(), in_txn);
            }
        };
        if view.more_to_come {
            self.keep_or_release(conn, view);
            return Outcome::Silent;
        }
        let meta = conn.conn().meta.clone();
        match OpMsg::parse(&reply) {
            Ok(msg) => self.track_reply(msg.body, view, &meta),
            Err(e) => {
                // The upstream's byte stream is suspect: close that connection (drop) and tell
                // the client in a reply it can parse.
                drop(conn);
                let e = UpstreamError::BadReply(e);
                return self.replier().error(view.request_id, e.into(), in_txn);
            }
        }
        self.keep_or_release(conn, view);
        let (_, len) = strip_checksum(&mut reply, 0);
        reply.truncate(len);
        rewrite_ids(&mut reply, self.shared.ids.next_reply_id(), view.request_id);
        Outcome::Reply(reply.freeze())
    }

    /// The connection a request goes out on: its transaction's pinned one, a newly pinned one
    /// for a transaction's first statement, or any pooled one.
    async fn connection_for(&self, view: &CommandView) -> Result<PooledConn, UpstreamError> {
        let pinned = match (&view.lsid, view.in_transaction) {
            (Some(lsid), true) => self.shared.routes.take_pinned(lsid.as_bytes()),
            _ => None,
        };
        match pinned {
            Some(p) => Ok(p.conn),
            None if view.in_transaction && view.start_transaction => {
                self.shared.pool.checkout_pinned().await
            }
            None => self.shared.pool.checkout().await,
        }
    }

    /// After a clean exchange: keep a transaction's connection pinned until the transaction
    /// ends, otherwise return it to the pool.
    fn keep_or_release(&mut self, conn: PooledConn, view: &CommandView) {
        match (&view.lsid, view.txn_number) {
            (Some(lsid), Some(txn_number))
                if view.in_transaction && !view.ends_transaction() && conn.is_pinned() =>
            {
                let pinned = Pinned { conn, txn_number };
                if let Some(back) = self.shared.routes.pin(lsid.as_bytes(), pinned) {
                    back.conn.release();
                }
            }
            _ => conn.release(),
        }
    }

    /// Whether this request may continue or kill cursor `id`.
    pub(super) fn may_use_cursor(&self, id: i64, view: &CommandView) -> bool {
        let lsid = view.lsid.as_ref().map(|l| l.as_bytes());
        self.shared
            .routes
            .may_use_cursor(id, lsid, self.connection_id, &self.used_sessions)
    }

    /// Records cursors opened, exhausted or lost according to a reply.
    fn track_reply(&mut self, body: &bson::RawDocument, view: &CommandView, meta: &Arc<ConnMeta>) {
        if let Some(id) = view.cursor_id {
            let gone = match reply_cursor(body) {
                Some((next, _)) => next == 0,
                None => reply_error_code(body).is_some(),
            };
            if gone {
                self.shared.routes.remove_cursor(id);
            }
            return;
        }
        if let Some((id, ns)) = reply_cursor(body) {
            let owner = match &view.lsid {
                Some(lsid) => Owner::Session(lsid.as_bytes().to_vec()),
                None => Owner::Connection(self.connection_id),
            };
            self.shared.routes.add_cursor(id, ns, owner, meta);
        }
    }

    /// killCursors: only the client's own cursors reach the upstream; the others are reported
    /// as not found, exactly as a server reports unknown ids.
    pub(super) async fn kill_cursors(&mut self, frame: BytesMut, view: &CommandView) -> Outcome {
        let Some(ids) = &view.kill_cursor_ids else {
            return self.replier().error(
                view.request_id,
                GatewayError::BadCommand("killCursors needs a cursors array".into()),
                false,
            );
        };
        let (owned, foreign): (Vec<i64>, Vec<i64>) =
            ids.iter().partition(|id| self.may_use_cursor(**id, view));
        for id in &owned {
            self.shared.routes.remove_cursor(*id);
        }
        if foreign.is_empty() {
            return self.forward(frame, view).await;
        }
        let mut reply = doc! {
            "cursorsKilled": [], "cursorsNotFound": foreign.clone(),
            "cursorsAlive": [], "cursorsUnknown": [], "ok": 1.0,
        };
        if !owned.is_empty() {
            let coll = view.collection.clone().unwrap_or_default();
            let kill = doc! { "killCursors": coll, "cursors": owned, "$db": &view.db };
            let mut conn = match self.shared.pool.checkout().await {
                Ok(c) => c,
                Err(e) => return self.replier().error(view.request_id, e.into(), false),
            };
            let up = match conn.conn().command(&kill).await {
                Ok(up) => up,
                Err(e) => return self.replier().error(view.request_id, e.into(), false),
            };
            conn.release();
            for key in ["cursorsKilled", "cursorsAlive", "cursorsUnknown"] {
                if let Ok(v) = up.get_array(key) {
                    reply.insert(key, v.clone());
                }
            }
            let mut not_found: Vec<bson::Bson> =
                up.get_array("cursorsNotFound").cloned().unwrap_or_default();
            not_found.extend(foreign.into_iter().map(bson::Bson::Int64));
            reply.insert("cursorsNotFound", not_found);
        }
        if view.more_to_come {
            return Outcome::Silent;
        }
        self.replier().reply(view.request_id, &reply)
    }

    /// endSessions: forwarded when the upstream knows sessions; always answered `ok`, since a
    /// session the upstream never saw is simply gone either way.
    pub(super) async fn end_sessions(&mut self, frame: BytesMut, view: &CommandView) -> Outcome {
        let _ = self.forward(frame, view).await;
        if view.more_to_come {
            return Outcome::Silent;
        }
        self.replier().reply(view.request_id, &doc! { "ok": 1.0 })
    }
}
