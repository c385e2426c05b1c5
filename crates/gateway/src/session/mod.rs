//! One client connection: a task that owns the client socket. The parts, in the order a
//! message meets them:
//! - this module: the connection's lifecycle (TLS, the read loop, the handshake deadline, drain,
//!   reload and revocation (closing, between messages, a connection whose address the access
//!   list no longer admits or whose user was removed), and on exit the release of what the
//!   client leaves behind upstream, as [`crate::route::Routes::leave`] decides);
//! - [`dispatch`]: decodes each message once into a [`CommandView`](crate::command::CommandView),
//!   authorizes it, and decides by the command table's kind what happens to it;
//! - [`handshake`]: the gateway's own `hello`; [`auth`]: edge authentication (SASL);
//! - [`forward`]: the exchange with the upstream and the cursor/session/transaction bookkeeping;
//!   [`upstream_choice`]: which connection a request goes out on, and whether it may go again;
//! - [`cursors`]: the cursor ids a client sends and sees (`getMore`, `killCursors`, their enciphering);
//! - [`inbound`]: receiving a message within the size, budget and time bounds;
//! - [`legacy`]: OP_QUERY, where only the handshake is served; [`reply`]: framing the gateway's
//!   own replies and errors.
//!
//! The client's byte stream is trusted only as far as framing holds: a message that frames but
//! does not decode gets an error reply and the connection carries on; a length prefix out of
//! range means message boundaries are lost, so the connection gets one error reply (when a
//! requestID is known) and is closed.

mod auth;
mod cursors;
mod dispatch;
mod forward;
pub mod handshake;
mod inbound;
mod legacy;
mod operate;
mod reply;
mod upstream_choice;

use std::net::SocketAddr;

use mongomux_wire::{peek_request_id, MAX_MESSAGE_SIZE};
use tokio::net::TcpStream;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::admin::clients::Registration;
use crate::context::Shared;
use crate::error::GatewayError;
use crate::framed::{FrameError, Framed};
use crate::identity::edge_auth::EdgeAuth;
use crate::limits::inflight::InflightPermit;
use crate::route::UsedSessions;
use crate::tls::{looks_like_tls, ClientStream, MaybeTls, TlsMode};
use inbound::{read_message, Inbound, ReadFailure, ReadLimits};
use reply::{Outcome, Replier};

/// A connected client.
struct Session {
    shared: Shared,
    framed: Framed<ClientStream>,
    peer: SocketAddr,
    connection_id: i64,
    /// Whether any message arrived: without users configured, the handshake deadline only
    /// guards silent sockets.
    greeted: bool,
    /// The logical sessions this connection has used, for cursor ownership and clean-up.
    used_sessions: UsedSessions,
    auth: EdgeAuth,
    /// What the client's first `hello` said of `loadBalanced`; later ones must say the same.
    load_balanced: Option<bool>,
    /// The message being received: when it started, the budget it holds.
    inbound: Inbound,
    /// The budget held by the reply being written, if it is large.
    reply_permit: Option<InflightPermit>,
    /// The `appName` of the client's first `hello`, for logs.
    app_name: Option<Box<str>>,
    /// Only `hello` and `ping` so far: a driver's monitoring connection, which never
    /// authenticates (the SDAM specification), and is not held to the login deadline.
    monitoring_only: bool,
    /// When the last message arrived.
    last_message: tokio::time::Instant,
    /// This client's series of the per-appName and per-user operation counters, resolved once.
    app_ops: Option<crate::metrics::Counter>,
    user_ops: Option<crate::metrics::Counter>,
    /// This client in the operators' registry.
    client: Registration,
    /// The command being handled: its index in the per-command statistics, and its arrival.
    op: Option<(usize, std::time::Instant)>,
    /// Whether the reply to the command being handled is an error.
    failed: AtomicBool,
    /// Why this connection lost its right to stay (a `mongomux_client_connections_revoked_total`
    /// reason), once it has; it closes after the message it is receiving, if any.
    revoked: Option<&'static str>,
    /// The cursor-id cipher of the owner this connection last used (boxed: idle clients carry
    /// only the pointer).
    last_cipher: Option<Box<cursors::LastCipher>>,
}

