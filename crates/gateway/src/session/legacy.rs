//! Legacy OP_QUERY: only the handshake is served, as servers since 5.1 do; anything else gets
//! the error a server gives (`UnsupportedOpQueryCommand`), in an OP_REPLY.

use bson::RawDocument;
use mongomux_wire::{Header, OpQuery};

use super::reply::Outcome;
use super::Session;
use crate::command::{table, Kind};
use crate::error::GatewayError;

impl Session {
    /// Answers an OP_QUERY message.
    pub(super) async fn handle_query(&mut self, frame: &[u8]) -> Outcome {
        let q = match OpQuery::parse(frame) {
            Ok(q) => q,
            Err(e) => {
                let id = Header::parse(frame).map(|h| h.request_id).unwrap_or(0);
                return self.replier().legacy_error(id, GatewayError::from(e), true);
            }
        };
        let cmd = unwrap_query(q.query);
        let name = match cmd.iter().next() {
            Some(Ok((k, _))) => k.to_string(),
            _ => String::new(),
        };
        self.shared.metrics.count_op(&name);
        if q.is_command() && table::lookup(&name).kind == Kind::Hello {
            if let Err(e) = self.check_load_balanced(cmd) {
                return self.replier().legacy_error(q.header.request_id, e, false);
            }
            let reply = self.hello_document(&name, cmd).await;
            return self.replier().legacy_reply(q.header.request_id, &reply);
        }
        let what = if name.is_empty() {
            "query".to_string()
        } else {
            name
        };
        self.replier().legacy_error(
            q.header.request_id,
            GatewayError::UnsupportedOpQuery(what),
            !q.is_command(),
        )
    }
}

/// Old drivers wrap commands in `$query` when they add read preferences.
fn unwrap_query(query: &RawDocument) -> &RawDocument {
    query.get_document("$query").unwrap_or(query)
}
