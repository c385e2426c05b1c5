//! Encoding what the gateway itself says to a client: replies it builds, and error replies. The
//! mapping of an error to its MongoDB reply document lives in [`GatewayError::to_reply`]; this
//! module only frames it (OP_MSG, or OP_REPLY for the legacy handshake), counts it and logs it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use bson::Document;
use bytes::Bytes;
use mongomux_wire::{encode_op_msg, encode_op_reply, REPLY_QUERY_FAILURE};

use crate::context::Ids;
use crate::error::GatewayError;
use crate::metrics::Metrics;

/// What to do after handling one message.
pub enum Outcome {
    /// Send these bytes.
    Reply(Bytes),
    /// Send nothing (moreToCome requests).
    Silent,
    /// The client is gone; end the session.
    Close,
}

/// Frames the gateway's own replies for one client.
pub struct Replier<'a> {
    /// Reply ids.
    pub ids: &'a Ids,
    /// Error counts.
    pub metrics: &'a Metrics,
    /// For log lines.
    pub peer: SocketAddr,
    /// Set when an error reply is made, for the per-command statistics.
    pub failed: &'a AtomicBool,
}

impl Replier<'_> {
    /// An OP_MSG reply with `body`, answering `request_id`.
    pub fn reply(&self, request_id: i32, body: &Document) -> Outcome {
        let bytes = bson::to_vec(body).expect("gateway replies encode");
        Outcome::Reply(Bytes::from(encode_op_msg(
            self.ids.next_reply_id(),
            request_id,
            0,
            &bytes,
            &[],
        )))
    }

    /// The OP_MSG error reply for `e`.
    pub fn error(&self, request_id: i32, e: GatewayError, in_txn: bool) -> Outcome {
        let (code, _) = e.code();
        self.metrics.count_error(code);
        self.failed.store(true, Ordering::Relaxed);
        tracing::debug!(peer = %self.peer, code, error = %e, "error reply");
        self.reply(request_id, &e.to_reply(in_txn))
    }

    /// An OP_REPLY with `body` (the legacy handshake).
    pub fn legacy_reply(&self, request_id: i32, body: &Document) -> Outcome {
        self.op_reply(request_id, 0, body)
    }

    /// The OP_REPLY error for `e`; `query_failure` sets the QueryFailure flag and `$err`, as
    /// servers do for legacy queries (not for legacy commands).
    pub fn legacy_error(&self, request_id: i32, e: GatewayError, query_failure: bool) -> Outcome {
        self.metrics.count_error(e.code().0);
        self.failed.store(true, Ordering::Relaxed);
        let mut body = e.to_reply(false);
        let flags = if query_failure {
            body.insert("$err", e.to_string());
            REPLY_QUERY_FAILURE
        } else {
            0
        };
        self.op_reply(request_id, flags, &body)
    }

    fn op_reply(&self, request_id: i32, flags: i32, body: &Document) -> Outcome {
        let bytes = bson::to_vec(body).expect("gateway replies encode");
        Outcome::Reply(Bytes::from(encode_op_reply(
            self.ids.next_reply_id(),
            request_id,
            flags,
            &[&bytes],
        )))
    }
}