/// Serves one client until it disconnects, breaks the protocol, or the gateway drains.
///
/// Rare, large futures (TLS set-up, authentication, STS, cleanup) are boxed where they are
/// awaited, so the state kept per idle client stays small: with thousands of idle clients the
/// size of this future is the gateway's memory per connection.
pub async fn run(
    shared: Shared,
    stream: TcpStream,
    peer: SocketAddr,
    _admission: (
        crate::limits::client_limit::ClientPermit,
        crate::limits::SourceSlot,
    ),
) {
    let _ = stream.set_nodelay(true);
    let Some(stream) = Box::pin(negotiate_tls(&shared, stream, peer)).await else {
        return;
    };
    shared.metrics.client_connections.inc();
    shared.metrics.client_connections_total.inc();
    let connection_id = shared.ids.next_connection_id();
    let mut session = Session {
        client: shared.admin.clients.register(connection_id, peer),
        op: None,
        failed: AtomicBool::new(false),
        revoked: None,
        connection_id,
        framed: Framed::new(stream, MAX_MESSAGE_SIZE),
        shared: shared.clone(),
        peer,
        greeted: false,
        used_sessions: UsedSessions::default(),
        auth: EdgeAuth::default(),
        load_balanced: None,
        inbound: Inbound::default(),
        reply_permit: None,
        app_name: None,
        monitoring_only: true,
        last_message: tokio::time::Instant::now(),
        app_ops: None,
        user_ops: None,
        last_cipher: None,
    };
    tracing::info!(event = "client_connected", peer = %peer, conn = session.connection_id, "client connected");
    let connected = std::time::Instant::now();
    session.serve().await;
    session.framed.shutdown().await;
    // A load-balanced client's cursors and transaction belong to its connection (the drivers'
    // load-balancer specification): closing it releases them even if the session lives on.
    let left = shared.routes.leave(
        session.connection_id,
        &session.used_sessions,
        session.load_balanced == Some(true),
    );
    Box::pin(left.release(&shared.upstream)).await;
    shared.metrics.client_connections.dec();
    tracing::info!(
        event = "client_disconnected",
        peer = %peer,
        conn = session.connection_id,
        user = %session.auth.identity.as_ref().map(|u| u.name.as_str()).unwrap_or("").escape_debug(),
        seconds = connected.elapsed().as_secs_f64(),
        "client disconnected"
    );
}

