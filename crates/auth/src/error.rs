//! [`AuthError`]: every way an authentication step in this crate can fail.
//!
//! The messages are written to be safe to log and to send to a client as-is:
//! they name the step and the rule that was broken, never a password, a key,
//! a proof, a signature or a nonce. Parsers report which field was wrong with
//! a `&'static str`, so a message can never echo attacker-controlled bytes.
//!
//! A server must answer an unknown user and a wrong password identically
//! (auth.md, test plan step 3); both are [`AuthError::AuthenticationFailed`].
//! Mapping these variants to MongoDB error replies (code 18,
//! AuthenticationFailed) is the gateway's job, done in one place there.

/// An authentication failure. Its `Display` never contains secret material.
#[derive(thiserror::Error, Debug)]
pub enum AuthError {
    /// A SCRAM message does not follow the RFC 5802 §7 grammar. The text says
    /// which part, not what the bytes were.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),

    /// The client asked for channel binding (`p=...`). MongoDB does not support
    /// it (auth.md "SCRAM-SHA-1"), so only the `n,,` and `y,,` GS2 headers are
    /// accepted.
    #[error("SCRAM channel binding is not supported; the GS2 header must be \"n,,\" or \"y,,\"")]
    ChannelBindingNotSupported,

    /// A valid but unsupported SCRAM feature, such as an authorization
    /// identity (`a=`) or a mandatory extension (`m=`).
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),

    /// The nonce in a later message does not extend (client side) or equal
    /// (server side) the nonce agreed so far (RFC 5802 §5.1 "r").
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,

    /// The server offered fewer PBKDF2 iterations than clients accept; refusing
    /// stops a man in the middle from downgrading the key derivation
    /// (auth.md "SCRAM-SHA-1" / "SCRAM-SHA-256").
    #[error("SCRAM iteration count {iterations} is below the minimum of {minimum}")]
    IterationCountTooLow {
        /// The count the server sent.
        iterations: u32,
        /// The smallest count accepted.
        minimum: u32,
    },

    /// The server asked for more PBKDF2 iterations than a client will run.
    #[error("SCRAM iteration count {iterations} is above the maximum of {maximum}")]
    IterationCountTooHigh {
        /// The count the server sent.
        iterations: u32,
        /// The largest count accepted.
        maximum: u32,
    },

    /// The client proof did not verify: wrong password, unknown user, or a
    /// mechanism the user has no credential for. Deliberately one variant so
    /// the cases cannot be told apart.
    #[error("authentication failed")]
    AuthenticationFailed,

    /// The server's final signature (`v=`) is wrong: the server does not know
    /// the credential, so the connection must not be trusted.
    #[error("SCRAM server signature mismatch: the server did not prove it knows the credential")]
    ServerSignatureMismatch,

    /// The server ended the exchange with an `e=` server-error (RFC 5802 §7).
    /// The value is reduced to at most 64 printable ASCII characters.
    #[error("SCRAM server reported an error: {0}")]
    ServerRejected(String),

    /// The password cannot be prepared: SASLprep (RFC 4013) rejects it, as a
    /// SCRAM-SHA-256 password must pass it (RFC 7677 §4, auth.md
    /// "SCRAM-SHA-256"). The offending character is deliberately not reported.
    #[error("the password contains characters SASLprep prohibits")]
    InvalidPassword,

    /// A stored credential is unusable (bad base64, wrong key length). This
    /// is a configuration fault on the server side, not a client's fault.
    #[error("invalid stored SCRAM credential: {0}")]
    InvalidCredential(&'static str),

    /// A conversation method was called in the wrong order, or after the
    /// conversation had already finished or failed.
    #[error("SCRAM conversation step out of order: {0}")]
    OutOfOrder(&'static str),

    /// The server's MONGODB-AWS reply breaks a rule the client must check
    /// (auth.md, "MONGODB-AWS", "Conversation"): the nonce length or prefix,
    /// or the STS host. The text names the rule, never the bytes.
    #[error("invalid MONGODB-AWS reply from the server: {0}")]
    AwsServerReply(&'static str),

    /// The MONGODB-AWS request could not be signed (SigV4). The signer's own
    /// error is not kept: it is never about the server, and this one cannot
    /// carry a credential by construction.
    #[error("could not sign the MONGODB-AWS request: {0}")]
    AwsSigning(&'static str),
}

impl AuthError {
    /// Builds [`AuthError::ServerRejected`] from an `e=` value, keeping only a
    /// bounded run of printable ASCII so a hostile upstream cannot inject
    /// control characters or megabytes into our logs.
    pub(crate) fn server_rejected(value: &str) -> Self {
        const MAX: usize = 64;
        let cleaned: String = value
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(MAX)
            .collect();
        AuthError::ServerRejected(cleaned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_rejected_is_sanitised_and_bounded() {
        let long = format!("invalid-proof\n\u{1b}[31m{}", "x".repeat(500));
        let AuthError::ServerRejected(s) = AuthError::server_rejected(&long) else {
            panic!("wrong variant");
        };
        assert!(s.starts_with("invalid-proof[31m"));
        assert_eq!(s.len(), 64);
    }
}
