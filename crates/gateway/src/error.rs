//! The request error type, and the one place where any error becomes a MongoDB error
//! reply (`{ok: 0, errmsg, code, codeName, errorLabels}`). Configuration errors are a type of
//! their own ([`crate::settings::ConfigError`]): they never reach a client.
//!
//! The codes for the gateway's own conditions are chosen so that drivers react usefully:
//! retryable codes (retryable reads/writes specs) where a retry can succeed, `ShutdownInProgress`
//! while draining so drivers move to another gateway, and never a "not writable primary" code,
//! which would make drivers mark the whole gateway unknown. Messages never carry secrets.

use bson::{doc, Document};

/// Everything that can go wrong while serving a client.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No upstream connection became free within the checkout timeout.
    #[error("timed out after {0:?} waiting for an upstream connection; the pool is exhausted")]
    CheckoutTimeout(std::time::Duration),
    /// Too many transactions already hold pinned connections.
    #[error("timed out after {0:?} waiting to pin a connection for a transaction")]
    PinTimeout(std::time::Duration),
    /// The upstream could not be reached, or failed in the middle of a request.
    #[error("upstream unavailable: {0}")]
    Upstream(String),
    /// The upstream answered `{ok: 0}` to a command the gateway itself sent; the connection
    /// is still in a clean state.
    #[error("upstream refused a gateway command: {name} ({code})")]
    UpstreamRefused { code: i32, name: String },
    /// The upstream rejected the gateway's own credentials.
    #[error("the gateway could not authenticate to the upstream")]
    UpstreamAuth,
    /// The gateway is draining and takes no new work.
    #[error("the gateway is shutting down")]
    Draining,
    /// A getMore/killCursors for a cursor this client does not own.
    #[error("cursor id {0} not found")]
    CursorNotFound(i64),
    /// An OP_QUERY other than the handshake.
    #[error("unsupported OP_QUERY command: {0}; only hello/isMaster may use OP_QUERY")]
    UnsupportedOpQuery(String),
    /// A message the gateway could frame but not decode.
    #[error("invalid message: {0}")]
    Protocol(#[from] mongomux_wire::WireError),
    /// A BSON document that does not decode.
    #[error("invalid BSON: {0}")]
    InvalidBson(String),
    /// A command whose fields are not as the protocol requires.
    #[error("{0}")]
    BadCommand(String),
    /// A feature this gateway does not offer.
    #[error("{0}")]
    NotSupported(String),
    /// The client's authentication failed.
    #[error("Authentication failed.")]
    AuthenticationFailed,
    /// The client asked for an authentication mechanism the gateway does not offer.
    #[error("{0}")]
    MechanismUnavailable(String),
    /// The client is not allowed to run this command.
    #[error("{0}")]
    Unauthorized(String),
    /// Socket errors on the client side.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl GatewayError {
    /// The MongoDB error code and code name for this error.
    pub fn code(&self) -> (i32, &'static str) {
        match self {
            GatewayError::CheckoutTimeout(_) | GatewayError::PinTimeout(_) => {
                (262, "ExceededTimeLimit")
            }
            GatewayError::Upstream(_) | GatewayError::Io(_) => (6, "HostUnreachable"),
            // The client did nothing wrong: report the upstream as unusable, not a login failure.
            GatewayError::UpstreamAuth => (6, "HostUnreachable"),
            GatewayError::UpstreamRefused { .. } => (6, "HostUnreachable"),
            GatewayError::Draining => (91, "ShutdownInProgress"),
            GatewayError::CursorNotFound(_) => (43, "CursorNotFound"),
            GatewayError::UnsupportedOpQuery(_) => (352, "UnsupportedOpQueryCommand"),
            GatewayError::Protocol(_) => (9, "FailedToParse"),
            GatewayError::InvalidBson(_) => (22, "InvalidBSON"),
            GatewayError::BadCommand(_) => (9, "FailedToParse"),
            GatewayError::NotSupported(_) => (115, "CommandNotSupported"),
            GatewayError::AuthenticationFailed => (18, "AuthenticationFailed"),
            GatewayError::Unauthorized(_) => (13, "Unauthorized"),
            GatewayError::MechanismUnavailable(_) => (334, "MechanismUnavailable"),
        }
    }

    /// Whether a driver may retry the operation on another (or the same) gateway connection.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::CheckoutTimeout(_)
                | GatewayError::PinTimeout(_)
                | GatewayError::Upstream(_)
                | GatewayError::Draining
        )
    }

    /// The error reply document. `in_transaction` adds the label drivers need to retry the
    /// whole transaction rather than the single command.
    pub fn to_reply(&self, in_transaction: bool) -> Document {
        let (code, name) = self.code();
        let mut reply = doc! {
            "ok": 0.0,
            "errmsg": self.to_string(),
            "code": code,
            "codeName": name,
        };
        let mut labels = Vec::new();
        if self.is_retryable() {
            labels.push("RetryableWriteError");
            if in_transaction {
                labels.push("TransientTransactionError");
            }
        }
        if !labels.is_empty() {
            reply.insert("errorLabels", labels);
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_code_and_labels() {
        let r = GatewayError::CheckoutTimeout(std::time::Duration::from_secs(1)).to_reply(true);
        assert_eq!(r.get_i32("code").unwrap(), 262);
        assert_eq!(r.get_f64("ok").unwrap(), 0.0);
        let labels = r.get_array("errorLabels").unwrap();
        assert_eq!(labels.len(), 2);
        let r = GatewayError::CursorNotFound(7).to_reply(false);
        assert_eq!(r.get_str("codeName").unwrap(), "CursorNotFound");
        assert!(r.get("errorLabels").is_none());
    }
}
