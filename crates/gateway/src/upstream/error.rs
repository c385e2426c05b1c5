//! [`UpstreamError`]: every way the pool or an upstream connection can fail.
//!
//! Each variant keeps the error that caused it as its `source()`, so logs and the error reply
//! can say what actually went wrong (refused, reset, bad certificate) instead of a flattened
//! string. The `Display` texts are the ones clients have always seen in `errmsg` (tests and
//! users match on the checkout-timeout texts); the source chain is appended where the error is
//! turned into a reply (crate::error). No variant holds a password: the gateway's credentials
//! stay in the configuration, and addresses are `host:port` only.
//!
//! Codes and retryability live with the other reply mappings in crate::error, not here.

use std::time::Duration;

use mongomux_auth::AuthError;
use mongomux_wire::WireError;

use crate::framed::FrameError;

/// A failure to get or use an upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No slot became free within the checkout timeout.
    #[error("timed out after {0:?} waiting for an upstream connection; the pool is exhausted")]
    CheckoutTimeout(Duration),
    /// Too many transactions already hold pinned connections.
    #[error("timed out after {0:?} waiting to pin a connection for a transaction")]
    PinTimeout(Duration),
    /// The pool was closed: the gateway is shutting down.
    #[error("the gateway is shutting down")]
    PoolClosed,
    /// The TCP connection could not be made.
    #[error("upstream unavailable: connect to {address}")]
    Connect {
        /// `host:port` of the upstream.
        address: String,
        /// Why the socket did not connect.
        #[source]
        source: std::io::Error,
    },
    /// Connecting, saying hello and authenticating took longer than the connect timeout.
    #[error("upstream unavailable: connecting to {address} timed out")]
    ConnectTimeout {
        /// `host:port` of the upstream.
        address: String,
    },
    /// The upstream host is not something a TLS certificate can be checked against; this is
    /// a configuration fault, reported as one.
    #[error("invalid configuration: {host:?} is not a valid TLS server name")]
    TlsServerName {
        /// The host part of the upstream address.
        host: String,
        /// What rustls objected to.
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The TLS handshake with the upstream failed.
    #[error("upstream unavailable: TLS with {address}")]
    Tls {
        /// `host:port` of the upstream.
        address: String,
        /// The handshake failure (certificate, protocol, socket).
        #[source]
        source: std::io::Error,
    },
    /// Writing a request failed.
    #[error("upstream unavailable: sending request")]
    Send(#[source] std::io::Error),
    /// Reading a reply failed, or its length prefix was out of range.
    #[error("upstream unavailable: reading reply")]
    Receive(#[source] FrameError),
    /// The upstream closed the connection between messages.
    #[error("upstream unavailable: connection closed by upstream")]
    Closed,
    /// No reply arrived within the deadline (`upstream_timeout`, or the command's `maxTimeMS`
    /// and a margin): the connection is closed, since its reply may still come.
    #[error("upstream did not answer within {0:?}; the connection was closed")]
    Timeout(Duration),
    /// A reply whose `responseTo` is not the request just sent.
    #[error("upstream unavailable: reply does not answer the request sent")]
    ReplyMismatch,
    /// A reply that is not an OP_MSG.
    #[error("upstream unavailable: unexpected reply opcode {0}")]
    UnexpectedOpCode(i32),
    /// A reply that does not decode as a message.
    #[error("upstream unavailable: the upstream sent a reply that does not parse")]
    BadReply(#[source] WireError),
    /// An OP_COMPRESSED reply that does not unwrap: unknown compressor, a declared size out of
    /// bounds or not matching the payload, or a payload the codec refuses.
    #[error("upstream unavailable: the upstream sent a compressed reply that does not decompress")]
    Decompress(#[source] super::compression::CompressionError),
    /// A reply whose body is not valid BSON.
    #[error("upstream unavailable: the upstream sent a reply that does not parse")]
    BadReplyBson(#[source] bson::raw::Error),
    /// A command the gateway built could not be encoded.
    #[error("invalid BSON in a command the gateway built")]
    Encode(#[source] bson::ser::Error),
    /// The upstream rejected the gateway's own credentials, or the SCRAM conversation with it
    /// failed (the source says which step, never the secret).
    #[error("the gateway could not authenticate to the upstream")]
    Auth(#[source] Option<AuthError>),
    /// No usable AWS credentials for a MONGODB-AWS login: the provider chain failed, or gave
    /// credentials that are expired or about to expire. The source, when there is one, is the
    /// provider's own error (which endpoint, which status), never a key.
    #[error("the gateway could not get AWS credentials to authenticate to the upstream: {reason}")]
    AwsCredentials {
        /// What went wrong, in words fixed at compile time.
        reason: &'static str,
        /// The provider chain's error.
        #[source]
        source: Option<aws_credential_types::provider::error::CredentialsError>,
    },
    /// Server selection found no primary (or router) in time: an election, or all down.
    #[error("{0}")]
    NoPrimary(String),
    /// Server selection found no member for a read preference in time.
    #[error("{0}")]
    NoMember(String),
    /// A read preference no member can ever satisfy with this configuration.
    #[error("invalid read preference: {0}")]
    BadReadPreference(String),
    /// The member a cursor or transaction lives on left the topology.
    #[error("upstream member {0} is no longer part of the deployment")]
    MemberGone(String),
    /// The upstream answered `{ok: 0}` to a command the gateway itself sent; the connection is
    /// still in a clean state.
    #[error("upstream refused a gateway command: {name} ({code})")]
    Refused {
        /// The upstream's error code.
        code: i32,
        /// The upstream's `codeName`.
        name: String,
    },
    /// While the gateway set a connection up, the member answered that it is not primary,
    /// recovering or shutting down (a quiescing router, a stepped-down primary): the member,
    /// not the gateway, is the problem, so it is marked Unknown and another one may serve.
    #[error("upstream member {address} is unavailable: {name} ({code})")]
    MemberUnavailable {
        /// `host:port` of the member.
        address: String,
        /// The state-change error code it answered.
        code: i32,
        /// The upstream's `codeName`.
        name: String,
    },
}

/// "Not primary" and "node is recovering" codes (the SDAM specification's error handling):
/// the member's state changed under the operation.
const NOT_PRIMARY: [i32; 3] = [10107, 13435, 10058];
const RECOVERING: [i32; 5] = [11600, 11602, 13436, 189, 91];
/// Of those, the ones that mean the member is going away: its idle connections are closed.
const SHUTTING_DOWN: [i32; 2] = [11600, 91];

/// Whether an error code says the member's state changed (not primary, recovering).
pub fn is_state_change(code: i32) -> bool {
    NOT_PRIMARY.contains(&code) || RECOVERING.contains(&code)
}

/// Whether an error code says the member refused the operation before running any of it: not
/// primary (checked before a write starts), not primary or secondary (recovering), or shutdown
/// in progress (a quiescing server refuses new operations). Unlike 189, 11600 and 11602, which
/// interrupt an operation that may have done part of its work, these may be sent elsewhere even
/// to a server that cannot deduplicate a retried write.
pub fn refused_before_running(code: i32) -> bool {
    matches!(code, 10107 | 13435 | 10058 | 13436 | 91)
}

/// Whether an error code says the member is shutting down.
pub fn is_shutting_down(code: i32) -> bool {
    SHUTTING_DOWN.contains(&code)
}

impl UpstreamError {
    /// The member a connection attempt failed to reach, for errors that say it is unreachable.
    pub fn unreachable_member(&self) -> Option<&str> {
        match self {
            UpstreamError::Connect { address, .. }
            | UpstreamError::ConnectTimeout { address }
            | UpstreamError::Tls { address, .. }
            | UpstreamError::MemberUnavailable { address, .. } => Some(address),
            _ => None,
        }
    }

    /// Whether the connection the error came from is still in a clean state and may go back
    /// to the pool: only a clean `{ok: 0}` answer leaves it so.
    pub fn connection_is_clean(&self) -> bool {
        matches!(self, UpstreamError::Refused { .. })
    }
}
