//! The dispatcher: each message is decoded once into a [`CommandView`], authorized, and handled
//! according to its row of the command table: answered by the gateway (`hello`, `ping`, SASL),
//! refused, or forwarded (with cursor ownership checks for `getMore` and `killCursors`).
//! Commands that act on the upstream connection itself (`logout`, `authenticate`, SASL, nonces,
//! the last error) are never forwarded, whoever sends them: upstream connections are shared.
//! For the same reason every value of a forwarded request is checked first
//! ([`crate::command::values`]): nothing may reach the upstream that makes it drop a connection
//! other clients' cursors live on.

use bytes::BytesMut;
use mongomux_wire::{peek_msg_flags, Header, OpCode, OpCompressed, OpMsg};

use super::reply::Outcome;
use super::Session;
use crate::command::values::{self, TypeSet};
use crate::command::{answer, authz, CommandView, Kind};
use crate::error::GatewayError;
use crate::identity::edge_auth::{namespaced_session_id, EdgeAuth};
use crate::upstream::Flavor;

impl Session {
    /// Handles one whole message.
    pub(super) async fn handle(&mut self, frame: BytesMut) -> Outcome {
        let header = match Header::parse(&frame) {
            Ok(h) => h,
            Err(e) => return self.replier().error(0, e.into(), false),
        };
        match header.op_code {
            OpCode::Msg => self.handle_msg(frame).await,
            OpCode::Query => self.handle_query(&frame).await,
            OpCode::Compressed => {
                let inner = OpCompressed::parse(&frame).and_then(|c| c.decompress_noop());
                let inner = match inner {
                    Ok(inner) => inner,
                    Err(e) => return self.replier().error(header.request_id, e.into(), false),
                };
                match Header::parse(&inner).map(|h| h.op_code) {
                    Ok(OpCode::Msg) => self.handle_msg(BytesMut::from(&inner[..])).await,
                    Ok(OpCode::Query) => self.handle_query(&inner).await,
                    _ => self.replier().error(
                        header.request_id,
                        GatewayError::BadCommand(
                            "OP_COMPRESSED wraps an unsupported opcode".into(),
                        ),
                        false,
                    ),
                }
            }
            other => self.replier().error(
                header.request_id,
                GatewayError::NotSupported(format!("unsupported opcode {}", other.as_i32())),
                false,
            ),
        }
    }

