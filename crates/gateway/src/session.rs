//! One client connection: a task that owns the client socket, reads whole messages, answers
//! what the gateway answers itself (handshake, ping, errors) and forwards the rest through the
//! pool, and on exit releases everything the client held upstream.
//!
//! The client's byte stream is trusted only as far as framing holds: a message that frames but
//! does not decode gets an error reply and the connection carries on; a length prefix out of
//! range means message boundaries are lost, so the connection gets one error reply (when a
//! requestID is known) and is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bson::{doc, Document, RawDocument};
use bytes::{Bytes, BytesMut};
use mongomux_wire::{
    encode_op_msg, encode_op_reply, rewrite_ids, strip_checksum, Header, MsgFlags, OpCode,
    OpCompressed, OpMsg, OpQuery, MAX_MESSAGE_SIZE, REPLY_QUERY_FAILURE,
};
use tokio::net::TcpStream;

use crate::authz::{authorize, classify, Class};
use crate::context::Context;
use crate::edge_auth::{namespaced_session_id, EdgeAuth};
use crate::error::GatewayError;
use crate::framed::{FrameError, Framed};
use crate::handshake::{ensure_upstream_info, hello_reply, is_hello, ping_reply};
use crate::request::{as_i64, reply_cursor, reply_error_code, RequestInfo};
use crate::routing::{ConnectionSessions, Owner, Pinned};
use crate::tls::{looks_like_tls, ClientStream, MaybeTls, TlsMode};
use crate::users::UserStore;

/// What to do after handling one message.
enum Outcome {
    /// Send these bytes.
    Reply(Bytes),
    /// Send nothing (moreToCome requests).
    Silent,
    /// The client is gone; end the session.
    Close,
}

/// A connected client.
struct Session {
    ctx: Arc<Context>,
    framed: Framed<ClientStream>,
    peer: SocketAddr,
    connection_id: i64,
    handshaken: bool,
    sessions: ConnectionSessions,
    auth: EdgeAuth,
}

/// Serves one client until it disconnects, breaks the protocol, or the gateway drains.
///
/// Rare, large futures (TLS set-up, authentication, STS, cleanup) are boxed where they are
/// awaited, so the state kept per idle client stays small: with thousands of idle clients the
/// size of this future is the gateway's memory per connection.
pub async fn run(
    ctx: Arc<Context>,
    stream: TcpStream,
    peer: SocketAddr,
    _admission: (crate::client_limit::ClientPermit, crate::limits::SourceSlot),
) {
    use std::sync::atomic::Ordering::Relaxed;
    let _ = stream.set_nodelay(true);
    let Some(stream) = Box::pin(negotiate_tls(&ctx, stream, peer)).await else {
        return;
    };
    ctx.metrics.client_connections.fetch_add(1, Relaxed);
    ctx.metrics.client_connections_total.fetch_add(1, Relaxed);
    let mut session = Session {
        connection_id: ctx.next_connection_id(),
        framed: Framed::new(stream, MAX_MESSAGE_SIZE),
        ctx: ctx.clone(),
        peer,
        handshaken: false,
        sessions: ConnectionSessions::default(),
        auth: EdgeAuth::default(),
    };
    tracing::debug!(peer = %peer, conn = session.connection_id, "client connected");
    session.serve().await;
    session.framed.shutdown().await;
    let left = ctx
        .routing
        .leave(&ctx, session.connection_id, session.sessions.keys());
    Box::pin(left.release(&ctx)).await;
    ctx.metrics.client_connections.fetch_sub(1, Relaxed);
    tracing::debug!(peer = %peer, "client disconnected");
}

