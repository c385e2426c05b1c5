//! The gateway's own answer to `hello` / `isMaster` / `ismaster` (source/mongodb-handshake/
//! handshake.md and the SDAM spec's server description rules).
//!
//! The gateway presents itself as a mongos (`msg: "isdbgrid"`) so that drivers route everything
//! through it, never try to discover replica-set members behind it, and keep sessions and
//! retryable writes enabled. Wire versions and the session timeout repeat the upstream's own
//! hello. `topologyVersion` is deliberately absent: it would switch drivers to streaming
//! (awaitable) hello, which a multiplexer cannot serve per client.

use bson::{doc, DateTime, Document, RawDocument};
use mongomux_wire::{MAX_BSON_OBJECT_SIZE, MAX_MESSAGE_SIZE, MAX_WRITE_BATCH_SIZE};

use crate::context::Context;

/// Whether `name` is one of the handshake commands.
pub fn is_hello(name: &str) -> bool {
    matches!(name, "hello" | "isMaster" | "ismaster")
}

/// Learns the upstream's wire versions if no connection has done so yet, within `deadline`.
pub async fn ensure_upstream_info(ctx: &Context) {
    if ctx.pool.upstream_info().is_some() {
        return;
    }
    let deadline = ctx.settings.load().handshake_timeout;
    if let Ok(Ok(conn)) = tokio::time::timeout(deadline, ctx.pool.checkout()).await {
        conn.release();
    }
}

/// Builds the hello reply for a request whose command name is `name`.
pub fn hello_reply(
    ctx: &Context,
    name: &str,
    request: &RawDocument,
    connection_id: i64,
) -> Document {
    let info = ctx.pool.upstream_info().unwrap_or_default();
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
        reply.insert("serviceId", ctx.service_id);
    }
    reply.insert("readOnly", false);
    reply.insert("ok", 1.0);
    reply
}

/// The reply to `ping`, answered locally like a mongos does.
pub fn ping_reply() -> Document {
    doc! { "ok": 1.0 }
}
