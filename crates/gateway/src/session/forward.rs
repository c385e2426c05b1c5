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
use super::upstream_choice::{may_run_twice, take_one, NOT_RUN_RETRIES};
use super::{client_gone, Session};
use crate::command::reply::ReplyFacts;
use crate::command::CommandView;
use crate::error::GatewayError;
use crate::route::{CursorLimit, Opener, Owner};
use crate::upstream::error::{is_shutting_down, is_state_change, refused_before_running};
use crate::upstream::topology::server::TopologyVersion;
use crate::upstream::{ConnMeta, Flavor, PooledConn, UpstreamError};

impl Session {
    /// Forwards a request upstream and relays the reply, keeping the routing tables current.
    ///
    /// A reply saying the member is no longer primary (or is recovering), or a network error,
    /// marks the member Unknown; a request that may safely run again (a read outside a
    /// transaction, or a retryable write, which the server deduplicates by `txnNumber`) then
    /// goes once more to whichever member selection finds, waiting for an election if need be.
    pub(super) async fn forward(&mut self, frame: BytesMut, view: &CommandView) -> Outcome {
        let started = Instant::now();
        let outcome = self.forward_on(frame, view, None).await;
        self.note_if_slow(view, started.elapsed());
        outcome
    }

    /// Logs an operation that took `slow_op_threshold` or longer, from its arrival to its
    /// reply (waiting for a connection included), with who ran it and on what.
    fn note_if_slow(&self, view: &CommandView, took: std::time::Duration) {
        let threshold = self.shared.live.settings.load().slow_op_threshold;
        if took < threshold {
            return;
        }
        let user = self.auth.identity.as_ref().map(|u| u.name.as_str());
        // The collection is known where the authorizer collected the namespaces (users
        // configured); otherwise the database alone.
        let ns = match view.namespaces.first() {
            Some(n) => format!("{}.{}", n.db, n.coll.as_deref().unwrap_or("")),
            None => view.db.clone(),
        };
        tracing::info!(
            event = "slow_operation",
            peer = %self.peer,
            command = %view.name.escape_debug(),
            ns = %ns.escape_debug(),
            app = %self.app_name.as_deref().unwrap_or("").escape_debug(),
            user = %user.unwrap_or("").escape_debug(),
            millis = took.as_secs_f64() * 1000.0,
            "slow operation"
        );
    }

