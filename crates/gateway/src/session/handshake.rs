//! The gateway's own answer to `hello` / `isMaster` / `ismaster` (source/mongodb-handshake/
//! handshake.md and the SDAM spec's server description rules), with the authentication fields
//! of the hello (`saslSupportedMechs`, `speculativeAuthenticate`).
//!
//! The gateway presents itself as a mongos (`msg: "isdbgrid"`) so that drivers route everything
//! through it, never try to discover replica-set members behind it, and keep sessions and
//! retryable writes enabled. Wire versions and the session timeout repeat the upstream's own
//! hello. `topologyVersion` is deliberately absent: it would switch drivers to streaming
//! (awaitable) hello, which a multiplexer cannot serve per client.

use std::sync::Arc;
use std::time::Duration;

use bson::{oid::ObjectId, DateTime, Document, RawDocument};
use mongomux_wire::{MAX_BSON_OBJECT_SIZE, MAX_MESSAGE_SIZE, MAX_WRITE_BATCH_SIZE};

use super::reply::Outcome;
use super::Session;
use crate::command::CommandView;
use crate::error::GatewayError;
use crate::identity::users::UserStore;
use crate::settings::LoadBalancedMode;
use crate::upstream::topology::Topology;
use crate::upstream::UpstreamInfo;

/// Learns the upstream's wire versions if no connection has done so yet, within `deadline`.
pub async fn ensure_upstream_info(upstream: &Arc<Topology>, deadline: Duration) {
    upstream
        .learn_info(tokio::time::Instant::now() + deadline)
        .await;
}

/// Longest `appName` kept for logs; drivers cap client metadata at 512 bytes anyway.
const MAX_APP_NAME: usize = 128;

/// The `client.application.name` of a handshake, cut to [`MAX_APP_NAME`] bytes (on a character
/// boundary). Kept as sent: it is escaped where it is logged.
fn app_name_of(body: &RawDocument) -> Option<Box<str>> {
    let name = body
        .get_document("client")
        .ok()?
        .get_document("application")
        .ok()?
        .get_str("name")
        .ok()?;
    Some(crate::text::bounded_prefix(name, MAX_APP_NAME).into())
}

/// `client.driver.name` and `version` of a handshake, as one string (cut by the registry).
fn driver_of(body: &RawDocument) -> Option<String> {
    let driver = body
        .get_document("client")
        .ok()?
        .get_document("driver")
        .ok()?;
    let name = driver.get_str("name").ok()?;
    Some(match driver.get_str("version") {
        Ok(version) => format!("{name} {version}"),
        Err(_) => name.to_string(),
    })
}

/// Builds the hello reply for a request whose command name is `name`.
pub fn hello_reply(
    info: UpstreamInfo,
    service_id: ObjectId,
    name: &str,
    request: &RawDocument,
    connection_id: i64,
) -> Document {
    let mut reply = Document::new();
    if request.get_bool("helloOk").unwrap_or(false) {
        reply.insert("helloOk", true);
    }
    if name == "hello" {
        reply.insert("isWritablePrimary", true);
    } else {
        reply.insert("ismaster", true);
    }
    reply.insert("msg", "isdbgrid");
    reply.insert("maxBsonObjectSize", MAX_BSON_OBJECT_SIZE as i32);
    reply.insert("maxMessageSizeBytes", MAX_MESSAGE_SIZE as i32);
    reply.insert("maxWriteBatchSize", MAX_WRITE_BATCH_SIZE);
    reply.insert("localTime", DateTime::now());
    if let Some(minutes) = info.session_timeout_minutes {
        reply.insert("logicalSessionTimeoutMinutes", minutes);
    }
    reply.insert("connectionId", connection_id);
    reply.insert("minWireVersion", info.min_wire_version);
    reply.insert("maxWireVersion", info.max_wire_version);
    if request.get_bool("loadBalanced").unwrap_or(false) {
        // Load-balanced drivers require a serviceId (load-balancers spec).
        reply.insert("serviceId", service_id);
    }
    reply.insert("readOnly", false);
    reply.insert("ok", 1.0);
    reply
}

impl Session {
    /// The hello reply for `body`, in this client's connection.
    pub(super) async fn hello_document(&self, name: &str, body: &RawDocument) -> Document {
        let deadline = self.shared.live.settings.load().handshake_timeout;
        Box::pin(ensure_upstream_info(&self.shared.upstream, deadline)).await;
        let info = self.shared.upstream.upstream_info().unwrap_or_default();
        hello_reply(
            info,
            self.shared.ids.service_id,
            name,
            body,
            self.connection_id,
        )
    }

    /// Checks a `hello`'s `loadBalanced` against the listener's mode and the connection's first
    /// `hello`, as a mongos does (354 LoadBalancerSupportMismatch).
    pub(super) fn check_load_balanced(&mut self, body: &RawDocument) -> Result<(), GatewayError> {
        let asked = body.get_bool("loadBalanced").unwrap_or(false);
        let mode = self.shared.live.settings.load().load_balanced;
        match (mode, asked) {
            (LoadBalancedMode::Off, true) => {
                return Err(GatewayError::LoadBalancerMismatch(
                    "this gateway does not serve load-balanced clients (load_balanced = off); \
                     remove loadBalanced=true from the connection string"
                        .into(),
                ))
            }
            (LoadBalancedMode::Required, false) => {
                return Err(GatewayError::LoadBalancerMismatch(
                    "this gateway serves load-balanced clients only (load_balanced = required); \
                     add loadBalanced=true to the connection string"
                        .into(),
                ))
            }
            _ => {}
        }
        match self.load_balanced {
            Some(first) if first != asked => Err(GatewayError::LoadBalancerMismatch(
                "loadBalanced differs from this connection's first hello".into(),
            )),
            _ => {
                self.load_balanced = Some(asked);
                Ok(())
            }
        }
    }

    /// Answers `hello`, with the authentication fields when client authentication is on.
    pub(super) async fn hello(
        &mut self,
        users: &UserStore,
        view: &CommandView,
        body: &RawDocument,
    ) -> Outcome {
        if let Err(e) = self.check_load_balanced(body) {
            return self.replier().error(view.request_id, e, false);
        }
        if self.app_name.is_none() {
            self.app_name = app_name_of(body);
            self.client
                .set_handshake(self.app_name.as_deref(), driver_of(body));
        }
        let mut reply = self.hello_document(&view.name, body).await;
        if users.auth_required() {
            Box::pin(self.hello_auth_fields(users, body, &mut reply)).await;
        }
        self.replier().reply(view.request_id, &reply)
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
            // A failed speculative attempt is simply not answered; the driver then runs the
            // normal conversation, which fails with the proper error.
            if let Ok(first) = Box::pin(self.start_throttled(users, spec, &db)).await {
                reply.insert("speculativeAuthenticate", first);
            }
        }
    }
}
