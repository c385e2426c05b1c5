//! The request error type, and the one place where any error becomes a MongoDB error
//! reply (`{ok: 0, errmsg, code, codeName, errorLabels}`). Configuration errors are a type of
//! their own ([`crate::settings::ConfigError`]): they never reach a client.
//!
//! The codes for the gateway's own conditions are chosen so that drivers react usefully:
//! retryable codes (retryable reads/writes specs) where a retry can succeed, `ShutdownInProgress`
//! while draining so drivers move to another gateway, and never a "not writable primary" code,
//! which would make drivers mark the whole gateway unknown. Messages never carry secrets.

use bson::{doc, Document};

use crate::upstream::UpstreamError;

/// Everything that can go wrong while serving a client.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No upstream connection could be had, or the upstream failed in the middle of a request.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
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
    /// A value the upstream cannot take (a BSON type it does not support).
    #[error("{0}")]
    UnsupportedValue(String),
    /// A command whose fields are not as the protocol requires.
    #[error("{0}")]
    BadCommand(String),
    /// A feature this gateway does not offer.
    #[error("{0}")]
    NotSupported(String),
    /// A client's `loadBalanced` does not match what the listener serves.
    #[error("{0}")]
    LoadBalancerMismatch(String),
    /// The client's authentication failed.
    #[error("Authentication failed.")]
    AuthenticationFailed,
    /// The client asked for an authentication mechanism the gateway does not offer.
    #[error("{0}")]
    MechanismUnavailable(String),
    /// A Data API request without credentials.
    #[error("{0}")]
    NoCredentials(String),
    /// The client is not allowed to run this command.
    #[error("{0}")]
    Unauthorized(String),
    /// A new session would exceed the client's `max_sessions_per_client`.
    #[error("{0}")]
    TooManySessions(String),
    /// A new cursor would exceed the client's `max_cursors_per_client` or the user's
    /// `max_cursors_per_user`; the cursor was killed upstream.
    #[error("{0}")]
    TooManyCursors(String),
    /// A message larger than the client may send (before authenticating).
    #[error("{0}")]
    MessageTooLarge(String),
    /// A message not received in full within `message_timeout`.
    #[error("{0}")]
    MessageTimeout(String),
    /// A transaction statement after the gateway aborted the transaction (idle too long).
    #[error("{0}")]
    NoSuchTransaction(String),
    /// Forwarding stayed paused (`mongomuxPause`) for the pause's whole wait; the request was
    /// never sent.
    #[error("{0}")]
    Paused(String),
    /// An admin command with bad arguments, or a reload that failed.
    #[error("{0}")]
    AdminCommand(String),
    /// The database refused an operation a Data API request asked for (its code and message,
    /// which the HTTP answer carries).
    #[error("{message}")]
    DataApiRefused {
        /// The database's error code.
        code: i32,
        /// The database's message.
        message: String,
    },
    /// Socket errors on the client side.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl GatewayError {
    /// The MongoDB error code and code name for this error.
    pub fn code(&self) -> (i32, &'static str) {
        match self {
            GatewayError::Upstream(e) => upstream_code(e),
            GatewayError::Io(_) => (6, "HostUnreachable"),
            GatewayError::Draining => (91, "ShutdownInProgress"),
            GatewayError::CursorNotFound(_) => (43, "CursorNotFound"),
            GatewayError::UnsupportedOpQuery(_) => (352, "UnsupportedOpQueryCommand"),
            // A well-formed message asking for something this gateway does not offer is not a
            // parse failure: drivers read 115 as "not supported here".
            GatewayError::Protocol(mongomux_wire::WireError::UnsupportedCompressor(_)) => {
                (115, "CommandNotSupported")
            }
            GatewayError::Protocol(_) => (9, "FailedToParse"),
            GatewayError::InvalidBson(_) => (22, "InvalidBSON"),
            GatewayError::BadCommand(_) => (9, "FailedToParse"),
            GatewayError::UnsupportedValue(_) => (2, "BadValue"),
            GatewayError::NotSupported(_) => (115, "CommandNotSupported"),
            GatewayError::LoadBalancerMismatch(_) => (354, "LoadBalancerSupportMismatch"),
            GatewayError::AuthenticationFailed | GatewayError::NoCredentials(_) => {
                (18, "AuthenticationFailed")
            }
            GatewayError::Unauthorized(_) => (13, "Unauthorized"),
            GatewayError::MechanismUnavailable(_) => (334, "MechanismUnavailable"),
            // What a server answers when its session cache is full.
            GatewayError::TooManySessions(_) => (261, "TooManyLogicalSessions"),
            // No server code means "too many cursors": 261 would name sessions, 2 (BadValue)
            // blames a valid request, and a retryable code would make drivers retry at once,
            // which cannot succeed until the client closes cursors. OperationFailed is the
            // server's own generic, non-retryable refusal.
            GatewayError::TooManyCursors(_) => (96, "OperationFailed"),
            GatewayError::MessageTooLarge(_) => (10334, "BSONObjectTooLarge"),
            GatewayError::MessageTimeout(_) => (262, "ExceededTimeLimit"),
            GatewayError::NoSuchTransaction(_) => (251, "NoSuchTransaction"),
            GatewayError::Paused(_) => (262, "ExceededTimeLimit"),
            GatewayError::AdminCommand(_) => (2, "BadValue"),
            GatewayError::DataApiRefused { .. } => (96, "OperationFailed"),
        }
    }

    /// Whether a driver may retry the operation on another (or the same) gateway connection.
    pub fn is_retryable(&self) -> bool {
        match self {
            GatewayError::Upstream(e) => upstream_retryable(e),
            GatewayError::Draining => true,
            // Never sent upstream, so running it again is safe.
            GatewayError::Paused(_) => true,
            _ => false,
        }
    }

    /// The `errmsg` text: the error, and for upstream failures what caused it (refused, reset,
    /// bad certificate), since only that tells an operator what to fix.
    pub fn message(&self) -> String {
        let mut text = self.to_string();
        if let GatewayError::Upstream(e) = self {
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
        }
        text
    }

    /// The error reply document. `in_transaction` adds the label drivers need to retry the
    /// whole transaction rather than the single command.
    pub fn to_reply(&self, in_transaction: bool) -> Document {
        let (code, name) = self.code();
        let mut reply = doc! {
            "ok": 0.0,
            "errmsg": self.message(),
            "code": code,
            "codeName": name,
        };
        let mut labels = Vec::new();
        if self.is_retryable() {
            labels.push("RetryableWriteError");
            if in_transaction {
                labels.push("TransientTransactionError");
            }
        } else if in_transaction && matches!(self, GatewayError::NoSuchTransaction(_)) {
            // The whole transaction can be run again (what drivers' withTransaction does).
            labels.push("TransientTransactionError");
        }
        if !labels.is_empty() {
            reply.insert("errorLabels", labels);
        }
        reply
    }
}