impl Session {
    fn replier(&self) -> Replier<'_> {
        Replier {
            ids: &self.shared.ids,
            metrics: &self.shared.metrics,
            peer: self.peer,
            failed: &self.failed,
        }
    }

    async fn serve(&mut self) {
        let mut draining = self.shared.draining.clone();
        let mut rechecks = self.shared.live.rechecks();
        // A reload or an expiry between admission and here (the TLS handshake may take a
        // while) was signalled before this receiver existed.
        if let Some(reason) = self.revocation() {
            return self.close_revoked(reason);
        }
        let handshake_deadline =
            tokio::time::Instant::now() + self.shared.live.settings.load().handshake_timeout;
        loop {
            // While draining, a request already (partly) received is still served: it is in
            // flight from the client's point of view.
            if self.shared.is_draining() && !self.framed.has_buffered() {
                return;
            }
            let limits = self.read_limits();
            let monitor_deadline = self.last_message + self.monitor_idle_limit();
            let read = tokio::select! {
                biased;
                // An operator's close comes first, so a client that keeps sending cannot put
                // it off; it is looked at only between messages, after the last reply.
                () = self.client.close_requested() => {
                    tracing::info!(event = "client_closed_by_operator", peer = %self.peer, conn = self.connection_id, "closing a client an operator named");
                    return;
                }
                // Reading before the drain signal means bytes that already arrived win.
                r = read_message(&mut self.framed, &mut self.inbound, &self.shared.inflight, limits) => r,
                changed = draining.changed() => {
                    if changed.is_ok() && self.framed.has_buffered() {
                        continue;
                    }
                    return;
                }
                // A reload, or an access-list entry that expired. Only between messages, so an
                // operation in flight is never cut; a message partly received is let in.
                Ok(()) = rechecks.changed() => {
                    self.revoked = self.revocation();
                    if let Some(reason) = self.revoked.filter(|_| !self.framed.has_buffered()) {
                        return self.close_revoked(reason);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(handshake_deadline), if self.awaiting_handshake() => {
                    tracing::debug!(peer = %self.peer, "no handshake or authentication before the deadline; closing");
                    return;
                }
                _ = tokio::time::sleep_until(monitor_deadline), if self.idle_monitor() => {
                    tracing::debug!(peer = %self.peer, "unauthenticated monitoring connection silent too long; closing");
                    return;
                }
            };
            self.last_message = tokio::time::Instant::now();
            let message = match read {
                Ok(Some(message)) => message,
                Ok(None) => return,
                Err(e) => return self.refuse_read(e).await,
            };
            self.greeted = true;
            let outcome = self.handle(message.frame).await;
            self.finish_op();
            drop(message.permit);
            match outcome {
                Outcome::Reply(bytes) => {
                    if !self.write_reply(&bytes).await {
                        return;
                    }
                }
                Outcome::Silent => {}
                Outcome::Close => return,
            }
            // A client that always has its next message ready never lets the select above
            // see the signal: it is looked at after every message too.
            if rechecks.has_changed().unwrap_or(false) {
                rechecks.borrow_and_update();
                self.revoked = self.revocation();
            }
            if let Some(reason) = self.revoked {
                return self.close_revoked(reason);
            }
        }
    }

    /// Records the command just handled in the statistics and the registry.
    fn finish_op(&mut self) {
        let user = self.auth.identity.as_ref().map(|u| u.name.as_str());
        self.client.end(user);
        if let Some((index, started)) = self.op.take() {
            let failed = self.failed.swap(false, Ordering::Relaxed);
            self.shared
                .metrics
                .commands
                .observe(index, started.elapsed(), failed);
        }
    }

    /// The size and time limits of the next message.
    fn read_limits(&self) -> ReadLimits {
        let settings = self.shared.live.settings.load();
        let auth_pending = self.auth.identity.is_none() && settings.users.auth_required();
        ReadLimits::new(
            auth_pending,
            settings.max_unauthenticated_message_bytes,
            settings.message_timeout,
        )
    }

    /// Writes a reply within `client_write_timeout`; false when the client is to be closed.
    /// The reply's budget is returned once it is written, or the client dropped.
    async fn write_reply(&mut self, bytes: &[u8]) -> bool {
        let limit = self.shared.live.settings.load().client_write_timeout;
        let written = tokio::time::timeout(limit, self.framed.write_all(bytes)).await;
        self.reply_permit = None;
        match written {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.shared.metrics.count_cut("write_timeout");
                tracing::debug!(peer = %self.peer, bytes = bytes.len(), ?limit, "client did not read its reply within client_write_timeout; closing");
                false
            }
        }
    }

    /// Ends a connection whose next message could not be received: answers when the protocol
    /// still allows it (the request's id is known), counts why.
    async fn refuse_read(&mut self, e: ReadFailure) {
        match e {
            ReadFailure::Frame(FrameError::Wire(e)) => {
                self.refuse_stream(GatewayError::Protocol(e)).await
            }
            ReadFailure::Frame(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "client read failed");
            }
            ReadFailure::TooLargeBeforeAuth { .. } => {
                self.shared.metrics.count_cut("message_too_large");
                self.refuse_stream(GatewayError::MessageTooLarge(e.to_string()))
                    .await;
            }
            ReadFailure::TimedOut(_) => {
                self.shared.metrics.count_cut("message_timeout");
                tracing::debug!(peer = %self.peer, "client message not received in full within message_timeout; closing");
                self.refuse_stream(GatewayError::MessageTimeout(e.to_string()))
                    .await;
            }
        }
    }

    /// Whether the handshake deadline still applies: until the first message, and, when users
    /// are configured, until authentication completes, so an unauthenticated client cannot
    /// hold a connection slot for longer than the deadline.
    ///
    /// A connection that has sent only `hello` and `ping` is a driver's monitoring connection,
    /// which never authenticates: it may stay unauthenticated, and can do nothing else (every
    /// other command needs a login), as long as it keeps sending; see [`Session::idle_monitor`].
    fn awaiting_handshake(&self) -> bool {
        !self.greeted || (self.unauthenticated() && !self.monitoring_only)
    }

    /// Whether an unauthenticated monitoring connection is held to the silence bound: it must
    /// send something (a driver's heartbeat, every 10 s by default) within
    /// [`Session::monitor_idle_limit`], or it is closed.
    fn idle_monitor(&self) -> bool {
        self.greeted && self.monitoring_only && self.unauthenticated()
    }

    /// Three handshake deadlines (30 s by default): room for a driver's heartbeat interval.
    fn monitor_idle_limit(&self) -> std::time::Duration {
        self.shared.live.settings.load().handshake_timeout * 3
    }

    /// No login yet while users are configured.
    fn unauthenticated(&self) -> bool {
        self.auth.identity.is_none() && self.shared.live.settings.load().users.auth_required()
    }

    /// Why this connection may no longer stay, if it may not: the access list in force does not
    /// admit its address now (an entry expired or was removed; judged on the address it was
    /// admitted on, the PROXY header's when there was one), or its user no longer exists as it
    /// was when it logged in.
    fn revocation(&self) -> Option<&'static str> {
        let settings = self.shared.live.settings.load();
        if !settings
            .access
            .allows(self.peer.ip(), std::time::SystemTime::now())
        {
            return Some("access");
        }
        match &self.auth.identity {
            Some(user) if !settings.users.still_valid(user) => Some("user"),
            _ => None,
        }
    }

    /// Counts and logs the end of a connection whose right to stay was revoked; the caller
    /// closes it.
    fn close_revoked(&self, reason: &'static str) {
        self.shared.metrics.count_revoked(reason);
        let why = match reason {
            "user" => "its user was removed or changed",
            _ => "the access list no longer admits its address",
        };
        tracing::info!(event = "client_revoked", peer = %self.peer, conn = self.connection_id, reason, "closing a connection: {why}");
    }

    /// Answers a message whose length prefix cannot be trusted, then the caller closes.
    async fn refuse_stream(&mut self, e: GatewayError) {
        tracing::debug!(peer = %self.peer, error = %e, "unframeable client message");
        if let Some(request_id) = peek_request_id(self.framed.buffered()) {
            if let Outcome::Reply(bytes) = self.replier().error(request_id, e, false) {
                let _ = self.framed.write_all(&bytes).await;
            }
        }
    }
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
async fn negotiate_tls(shared: &Shared, tcp: TcpStream, peer: SocketAddr) -> Option<ClientStream> {
    let settings = shared.live.settings.load_full();
    let (mode, cfg) = match (settings.tls_mode, settings.tls_server.as_ref()) {
        (TlsMode::Disabled, _) | (_, None) => return Some(MaybeTls::Plain(tcp)),
        (mode, Some(cfg)) => (mode, cfg.clone()),
    };
    let deadline = settings.handshake_timeout;
    drop(settings);
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