    async fn handle_msg(&mut self, mut frame: BytesMut) -> Outcome {
        let users = self.shared.live.settings.load().users.clone();
        let msg = match OpMsg::parse(&frame) {
            Ok(msg) => msg,
            Err(e) => return self.undecodable(&frame, e.into()),
        };
        let mut view = match CommandView::decode(&frame, &msg) {
            Ok(view) => view,
            Err(e) => return self.undecodable(&frame, e),
        };
        if users.auth_required() {
            if let Err(e) = view.collect_namespaces(&msg) {
                return self.undecodable(&frame, e);
            }
        }
        let index = self.count_op(&view.name, view.spec.kind);
        self.op = Some((index, std::time::Instant::now()));
        self.client.begin(&view.name, &view.db);
        if !matches!(view.spec.kind, Kind::Hello | Kind::Ping) {
            self.monitoring_only = false;
        }
        if users.auth_required() {
            if let Err(e) = authz::check(&users, self.auth.identity.as_deref(), &view) {
                return self
                    .replier()
                    .error(view.request_id, e, view.in_transaction);
            }
        }
        match view.spec.kind {
            Kind::Hello => return Box::pin(self.hello(&users, &view, msg.body)).await,
            Kind::Ping => return self.replier().reply(view.request_id, &bson::doc! { "ok": 1.0 }),
            Kind::ConnectionStatus => {
                let status = answer::connection_status(self.auth.identity.as_deref());
                return self.replier().reply(view.request_id, &status);
            }
            Kind::Sasl if users.auth_required() => {
                let body = msg.body.to_raw_document_buf();
                return Box::pin(self.sasl(&users, &view, &body)).await;
            }
            Kind::Sasl | Kind::Authenticate if !users.auth_required() => {
                return self.replier().error(
                    view.request_id,
                    GatewayError::NotSupported(
                        "client authentication is not enabled on this gateway; connect without credentials".into(),
                    ),
                    false,
                )
            }
            // With users configured only `authenticate` gets here (SASL is answered above).
            Kind::Authenticate | Kind::Sasl => {
                return self.replier().error(
                    view.request_id,
                    GatewayError::MechanismUnavailable(
                        "the authenticate command is not supported by this gateway; use SCRAM-SHA-256, SCRAM-SHA-1 or MONGODB-AWS (saslStart)".into(),
                    ),
                    false,
                )
            }
            Kind::Logout => return Box::pin(self.logout(&view)).await,
            Kind::ConnectionState => {
                return self.replier().error(
                    view.request_id,
                    GatewayError::NotSupported(format!(
                        "{} acts on one server connection; mongomux shares its upstream connections and does not support it",
                        view.name.escape_debug()
                    )),
                    false,
                )
            }
            Kind::Operate => {
                let body = msg.body.to_raw_document_buf();
                return Box::pin(self.operate(&users, &view, &body)).await;
            }
            Kind::Forward | Kind::GetMore | Kind::KillCursors | Kind::EndSessions => {}
        }
        // Whatever reaches a shared upstream connection must not be able to break it.
        let refused = match self.shared.upstream.upstream_info().map(|i| i.flavor) {
            Some(Flavor::FerretDbV1) => TypeSet::FERRETDB_V1_UNSUPPORTED,
            _ => TypeSet::EMPTY,
        };
        if let Err(e) = values::check(&msg, refused) {
            return self
                .replier()
                .error(view.request_id, e, view.in_transaction);
        }
        if let Some(user) = &self.auth.identity {
            // Only a 16-byte id can be namespaced; any other lsid would be the same key for every
            // identity that sends it, so it is refused rather than shared.
            if view.lsid.as_ref().is_some_and(|l| !l.has_uuid()) {
                return self.replier().error(
                    view.request_id,
                    GatewayError::BadCommand("lsid.id must be a 16-byte UUID".into()),
                    view.in_transaction,
                );
            }
            if view.has_session_ids() {
                let key = &self.shared.edge.session_key;
                view.rewrite_session_ids(&mut frame, |uuid| namespaced_session_id(key, user, uuid));
            }
        }
        // While an operator has paused forwarding, the request waits here (bounded); a
        // transaction already running goes on, so that it can finish and free its connection.
        let continues_transaction = view.in_transaction && !view.start_transaction;
        if !continues_transaction && self.shared.admin.pause.is_paused() {
            // Boxed: rare, and kept out of the state every idle session carries.
            if let Err(waited) = Box::pin(self.shared.admin.pause.pass()).await {
                let e = GatewayError::Paused(format!(
                    "forwarding is paused by an operator (mongomuxPause) and did not resume within {} ms; the request was not sent",
                    waited.0.as_millis()
                ));
                return self
                    .replier()
                    .error(view.request_id, e, view.in_transaction);
            }
        }
        match view.spec.kind {
            Kind::GetMore => Box::pin(self.get_more(frame, &mut view)).await,
            Kind::KillCursors => Box::pin(self.kill_cursors(&view)).await,
            Kind::EndSessions => Box::pin(self.end_sessions(frame, &view)).await,
            _ => self.forward(frame, &view).await,
        }
    }

    /// `logout`, answered at the edge as a mongos answers it: the *client connection* is logged
    /// out. Its identity is dropped, and what it held under that identity (cursors, sessions,
    /// an open transaction) is released upstream, so that a later login on the same connection,
    /// as anyone, starts from nothing. Nothing reaches the upstream connection's own login.
    async fn logout(&mut self, view: &CommandView) -> Outcome {
        let had_identity = self.auth.identity.is_some();
        self.auth = EdgeAuth::default();
        if had_identity {
            tracing::info!(peer = %self.peer, "client logged out");
            let used = std::mem::take(&mut self.used_sessions);
            let bound = self.load_balanced == Some(true);
            let left = self.shared.routes.leave(self.connection_id, &used, bound);
            Box::pin(left.release(&self.shared.upstream)).await;
        }
        if view.more_to_come {
            return Outcome::Silent;
        }
        self.replier()
            .reply(view.request_id, &bson::doc! { "ok": 1.0 })
    }

    /// A message that frames but does not decode: an error reply, or nothing when the client
    /// said it expects none.
    fn undecodable(&self, frame: &[u8], e: GatewayError) -> Outcome {
        let header = Header::parse(frame).expect("framed messages have a header");
        let more = peek_msg_flags(frame).is_some_and(|f| f.more_to_come());
        if more {
            return Outcome::Silent;
        }
        self.replier().error(header.request_id, e, false)
    }
}

impl Session {
    /// Counts an operation by command, by appName and, once logged in, by user; the series are
    /// resolved on first use and kept for the connection. Returns the command's row in the
    /// per-command statistics.
    fn count_op(&mut self, name: &str, kind: Kind) -> usize {
        let metrics = &self.shared.metrics;
        let index = metrics.count_op(name);
        // The handshake is not an operation of the application, and it is where the appName
        // arrives: the series is chosen at the first command after it.
        if kind == Kind::Hello {
            return index;
        }
        let app = self.app_name.as_deref().unwrap_or("none");
        self.app_ops
            .get_or_insert_with(|| metrics.app_ops.counter(app))
            .inc();
        if let Some(user) = &self.auth.identity {
            self.user_ops
                .get_or_insert_with(|| metrics.user_ops.counter(&user.name))
                .inc();
        }
        index
    }
}