/// Codes for upstream failures, chosen as the module docs say.
fn upstream_code(e: &UpstreamError) -> (i32, &'static str) {
    use UpstreamError as U;
    match e {
        U::CheckoutTimeout(_) | U::PinTimeout(_) => (262, "ExceededTimeLimit"),
        U::PoolClosed => (91, "ShutdownInProgress"),
        // What a mongos answers when no member fits; for writes the retryable label (added
        // by `is_retryable`) lets the driver's one retry wait for the new primary.
        U::NoPrimary(_) | U::NoMember(_) => (133, "FailedToSatisfyReadPreference"),
        U::BadReadPreference(_) => (2, "BadValue"),
        U::MemberGone(_) => (6, "HostUnreachable"),
        // What a mongos and the drivers report when a reply is overdue; retryable for reads
        // and writes alike (the retryable-writes specification lists it).
        U::Timeout(_) => (89, "NetworkTimeout"),
        U::TlsServerName { .. } => (2, "BadValue"),
        U::Encode(_) => (22, "InvalidBSON"),
        // For auth and refusals too the client did nothing wrong: report the upstream as
        // unusable, not a login failure.
        U::Connect { .. }
        | U::ConnectTimeout { .. }
        | U::Tls { .. }
        | U::Send(_)
        | U::Receive(_)
        | U::Closed
        | U::ReplyMismatch
        | U::UnexpectedOpCode(_)
        | U::BadReply(_)
        | U::Decompress(_)
        | U::BadReplyBson(_)
        | U::Auth(_)
        | U::AwsCredentials { .. }
        | U::Refused { .. }
        | U::MemberUnavailable { .. } => (6, "HostUnreachable"),
    }
}

