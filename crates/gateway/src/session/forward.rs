//! Forwarding: the exchange with the upstream for one request, and the bookkeeping it needs —
//! the session is registered for the client once the upstream has answered, a transaction's
//! statements go to the connection pinned for it, cursors in replies are recorded for their
//! owner within the per-client and per-user bounds, and `getMore`/`killCursors` reach the
//! upstream only for cursors the client owns. A cursor the gateway stops tracking is killed
//! upstream before its connection is reused, so nothing is left open that no one can close.

use std::sync::Arc;
use std::time::Instant;

use bson::doc;
use bytes::BytesMut;
use mongomux_wire::{rewrite_ids, strip_checksum, MsgFlags, OpMsg};

use super::reply::Outcome;
use super::{client_gone, Session};
use crate::command::reply::ReplyFacts;
use crate::command::CommandView;
use crate::error::GatewayError;
use crate::route::{CursorLimit, Opener, Owner, Pinned};
use crate::upstream::{ConnMeta, PooledConn, UpstreamError};

impl Session {
    /// Forwards a request upstream and relays the reply, keeping the routing tables current.
    pub(super) async fn forward(&mut self, mut frame: BytesMut, view: &CommandView) -> Outcome {
        let in_txn = view.in_transaction;
        if let Err(e) = self.check_session_bound(view) {
            return self.replier().error(view.request_id, e, in_txn);
        }
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
        let reply = match result {
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
        self.settle(conn, reply, view).await
    }

    /// After a completed exchange: records the session and the reply's cursor, kills a cursor
    /// the gateway will not track, puts the connection back (or closes it when its state is in
    /// doubt), and answers the client.
    async fn settle(
        &mut self,
        mut conn: PooledConn,
        reply: BytesMut,
        view: &CommandView,
    ) -> Outcome {
        let in_txn = view.in_transaction;
        let meta = conn.conn().meta.clone();
        let (logged_out, release) = match OpMsg::parse(&reply) {
            Ok(msg) => {
                // Only now has the upstream seen the session: a request that never got an
                // answer leaves nothing behind to end or to own.
                if let Some(lsid) = &view.lsid {
                    self.shared
                        .routes
                        .note_session(&mut self.used_sessions, lsid.as_bytes());
                }
                let facts = ReplyFacts::read(msg.body);
                let release = self.track_reply(facts, view, &meta);
                (upstream_logged_out(facts, msg.body), release)
            }
            Err(_) if view.more_to_come => return Outcome::Silent,
            Err(e) => {
                // The upstream's byte stream is suspect: close that connection (drop) and tell
                // the client in a reply it can parse.
                drop(conn);
                let e = UpstreamError::BadReply(e);
                return self.replier().error(view.request_id, e.into(), in_txn);
            }
        };
        if logged_out {
            // However it happened, this connection is no longer the gateway's user: its state
            // is in doubt, so it is closed rather than handed to the next client.
            tracing::warn!(peer = %self.peer, "upstream connection lost its login; closing it");
        }
        let mut reuse = !logged_out;
        let mut refusal = None;
        if let Some(r) = release {
            // A cursor the gateway stops tracking is killed on the connection it lives on,
            // before that connection serves anyone else; if that fails, the connection closes.
            reuse &= kill_cursor(&mut conn, &r.ns, r.id, view).await;
            refusal = r.refusal;
        }
        if reuse {
            self.keep_or_release(conn, view);
        }
        match (refusal, view.more_to_come) {
            (_, true) => Outcome::Silent,
            (Some(e), false) => self.replier().error(view.request_id, e, in_txn),
            (None, false) => self.relay(reply, view),
        }
    }

    /// The upstream's reply as the client's reply to `view`.
    fn relay(&self, mut reply: BytesMut, view: &CommandView) -> Outcome {
        let (_, len) = strip_checksum(&mut reply, 0);
        reply.truncate(len);
        rewrite_ids(&mut reply, self.shared.ids.next_reply_id(), view.request_id);
        Outcome::Reply(reply.freeze())
    }

    /// Refuses a request whose session would be one more than `max_sessions_per_client`.
    fn check_session_bound(&self, view: &CommandView) -> Result<(), GatewayError> {
        let Some(lsid) = &view.lsid else {
            return Ok(());
        };
        let limit = self.shared.live.settings.load().max_sessions_per_client;
        if self.used_sessions.admits(lsid.as_bytes(), limit) {
            return Ok(());
        }
        Err(GatewayError::TooManySessions(format!(
            "this connection already uses {limit} logical sessions (max_sessions_per_client); end some or open a new connection"
        )))
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

    /// Records cursors opened, exhausted or lost according to a reply. Returns a cursor the
    /// gateway will not track, which the caller must kill upstream: one a failed `getMore`
    /// leaves (the table forgets it, and the server may still hold it), one opened by an
    /// unacknowledged request (its client never learns the id), or one over the client's or the
    /// user's bound (then with the error the client gets instead of the cursor).
    fn track_reply(
        &mut self,
        facts: ReplyFacts<'_>,
        view: &CommandView,
        meta: &Arc<ConnMeta>,
    ) -> Option<Release> {
        let routes = &self.shared.routes;
        if let Some(id) = view.cursor_id {
            return match facts.cursor {
                Some((0, _)) => {
                    routes.remove_cursor(id);
                    None
                }
                Some(_) => None,
                None if facts.error_code.is_some() => {
                    let ns = routes.remove_cursor(id)?;
                    Some(Release::quietly(id, ns))
                }
                None => None,
            };
        }
        let (id, ns) = facts.cursor.filter(|(id, _)| *id != 0)?;
        if view.more_to_come {
            return Some(Release::quietly(id, ns.to_string()));
        }
        let owner = match &view.lsid {
            Some(lsid) => Owner::Session(lsid.as_bytes().to_vec()),
            None => Owner::Connection(self.connection_id),
        };
        let opener = Opener {
            connection: self.connection_id,
            // Length-prefixed: "a.b" + "c" and "a" + "b.c" are two users.
            user: self
                .auth
                .identity
                .as_ref()
                .map(|u| format!("{}:{}.{}", u.db.len(), u.db, u.name)),
        };
        let limits = self.shared.live.settings.load().cursor_limits();
        let refused = routes
            .add_cursor(id, ns, owner, opener, meta, limits)
            .err()?;
        let why = match refused {
            CursorLimit::Client(n) => format!(
                "this connection already has {n} open cursors (max_cursors_per_client); close some before opening more"
            ),
            CursorLimit::User(n) => format!(
                "this user already has {n} open cursors (max_cursors_per_user); close some before opening more"
            ),
        };
        tracing::debug!(peer = %self.peer, "cursor over its bound killed");
        Some(Release {
            id,
            ns: ns.to_string(),
            refusal: Some(GatewayError::TooManyCursors(why)),
        })
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

/// Whether a reply says the upstream connection itself is not logged in (code 13, "requires
/// authentication"), which no request of a client can cause once connection-state commands are
/// never forwarded; should it happen anyway, the connection must not be reused.
fn upstream_logged_out(facts: ReplyFacts<'_>, body: &bson::RawDocument) -> bool {
    facts.error_code == Some(13)
        && body
            .get_str("errmsg")
            .is_ok_and(|m| m.contains("requires authentication"))
}

/// A cursor the gateway stops tracking, to be killed upstream.
struct Release {
    id: i64,
    ns: String,
    /// The error the client gets instead of the reply, if any.
    refusal: Option<GatewayError>,
}

impl Release {
    fn quietly(id: i64, ns: String) -> Release {
        Release {
            id,
            ns,
            refusal: None,
        }
    }
}

/// Kills cursor `id` of `ns` on `conn` (in the request's session, which may own it). Returns
/// whether the connection is still clean: an `{ok: 0}` answer is (the cursor is gone either
/// way); a transport failure is not, and the caller drops the connection.
async fn kill_cursor(conn: &mut PooledConn, ns: &str, id: i64, view: &CommandView) -> bool {
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    let mut kill = doc! { "killCursors": coll, "cursors": [id], "$db": db };
    if let Some(lsid) = &view.lsid {
        if let Ok(lsid) = bson::Document::from_reader(lsid.as_bytes()) {
            kill.insert("lsid", lsid);
        }
    }
    match conn.conn().command(&kill).await {
        Ok(_) => true,
        Err(e) => e.connection_is_clean(),
    }
}
