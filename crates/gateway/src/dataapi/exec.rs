//! Runs a Data API command the way the wire protocol runs a client's: framed as an OP_MSG,
//! decoded once into the same typed view, judged by the same authorization table against the
//! key's or principal's user, checked for values the upstream cannot take, held at the pause
//! gate, refused while draining, and sent on a connection of the same pool (read preference and
//! member selection as for drivers). It opens no session and leaves no cursor: a reply's open
//! cursor is killed on its connection before the connection goes back.

use std::sync::Arc;
use std::time::Instant;

use bson::{doc, Document};
use mongomux_wire::{encode_op_msg, OpMsg};

use crate::command::values::{self, TypeSet};
use crate::command::{authz, CommandView};
use crate::context::Shared;
use crate::error::GatewayError;
use crate::identity::users::User;
use crate::upstream::topology::select::Need;
use crate::upstream::{Flavor, UpstreamError};

/// Runs `command` as `user`; `reads` lets it follow the deployment's read preference.
pub async fn run(
    shared: &Shared,
    user: &Arc<User>,
    command: &Document,
    reads: bool,
) -> Result<Document, GatewayError> {
    let body = bson::to_vec(command).map_err(|e| GatewayError::InvalidBson(e.to_string()))?;
    let mut frame = encode_op_msg(shared.ids.next_reply_id(), 0, 0, &body, &[]);
    let name = {
        let msg = OpMsg::parse(&frame)?;
        let mut view = CommandView::decode(&frame, &msg)?;
        view.collect_namespaces(&msg)?;
        let users = shared.live.settings.load().users.clone();
        authz::check(&users, Some(user), &view)?;
        let refused = match shared.upstream.upstream_info().map(|i| i.flavor) {
            Some(Flavor::FerretDbV1) => TypeSet::FERRETDB_V1_UNSUPPORTED,
            _ => TypeSet::EMPTY,
        };
        values::check(&msg, refused)?;
        view.name
    };
    let metrics = &shared.metrics;
    let index = metrics.count_op(&name);
    metrics.user_ops.counter(&user.name).inc();
    let started = Instant::now();
    let result = exchange(shared, &mut frame, reads).await;
    let failed = match &result {
        Ok(reply) => super::actions::reply_error(reply).is_some(),
        Err(_) => true,
    };
    metrics.commands.observe(index, started.elapsed(), failed);
    result
}

/// Sends the frame on a pooled connection and returns the reply's body.
async fn exchange(
    shared: &Shared,
    frame: &mut [u8],
    reads: bool,
) -> Result<Document, GatewayError> {
    if shared.is_draining() {
        return Err(GatewayError::Draining);
    }
    if shared.admin.pause.is_paused() {
        Box::pin(shared.admin.pause.pass()).await.map_err(|waited| {
            GatewayError::Paused(format!(
                "forwarding is paused by an operator (mongomuxPause) and did not resume within {} ms; the request was not sent",
                waited.0.as_millis()
            ))
        })?;
    }
    let upstream = &shared.upstream;
    let need = match reads {
        true => Need::Read(upstream.default_read_preference()),
        false => Need::Write,
    };
    let mut conn = upstream.checkout(need).await?;
    let member = conn.conn().meta.address.clone();
    let limit = shared.live.settings.load().upstream_timeout;
    let reply = match conn.conn().round_trip_within(frame, limit).await {
        Ok(r) => r,
        Err(e) => {
            // Dropping `conn` closes it: its state is unknown.
            drop(conn);
            if !matches!(e, UpstreamError::Timeout(_)) {
                upstream.on_failure(&member, &e.to_string(), true, None);
            }
            return Err(e.into());
        }
    };
    let msg = OpMsg::parse(&reply).map_err(|e| GatewayError::from(UpstreamError::BadReply(e)))?;
    let body =
        Document::try_from(msg.body).map_err(|e| GatewayError::InvalidBson(e.to_string()))?;
    if let Some((id, ns)) = super::actions::open_cursor(&body) {
        let (db, coll) = ns.split_once('.').unwrap_or((ns.as_str(), ""));
        let kill = doc! { "killCursors": coll, "cursors": [id], "$db": db };
        if conn.conn().command_within(&kill, limit).await.is_err() {
            // The connection is closed instead (drop), which ends the cursor with it.
            return Ok(body);
        }
    }
    conn.release();
    Ok(body)
}