/// Whether a retry can succeed: not while the gateway's own credentials or configuration are
/// wrong, nor when the upstream refused the gateway's command outright.
fn upstream_retryable(e: &UpstreamError) -> bool {
    use UpstreamError as U;
    match e {
        U::TlsServerName { .. }
        | U::Encode(_)
        | U::Auth(_)
        | U::Refused { .. }
        | U::AwsCredentials { .. }
        | U::NoMember(_)
        | U::BadReadPreference(_) => false,
        U::NoPrimary(_) | U::MemberGone(_) | U::MemberUnavailable { .. } => true,
        U::CheckoutTimeout(_)
        | U::PinTimeout(_)
        | U::PoolClosed
        | U::Connect { .. }
        | U::ConnectTimeout { .. }
        | U::Tls { .. }
        | U::Send(_)
        | U::Receive(_)
        | U::Closed
        | U::Timeout(_)
        | U::ReplyMismatch
        | U::UnexpectedOpCode(_)
        | U::BadReply(_)
        | U::Decompress(_)
        | U::BadReplyBson(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_code_and_labels() {
        let r = GatewayError::from(UpstreamError::CheckoutTimeout(
            std::time::Duration::from_secs(1),
        ))
        .to_reply(true);
        assert_eq!(r.get_i32("code").unwrap(), 262);
        assert_eq!(r.get_f64("ok").unwrap(), 0.0);
        let labels = r.get_array("errorLabels").unwrap();
        assert_eq!(labels.len(), 2);
        let r = GatewayError::CursorNotFound(7).to_reply(false);
        assert_eq!(r.get_str("codeName").unwrap(), "CursorNotFound");
        assert!(r.get("errorLabels").is_none());
    }

    #[test]
    fn an_unsupported_compressor_is_not_supported_not_a_parse_error() {
        let e = GatewayError::from(mongomux_wire::WireError::UnsupportedCompressor(1));
        assert_eq!(e.code(), (115, "CommandNotSupported"));
        let e = GatewayError::from(mongomux_wire::WireError::CompressedSizeMismatch);
        assert_eq!(e.code().0, 9);
    }

    #[test]
    fn upstream_errors_keep_their_codes_and_say_what_caused_them() {
        use std::io::ErrorKind;
        let second = std::time::Duration::from_secs(1);
        let refused = || std::io::Error::from(ErrorKind::ConnectionRefused);
        let cases: Vec<(UpstreamError, i32, bool)> = vec![
            (UpstreamError::CheckoutTimeout(second), 262, true),
            (UpstreamError::PinTimeout(second), 262, true),
            (UpstreamError::PoolClosed, 91, true),
            (
                UpstreamError::Connect {
                    address: "db:27017".into(),
                    source: refused(),
                },
                6,
                true,
            ),
            (
                UpstreamError::ConnectTimeout {
                    address: "db:27017".into(),
                },
                6,
                true,
            ),
            (UpstreamError::Send(refused()), 6, true),
            (UpstreamError::Closed, 6, true),
            (UpstreamError::Timeout(second), 89, true),
            (
                UpstreamError::BadReply(mongomux_wire::WireError::BodyCount(0)),
                6,
                true,
            ),
            (
                UpstreamError::Decompress(
                    crate::upstream::compression::CompressionError::UnknownCompressor(9),
                ),
                6,
                true,
            ),
            (UpstreamError::Auth(None), 6, false),
            (
                UpstreamError::MemberUnavailable {
                    address: "h:1".into(),
                    code: 91,
                    name: "ShutdownInProgress".into(),
                },
                6,
                true,
            ),
            (
                UpstreamError::Refused {
                    code: 13,
                    name: "Unauthorized".into(),
                },
                6,
                false,
            ),
        ];
        for (e, code, retryable) in cases {
            let e = GatewayError::from(e);
            assert_eq!((e.code().0, e.is_retryable()), (code, retryable), "{e:?}");
        }
        let e = GatewayError::from(UpstreamError::Connect {
            address: "db:27017".into(),
            source: refused(),
        });
        assert_eq!(e.to_string(), "upstream unavailable: connect to db:27017");
        let reply = e.to_reply(false);
        let errmsg = reply.get_str("errmsg").unwrap();
        assert_eq!(
            errmsg,
            format!("upstream unavailable: connect to db:27017: {}", refused())
        );
        let e = GatewayError::from(UpstreamError::PinTimeout(second));
        assert_eq!(
            e.message(),
            "timed out after 1s waiting to pin a connection for a transaction"
        );
    }
}