impl Session {
    async fn serve(&mut self) {
        let mut draining = self.ctx.draining.clone();
        let mut reloads = self.ctx.reloads.clone();
        let handshake_deadline =
            tokio::time::Instant::now() + self.ctx.settings.load().handshake_timeout;
        loop {
            // While draining, a request already (partly) received is still served: it is in
            // flight from the client's point of view.
            if self.ctx.is_draining() && !self.framed.has_buffered() {
                return;
            }
            let read = tokio::select! {
                // Reading first means bytes that already arrived win over the drain signal.
                biased;
                r = self.framed.read_frame() => r,
                changed = draining.changed() => {
                    if changed.is_ok() && self.framed.has_buffered() {
                        continue;
                    }
                    return;
                }
                Ok(()) = reloads.changed() => {
                    if self.identity_revoked() {
                        tracing::info!(peer = %self.peer, "closing a connection whose user was removed or changed");
                        return;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(handshake_deadline), if !self.handshaken => {
                    tracing::debug!(peer = %self.peer, "no handshake before the deadline; closing");
                    return;
                }
            };
            let frame = match read {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(FrameError::Wire(e)) => {
                    self.refuse_stream(GatewayError::Protocol(e)).await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "client read failed");
                    return;
                }
            };
            // Any message counts: the handshake deadline only guards silent sockets.
            self.handshaken = true;
            match self.handle(frame).await {
                Outcome::Reply(bytes) => {
                    if self.framed.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Outcome::Silent => {}
                Outcome::Close => return,
            }
        }
    }

    /// Answers a message whose length prefix cannot be trusted, then the caller closes.
    async fn refuse_stream(&mut self, e: GatewayError) {
        tracing::debug!(peer = %self.peer, error = %e, "unframeable client message");
        let buffered = self.framed.buffered();
        if buffered.len() >= 8 {
            let request_id = i32::from_le_bytes(buffered[4..8].try_into().expect("4 bytes"));
            if let Outcome::Reply(bytes) = self.error(request_id, e, false) {
                let _ = self.framed.write_all(&bytes).await;
            }
        }
    }

    async fn handle(&mut self, frame: BytesMut) -> Outcome {
        let header = match Header::parse(&frame) {
            Ok(h) => h,
            Err(e) => return self.error(0, e.into(), false),
        };
        match header.op_code {
            OpCode::Msg => self.handle_msg(frame).await,
            OpCode::Query => self.handle_query(&frame).await,
            OpCode::Compressed => {
                let inner = OpCompressed::parse(&frame).and_then(|c| c.decompress_noop());
                match inner {
                    Ok(inner) => match Header::parse(&inner).map(|h| h.op_code) {
                        Ok(OpCode::Msg) => self.handle_msg(BytesMut::from(&inner[..])).await,
                        Ok(OpCode::Query) => self.handle_query(&inner).await,
                        _ => self.error(
                            header.request_id,
                            GatewayError::BadCommand(
                                "OP_COMPRESSED wraps an unsupported opcode".into(),
                            ),
                            false,
                        ),
                    },
                    Err(e) => self.error(header.request_id, e.into(), false),
                }
            }
            other => self.error(
                header.request_id,
                GatewayError::NotSupported(format!("unsupported opcode {}", other.as_i32())),
                false,
            ),
        }
    }

    async fn handle_msg(&mut self, mut frame: BytesMut) -> Outcome {
        let users = self.ctx.settings.load().users.clone();
        let parsed = OpMsg::parse(&frame)
            .map_err(GatewayError::from)
            .and_then(|m| {
                let req = RequestInfo::from_msg(&m)?;
                Ok((m, req))
            });
        let (msg, mut req) = match parsed {
            Ok(p) => p,
            Err(e) => {
                let header = Header::parse(&frame).expect("framed messages have a header");
                let more = frame.len() >= 20
                    && u32::from_le_bytes(frame[16..20].try_into().expect("4 bytes"))
                        & MsgFlags::MORE_TO_COME
                        != 0;
                if more {
                    return Outcome::Silent;
                }
                return self.error(header.request_id, e, false);
            }
        };
        self.ctx.metrics.count_op(&req.command);
        if users.auth_required() {
            if let Err(e) = self.authorize(&users, &req, msg.body) {
                return self.error(req.request_id, e, req.in_transaction);
            }
        }
        match req.command.as_str() {
            name if is_hello(name) => {
                Box::pin(ensure_upstream_info(&self.ctx)).await;
                let mut reply = hello_reply(&self.ctx, name, msg.body, self.connection_id);
                if users.auth_required() {
                    Box::pin(self.hello_auth_fields(&users, msg.body, &mut reply)).await;
                }
                return self.reply(req.request_id, &reply);
            }
            "ping" => return self.reply(req.request_id, &ping_reply()),
            "saslStart" | "saslContinue" if users.auth_required() => {
                let body = msg.body.to_raw_document_buf();
                return Box::pin(self.sasl(&users, &req, &body)).await;
            }
            "saslStart" | "saslContinue" | "authenticate" => {
                return self.error(
                    req.request_id,
                    GatewayError::NotSupported(
                        "client authentication is not enabled on this gateway; connect without credentials".into(),
                    ),
                    false,
                )
            }
            _ => {}
        }
        if let Some(user) = self.auth.identity.clone() {
            let offsets = session_id_offsets(&frame, msg.body);
            if !offsets.is_empty() {
                for at in offsets {
                    let mapped = namespaced_session_id(&user, &frame[at..at + 16]);
                    frame[at..at + 16].copy_from_slice(&mapped);
                }
                // Re-read the routing fields so the recorded lsid is the namespaced one.
                match OpMsg::parse(&frame)
                    .map_err(GatewayError::from)
                    .and_then(|m| RequestInfo::from_msg(&m))
                {
                    Ok(r) => req = r,
                    Err(e) => return self.error(req.request_id, e, false),
                }
            }
        }
        match req.command.as_str() {
            "getMore" => match req.get_more_id {
                Some(id) if self.may_use_cursor(id, &req) => self.forward(frame, &req).await,
                Some(id) => self.error(req.request_id, GatewayError::CursorNotFound(id), false),
                None => self.error(
                    req.request_id,
                    GatewayError::BadCommand("getMore needs an integer cursor id".into()),
                    false,
                ),
            },
            "killCursors" => Box::pin(self.kill_cursors(frame, &req)).await,
            "endSessions" => Box::pin(self.end_sessions(frame, &req)).await,
            _ => self.forward(frame, &req).await,
        }
    }

    /// Whether the authenticated user no longer exists as it was when it logged in.
    fn identity_revoked(&self) -> bool {
        match &self.auth.identity {
            Some(user) => !self.ctx.settings.load().users.still_valid(user),
            None => false,
        }
    }

    /// Applies authentication and authorization to one command.
    fn authorize(
        &self,
        users: &UserStore,
        req: &RequestInfo,
        body: &RawDocument,
    ) -> Result<(), GatewayError> {
        match &self.auth.identity {
            None if classify(&req.command, body) == Class::Open => Ok(()),
            None => Err(GatewayError::Unauthorized(format!(
                "command {} requires authentication",
                req.command
            ))),
            Some(user) if !users.still_valid(user) => Err(GatewayError::Unauthorized(
                "this user was removed or changed; reconnect".into(),
            )),
            Some(user) => authorize(user, &req.command, &req.db, body),
        }
    }

    /// saslSupportedMechs and speculativeAuthenticate in the hello reply.
    async fn hello_auth_fields(
        &mut self,
        users: &UserStore,
        body: &RawDocument,
        reply: &mut Document,
    ) {
        if let Ok(name) = body.get_str("saslSupportedMechs") {
            reply.insert("saslSupportedMechs", users.mechanisms_for(name));
        }
        if let Ok(spec) = body.get_document("speculativeAuthenticate") {
            let db = spec.get_str("db").unwrap_or("admin").to_string();
            let Some(wait) = self.ctx.auth_limiter.reserve(self.peer.ip()) else {
                return;
            };
            tokio::time::sleep(wait).await;
            // A failed speculative attempt is simply not answered; the driver then runs the
            // normal conversation, which fails with the proper error.
            let host = self.ctx.settings.load().aws_sts_host.clone();
            if let Ok(first) = self.auth.start(users, spec, &db, &host) {
                reply.insert("speculativeAuthenticate", first);
            }
        }
    }

    /// saslStart / saslContinue at the gateway.
    async fn sasl(&mut self, users: &UserStore, req: &RequestInfo, body: &RawDocument) -> Outcome {
        let ip = self.peer.ip();
        let result = if req.command == "saslStart" {
            match self.ctx.auth_limiter.reserve(ip) {
                Some(wait) => {
                    tokio::time::sleep(wait).await;
                    let host = self.ctx.settings.load().aws_sts_host.clone();
                    self.auth.start(users, body, &req.db, &host)
                }
                None => Err(GatewayError::AuthenticationFailed),
            }
        } else if let Some(aws) = self.auth.aws_request(body) {
            let r = match aws {
                Ok((id, request)) => match Box::pin(self.ctx.sts.verify(&request)).await {
                    Ok(arn) => self.auth.finish_aws(users, id, &arn),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if r.is_ok() {
                self.ctx.auth_limiter.succeeded(ip);
                let who = self
                    .auth
                    .identity
                    .as_ref()
                    .map(|u| u.name.clone())
                    .unwrap_or_default();
                tracing::info!(peer = %self.peer, principal = %who, "client authenticated with MONGODB-AWS");
            }
            r
        } else {
            let user = self.auth.pending_user().map(str::to_string);
            let r = self.auth.next(users, body);
            if r.is_ok() && self.auth.identity.is_some() {
                self.ctx.auth_limiter.succeeded(ip);
                tracing::info!(peer = %self.peer, user = user.as_deref().unwrap_or(""), "client authenticated");
            }
            r
        };
        match result {
            Ok(mut reply) => {
                reply.insert("ok", 1.0);
                self.reply(req.request_id, &reply)
            }
            Err(e) => {
                if matches!(e, GatewayError::AuthenticationFailed) {
                    self.ctx.auth_limiter.failed(ip);
                    tracing::info!(peer = %self.peer, "client authentication failed");
                }
                self.error(req.request_id, e, false)
            }
        }
    }

    /// Forwards a request upstream and relays the reply, keeping the routing table current.
    async fn forward(&mut self, mut frame: BytesMut, req: &RequestInfo) -> Outcome {
        if let Some(lsid) = &req.lsid {
            self.sessions.note(&self.ctx.routing, lsid.as_bytes());
        }
        let in_txn = req.in_transaction;
        let pinned = match (&req.lsid, in_txn) {
            (Some(lsid), true) => self.ctx.routing.take_pinned(lsid.as_bytes()),
            _ => None,
        };
        let mut conn = match pinned {
            Some(p) => p.conn,
            None => {
                let checkout = if in_txn && req.start_transaction {
                    self.ctx.pool.checkout_pinned().await
                } else {
                    self.ctx.pool.checkout().await
                };
                match checkout {
                    Ok(c) => c,
                    Err(e) => return self.error(req.request_id, e, in_txn),
                }
            }
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
            _ = client_gone(self.framed.get_ref().tcp()), if !req.more_to_come => {
                tracing::debug!(peer = %self.peer, "client left while its request was upstream");
                return Outcome::Close;
            }
        };
        self.ctx.metrics.upstream_latency.observe(started.elapsed());
        let mut reply = match result {
            // Dropping `conn` here closes it: its state is unknown.
            Ok(r) => r,
            Err(e) if req.more_to_come => {
                tracing::debug!(peer = %self.peer, error = %e, "unacknowledged write failed upstream");
                return Outcome::Silent;
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "upstream exchange failed");
                return self.error(req.request_id, e, in_txn);
            }
        };
        if req.more_to_come {
            self.keep_or_release(conn, req);
            return Outcome::Silent;
        }
        let meta = conn.conn().meta.clone();
        let parsed = match OpMsg::parse(&reply) {
            Ok(msg) => {
                self.track_reply(msg.body, req, &meta);
                true
            }
            Err(_) => false,
        };
        if !parsed {
            // The upstream's byte stream is suspect: close that connection (drop) and tell the
            // client in a reply it can parse.
            drop(conn);
            let e = GatewayError::Upstream("the upstream sent a reply that does not parse".into());
            return self.error(req.request_id, e, in_txn);
        }
        self.keep_or_release(conn, req);
        let (_, len) = strip_checksum(&mut reply, 0);
        reply.truncate(len);
        rewrite_ids(&mut reply, self.ctx.next_reply_id(), req.request_id);
        Outcome::Reply(reply.freeze())
    }

    /// After a clean exchange: keep a transaction's connection pinned until the transaction
    /// ends, otherwise return it to the pool.
    fn keep_or_release(&mut self, conn: crate::upstream::PooledConn, req: &RequestInfo) {
        match (&req.lsid, req.txn_number) {
            (Some(lsid), Some(txn_number))
                if req.in_transaction && !req.ends_transaction() && conn.is_pinned() =>
            {
                if let Some(back) = self
                    .ctx
                    .routing
                    .pin(lsid.as_bytes(), Pinned { conn, txn_number })
                {
                    back.conn.release();
                }
            }
            _ => conn.release(),
        }
    }

    /// Whether this request may continue or kill cursor `id`.
    fn may_use_cursor(&self, id: i64, req: &RequestInfo) -> bool {
        let lsid = req.lsid.as_ref().map(|l| l.as_bytes());
        self.ctx
            .routing
            .may_use_cursor(id, lsid, self.connection_id, self.sessions.keys())
    }

    /// Records cursors opened, exhausted or lost according to a reply.
    fn track_reply(
        &mut self,
        body: &RawDocument,
        req: &RequestInfo,
        meta: &Arc<crate::upstream::ConnMeta>,
    ) {
        if let Some(id) = req.get_more_id {
            let gone = match reply_cursor(body) {
                Some((next, _)) => next == 0,
                None => reply_error_code(body).is_some(),
            };
            if gone {
                self.ctx.routing.remove_cursor(&self.ctx, id);
            }
            return;
        }
        if let Some((id, ns)) = reply_cursor(body) {
            let owner = match &req.lsid {
                Some(lsid) => Owner::Session(lsid.as_bytes().to_vec()),
                None => Owner::Connection(self.connection_id),
            };
            self.ctx.routing.add_cursor(&self.ctx, id, ns, owner, meta);
        }
    }

    /// killCursors: only the client's own cursors reach the upstream; the others are reported
    /// as not found, exactly as a server reports unknown ids.
    async fn kill_cursors(&mut self, frame: BytesMut, req: &RequestInfo) -> Outcome {
        let msg = OpMsg::parse(&frame).expect("parsed before");
        let Ok(ids) = msg.body.get_array("cursors") else {
            return self.error(
                req.request_id,
                GatewayError::BadCommand("killCursors needs a cursors array".into()),
                false,
            );
        };
        let ids: Vec<i64> = ids
            .into_iter()
            .filter_map(|v| v.ok().and_then(as_i64))
            .collect();
        let (owned, foreign): (Vec<i64>, Vec<i64>) = ids
            .into_iter()
            .partition(|id| self.may_use_cursor(*id, req));
        if foreign.is_empty() {
            for id in &owned {
                self.ctx.routing.remove_cursor(&self.ctx, *id);
            }
            return self.forward(frame, req).await;
        }
        let coll = msg.body.get_str("killCursors").unwrap_or("").to_string();
        let mut reply = doc! {
            "cursorsKilled": [], "cursorsNotFound": foreign.clone(),
            "cursorsAlive": [], "cursorsUnknown": [], "ok": 1.0,
        };
        if !owned.is_empty() {
            for id in &owned {
                self.ctx.routing.remove_cursor(&self.ctx, *id);
            }
            let kill = doc! { "killCursors": coll, "cursors": owned, "$db": &req.db };
            let mut conn = match self.ctx.pool.checkout().await {
                Ok(c) => c,
                Err(e) => return self.error(req.request_id, e, false),
            };
            match conn.conn().command(&kill).await {
                Ok(up) => {
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
                Err(e) => return self.error(req.request_id, e, false),
            }
        }
        if req.more_to_come {
            return Outcome::Silent;
        }
        self.reply(req.request_id, &reply)
    }

    /// endSessions: forwarded when the upstream knows sessions; always answered `ok`, since a
    /// session the upstream never saw is simply gone either way.
    async fn end_sessions(&mut self, frame: BytesMut, req: &RequestInfo) -> Outcome {
        let _ = self.forward(frame, req).await;
        if req.more_to_come {
            return Outcome::Silent;
        }
        self.reply(req.request_id, &doc! { "ok": 1.0 })
    }

    /// Legacy OP_QUERY: only the handshake is served, as servers since 5.1 do.
    async fn handle_query(&mut self, frame: &[u8]) -> Outcome {
        let q = match OpQuery::parse(frame) {
            Ok(q) => q,
            Err(e) => {
                let id = Header::parse(frame).map(|h| h.request_id).unwrap_or(0);
                return self.legacy_error(id, GatewayError::from(e), true);
            }
        };
        let mut cmd = q.query;
        // Old drivers wrap commands in `$query` when they add read preferences.
        if let Ok(inner) = cmd.get_document("$query") {
            cmd = inner;
        }
        let name = match cmd.iter().next() {
            Some(Ok((k, _))) => k.to_string(),
            _ => String::new(),
        };
        self.ctx.metrics.count_op(&name);
        if q.is_command() && is_hello(&name) {
            Box::pin(ensure_upstream_info(&self.ctx)).await;
            let reply = hello_reply(&self.ctx, &name, cmd, self.connection_id);
            let bytes = bson::to_vec(&reply).expect("hello reply encodes");
            return Outcome::Reply(Bytes::from(encode_op_reply(
                self.ctx.next_reply_id(),
                q.header.request_id,
                0,
                &[&bytes],
            )));
        }
        let what = if name.is_empty() {
            "query".to_string()
        } else {
            name
        };
        self.legacy_error(
            q.header.request_id,
            GatewayError::UnsupportedOpQuery(what),
            !q.is_command(),
        )
    }

    fn legacy_error(&self, request_id: i32, e: GatewayError, query_failure: bool) -> Outcome {
        self.ctx.metrics.count_error(e.code().0);
        let mut body = e.to_reply(false);
        let flags = if query_failure {
            body.insert("$err", e.to_string());
            REPLY_QUERY_FAILURE
        } else {
            0
        };
        let bytes = bson::to_vec(&body).expect("error reply encodes");
        Outcome::Reply(Bytes::from(encode_op_reply(
            self.ctx.next_reply_id(),
            request_id,
            flags,
            &[&bytes],
        )))
    }

    fn reply(&self, request_id: i32, body: &Document) -> Outcome {
        let bytes = bson::to_vec(body).expect("gateway replies encode");
        Outcome::Reply(Bytes::from(encode_op_msg(
            self.ctx.next_reply_id(),
            request_id,
            0,
            &bytes,
            &[],
        )))
    }

    /// The error reply for `e`; the mapping itself lives in [`GatewayError::to_reply`].
    fn error(&self, request_id: i32, e: GatewayError, in_txn: bool) -> Outcome {
        let (code, _) = e.code();
        self.ctx.metrics.count_error(code);
        tracing::debug!(peer = %self.peer, code, error = %e, "error reply");
        self.reply(request_id, &e.to_reply(in_txn))
    }
}

/// Byte offsets, within `frame`, of the 16-byte session UUIDs a command carries: its `lsid`
/// and the ids listed by `endSessions`.
fn session_id_offsets(frame: &[u8], body: &RawDocument) -> Vec<usize> {
    let base = frame.as_ptr() as usize;
    let uuid_at = |lsid: &RawDocument| match lsid.get_binary("id") {
        Ok(b) if b.bytes.len() == 16 => Some(b.bytes.as_ptr() as usize - base),
        _ => None,
    };
    let mut out = Vec::new();
    if let Ok(lsid) = body.get_document("lsid") {
        out.extend(uuid_at(lsid));
    }
    if let Ok(ids) = body.get_array("endSessions") {
        for v in ids.into_iter().flatten() {
            if let Some(d) = v.as_document() {
                out.extend(uuid_at(d));
            }
        }
    }
    out
}

/// Resolves when the client has closed its side of the connection; stays pending while it is
/// open, including when it has already sent more bytes (those stay queued for the next read).
async fn client_gone(stream: &TcpStream) {
    let mut probe = [0u8; 1];
    match stream.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending::<()>().await,
    }
}

/// Applies the TLS mode to a new client: `required` runs the TLS handshake (a plaintext client
/// fails it and is dropped), `allowed` looks at the first bytes to decide. Bounded by the
/// handshake timeout. `None` means the client is dropped.
async fn negotiate_tls(ctx: &Context, tcp: TcpStream, peer: SocketAddr) -> Option<ClientStream> {
    let settings = ctx.settings.load_full();
    let (mode, cfg) = match (settings.tls_mode, settings.tls_server.as_ref()) {
        (TlsMode::Disabled, _) | (_, None) => return Some(MaybeTls::Plain(tcp)),
        (mode, Some(cfg)) => (mode, cfg.clone()),
    };
    let deadline = settings.handshake_timeout;
    let result = tokio::time::timeout(deadline, async move {
        if mode == TlsMode::Allowed {
            let mut first = [0u8; 2];
            loop {
                let n = tcp.peek(&mut first).await.ok()?;
                if n == 0 {
                    return None;
                }
                if n >= 2 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            if !looks_like_tls(&first) {
                return Some(MaybeTls::Plain(tcp));
            }
        }
        match tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
            Ok(s) => Some(MaybeTls::Tls(Box::new(s))),
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                None
            }
        }
    })
    .await;
    result.ok().flatten()
}