    /// [`Session::forward`], to the member `on` when it is given (cursors already untracked).
    async fn forward_on(
        &mut self,
        mut frame: BytesMut,
        view: &CommandView,
        on: Option<Arc<str>>,
    ) -> Outcome {
        let in_txn = view.in_transaction;
        if let Err(e) = self.admissible(view) {
            return self.replier().error(view.request_id, e, in_txn);
        }
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
        let dedups = !matches!(
            self.shared.upstream.upstream_info().map(|i| i.flavor),
            Some(Flavor::FerretDbV1)
        );
        let mut retry_left = may_run_twice(view, dedups);
        // A request that never ran (no connection could be set up for it, or the member
        // refused it before running it) may try another member whatever it is, outside a
        // transaction and a cursor's member; bounded, as members can fail one after another.
        let mut not_run_retries_left = if in_txn || on.is_some() {
            0
        } else {
            NOT_RUN_RETRIES
        };
        loop {
            let mut conn = match self.connection_for(view, on.as_deref()).await {
                Ok(c) => c,
                Err(e) => {
                    // A member that cannot be reached is down as far as anyone can tell.
                    if let Some(member) = e.unreachable_member() {
                        self.shared
                            .upstream
                            .on_failure(member, &e.to_string(), true, None);
                        if take_one(&mut not_run_retries_left) {
                            continue;
                        }
                    }
                    return self.replier().error(view.request_id, e.into(), in_txn);
                }
            };
            let member = conn.conn().meta.address.clone();
            let reply = match self.exchange(&mut conn, &mut frame, view).await {
                Exchanged::Reply(r) => r,
                Exchanged::ClientGone => return Outcome::Close,
                Exchanged::Failed(e) => {
                    // Dropping `conn` closes it: its state is unknown.
                    drop(conn);
                    // An overdue reply says nothing certain about the member (a slow operation
                    // looks the same), so, as SDAM says of operation timeouts, the member is
                    // not marked Unknown; and the request has used its whole time, so it is not
                    // sent again here: the client gets NetworkTimeout, which drivers retry.
                    let timed_out = matches!(e, UpstreamError::Timeout(_));
                    if !timed_out {
                        self.shared
                            .upstream
                            .on_failure(&member, &e.to_string(), true, None);
                    }
                    if !timed_out && std::mem::take(&mut retry_left) {
                        continue;
                    }
                    if view.more_to_come {
                        return Outcome::Silent;
                    }
                    return self.replier().error(view.request_id, e.into(), in_txn);
                }
            };
            if let Some((code, version)) = state_change(&reply) {
                // The member answered cleanly, so the connection is fine; the member is not.
                conn.release();
                let why = format!("member answered error {code} (not primary or recovering)");
                let clear = is_shutting_down(code);
                self.shared
                    .upstream
                    .on_failure(&member, &why, clear, version);
                if std::mem::take(&mut retry_left)
                    || (refused_before_running(code) && take_one(&mut not_run_retries_left))
                {
                    continue;
                }
                if view.more_to_come {
                    return Outcome::Silent;
                }
                let e = UpstreamError::NoPrimary(format!(
                    "upstream member {} stopped being primary during the operation ({why}); retry",
                    member.escape_debug()
                ));
                return self.replier().error(view.request_id, e.into(), in_txn);
            }
            if let Err(e) = self.hold_reply(reply.len()).await {
                // The reply (and any cursor it opened) is given up: closing the connection
                // rather than reusing it leaves the server to reap such a cursor.
                drop(conn);
                return self.replier().error(view.request_id, e, in_txn);
            }
            return self.settle(conn, reply, view).await;
        }
    }

    /// Sends the request on `conn` and waits for its reply, or for the client to leave.
    async fn exchange(
        &self,
        conn: &mut PooledConn,
        frame: &mut BytesMut,
        view: &CommandView,
    ) -> Exchanged {
        let started = Instant::now();
        // A reply that never comes (a half-open connection, a stalled server) must not hold the
        // client and the pooled connection for ever; past the deadline the connection closes.
        let deadline = self
            .shared
            .live
            .settings
            .load()
            .reply_deadline(view.max_time_ms);
        let result = tokio::select! {
            r = conn.conn().round_trip_within(frame, deadline) => r,
            // A client that hung up will never read the reply: stop waiting for it and free the
            // slot. Dropping `conn` mid-exchange closes it, which also cancels the operation on
            // servers that tie operations to their connection.
            // An unacknowledged write is still carried out when its client leaves at once.
            _ = client_gone(self.framed.get_ref().tcp()), if !view.more_to_come => {
                tracing::debug!(peer = %self.peer, "client left while its request was upstream");
                return Exchanged::ClientGone;
            }
        };
        self.shared
            .metrics
            .upstream_latency
            .observe(started.elapsed());
        match result {
            Ok(r) => Exchanged::Reply(r),
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "upstream exchange failed");
                Exchanged::Failed(e)
            }
        }
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
        let (logged_out, release, cursor_at) = match OpMsg::parse(&reply) {
            Ok(msg) => {
                // Only now has the upstream seen the session: a request that never got an
                // answer leaves nothing behind to end or to own.
                let lsid = view.lsid.as_ref().map(|l| l.as_bytes());
                if let Some(lsid) = lsid.filter(|l| !self.used_sessions.keys().contains(*l)) {
                    let user = self.user_key();
                    let used = &mut self.used_sessions;
                    self.shared.routes.note_session(used, lsid, user.as_deref());
                }
                let facts = ReplyFacts::read(msg.body);
                if facts.error_code.is_some() {
                    self.failed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                self.client.set_sessions(self.used_sessions.keys().len());
                let release = self.track_reply(facts, view, &meta);
                let body_at = msg.body.as_bytes().as_ptr() as usize - reply.as_ptr() as usize;
                let cursor_at = facts.cursor_id_at.map(|at| body_at + at);
                (upstream_logged_out(facts, msg.body), release, cursor_at)
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
            let limit = self.shared.live.settings.load().upstream_timeout;
            reuse &= kill_cursor(&mut conn, &r.ns, r.id, view, limit).await;
            refusal = r.refusal;
        }
        if reuse {
            self.keep_or_release(conn, view);
        }
        match (refusal, view.more_to_come) {
            (_, true) => Outcome::Silent,
            (Some(e), false) => self.replier().error(view.request_id, e, in_txn),
            (None, false) => {
                let mut reply = reply;
                if let Some(at) = cursor_at {
                    self.hide_reply_cursor(&mut reply, at, view);
                }
                self.relay(reply, view)
            }
        }
    }

    /// The upstream's reply as the client's reply to `view`.
    fn relay(&self, mut reply: BytesMut, view: &CommandView) -> Outcome {
        let (_, len) = strip_checksum(&mut reply, 0);
        reply.truncate(len);
        rewrite_ids(&mut reply, self.shared.ids.next_reply_id(), view.request_id);
        Outcome::Reply(reply.freeze())
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
                // Continued here, opened through another gateway: this one tracks it now.
                Some((_, ns)) if routes.cursor_member(id).is_none() => {
                    self.shared.metrics.cursors_adopted_total.inc();
                    self.adopt_cursor(id, ns, view, meta)
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
        self.adopt_cursor(id, ns, view, meta)
    }

    /// Records cursor `id` as the client's (its session's, or this connection's), unless that
    /// would exceed a bound: then the cursor is returned for killing, with the refusal.
    fn adopt_cursor(
        &self,
        id: i64,
        ns: &str,
        view: &CommandView,
        meta: &Arc<ConnMeta>,
    ) -> Option<Release> {
        let routes = &self.shared.routes;
        let owner = match &view.lsid {
            Some(lsid) => Owner::Session(lsid.as_bytes().to_vec()),
            None => Owner::Connection(self.connection_id),
        };
        let opener = Opener {
            connection: self.connection_id,
            user: self.user_key(),
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

    /// endSessions: forwarded when the upstream knows sessions; always answered `ok`, since a
    /// session the upstream never saw is simply gone either way.
    pub(super) async fn end_sessions(&mut self, frame: BytesMut, view: &CommandView) -> Outcome {
        let _ = self.forward(frame, view).await;
        // The client's answer is `ok` whatever the upstream said.
        self.failed
            .store(false, std::sync::atomic::Ordering::Relaxed);
        if view.more_to_come {
            return Outcome::Silent;
        }
        self.replier().reply(view.request_id, &doc! { "ok": 1.0 })
    }
}

/// How one exchange ended.
enum Exchanged {
    Reply(BytesMut),
    ClientGone,
    Failed(UpstreamError),
}

/// The state-change code of an error reply, if it is one, with the `topologyVersion` the
/// member sent with it (4.4+), which tells whether the error is news.
fn state_change(reply: &[u8]) -> Option<(i32, Option<TopologyVersion>)> {
    let msg = OpMsg::parse(reply).ok()?;
    let code = ReplyFacts::read(msg.body).error_code?;
    if !is_state_change(code) {
        return None;
    }
    let version = msg
        .body
        .get_document("topologyVersion")
        .ok()
        .and_then(|tv| {
            Some(TopologyVersion {
                process_id: tv.get_object_id("processId").ok()?,
                counter: tv.get_i64("counter").ok()?,
            })
        });
    Some((code, version))
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
/// way); a transport failure or no answer within `limit` is not, and the caller drops the
/// connection.
async fn kill_cursor(
    conn: &mut PooledConn,
    ns: &str,
    id: i64,
    view: &CommandView,
    limit: std::time::Duration,
) -> bool {
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    let mut kill = doc! { "killCursors": coll, "cursors": [id], "$db": db };
    if let Some(lsid) = &view.lsid {
        if let Ok(lsid) = bson::Document::from_reader(lsid.as_bytes()) {
            kill.insert("lsid", lsid);
        }
    }
    match conn.conn().command_within(&kill, limit).await {
        Ok(_) => true,
        Err(e) => e.connection_is_clean(),
    }
}
