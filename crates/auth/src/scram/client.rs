//! [`ScramClient`]: the client side of a SCRAM conversation, which the
//! gateway runs to authenticate its own upstream connections (RFC 5802 §3,
//! §5; auth.md "SCRAM-SHA-1", "SCRAM-SHA-256").
//!
//! It owns the client's rules from auth.md: no channel binding (the GS2
//! header is always `n,,`), no SASLprep of the user name, at least
//! [`MIN_ITERATIONS`], a server nonce that extends ours, and verifying the
//! server's signature before the connection is trusted. It never stores the
//! plain password past construction, only the prepared form SCRAM needs.
//!
//! Not done here: the SCRAM credential cache auth.md asks drivers to keep
//! (SaltedPassword per salt and iteration count). A pool that opens many
//! upstream connections should add one in front of `Keys::derive`, since
//! PBKDF2 is deliberately slow.

use std::fmt;

use rand::RngCore;

use super::crypto::{constant_time_eq, hmac, prepare_password, xor, Keys};
use super::message::{
    as_text, auth_message, encode_b64, escape_username, parse_server_final, parse_server_first,
    ServerFinal,
};
use super::{Mechanism, MAX_ITERATIONS, MIN_ITERATIONS};
use crate::{AuthError, Secret};

/// Length of the random part of our nonce, before base64. 24 bytes (192 bits)
/// is well past guessing and base64-encodes without padding.
const NONCE_BYTES: usize = 24;

/// The only GS2 header we send: "n" (no channel binding, auth.md requires
/// `n,`) and no authzid. Its base64 is the `c=biws` of client-final.
const GS2_HEADER: &str = "n,,";

/// Client side of one SCRAM conversation.
///
/// Call [`client_first`](Self::client_first), then
/// [`client_final`](Self::client_final) with the server's first payload, then
/// [`verify_server_final`](Self::verify_server_final) with the server's last
/// payload. Only after the last call succeeds has the server proved it knows
/// the credential.
pub struct ScramClient {
    mechanism: Mechanism,
    username: String,
    /// The password as Hi() consumes it, or `None` if SASLprep rejected it;
    /// that error is reported by `client_final`, since `new` cannot fail.
    prepared_password: Option<Secret>,
    client_nonce: String,
    state: State,
}

enum State {
    /// `client_first` has not been called.
    Initial,
    /// client-first sent; holds client-first-message-bare for AuthMessage.
    FirstSent { client_first_bare: String },
    /// client-final sent; holds the ServerSignature the server must return.
    FinalSent { server_signature: Vec<u8> },
    /// A step failed; the conversation cannot continue.
    Failed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Initial => "initial",
            State::FirstSent { .. } => "first sent",
            State::FinalSent { .. } => "final sent",
            State::Failed => "failed",
        }
    }
}

impl ScramClient {
    /// Starts a conversation with a fresh random nonce.
    pub fn new(mechanism: Mechanism, username: &str, password: &Secret) -> Self {
        let mut bytes = [0u8; NONCE_BYTES];
        // thread_rng is a CSPRNG seeded from the OS; auth.md requires the
        // nonce to be cryptographically random.
        rand::thread_rng().fill_bytes(&mut bytes);
        Self::with_nonce(mechanism, username, password, encode_b64(&bytes))
    }

    /// Starts a conversation with a given nonce. Only for reproducible test
    /// vectors: a predictable nonce lets a man in the middle replay.
    pub(crate) fn with_nonce(
        mechanism: Mechanism,
        username: &str,
        password: &Secret,
        client_nonce: String,
    ) -> Self {
        ScramClient {
            mechanism,
            username: username.to_owned(),
            prepared_password: prepare_password(mechanism, username, password).ok(),
            client_nonce,
            state: State::Initial,
        }
    }

    /// The mechanism this conversation uses.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The saslStart payload: `n,,n=<escaped user>,r=<nonce>` (RFC 5802 §7
    /// client-first-message). Calling it again restarts the conversation and
    /// returns the same bytes.
    pub fn client_first(&mut self) -> Vec<u8> {
        let client_first_bare = format!(
            "n={},r={}",
            escape_username(&self.username),
            self.client_nonce
        );
        let message = format!("{GS2_HEADER}{client_first_bare}").into_bytes();
        self.state = State::FirstSent { client_first_bare };
        message
    }

    /// Takes the server-first payload (from the saslStart reply) and returns
    /// the client-final payload for saslContinue.
    ///
    /// Fails if the message is malformed, the nonce does not extend ours,
    /// the iteration count is below [`MIN_ITERATIONS`], or the password was
    /// rejected by SASLprep. Any failure ends the conversation.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        let client_first_bare = match std::mem::replace(&mut self.state, State::Failed) {
            State::FirstSent { client_first_bare } => client_first_bare,
            other => {
                self.state = other;
                return Err(AuthError::OutOfOrder(
                    "client_final needs client_first to have been called",
                ));
            }
        };
        let (message, server_signature) = self.compute_final(&client_first_bare, server_first)?;
        self.state = State::FinalSent { server_signature };
        Ok(message)
    }

    /// The RFC 5802 §3 client computation; on error the state stays Failed.
    fn compute_final(
        &self,
        client_first_bare: &str,
        server_first: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), AuthError> {
        let server_first = as_text(server_first, "server-first: not UTF-8 or too long")?;
        let parsed = parse_server_first(server_first)?;
        // RFC 5802 §5.1 "r": the server appends to our nonce. Requiring it to
        // add something stops a server (or relay) that just echoes ours.
        if !parsed.nonce.starts_with(&self.client_nonce)
            || parsed.nonce.len() == self.client_nonce.len()
        {
            return Err(AuthError::NonceMismatch);
        }
        // Checked before any PBKDF2 work (auth.md: MUST error below 4096).
        if parsed.iterations < MIN_ITERATIONS {
            return Err(AuthError::IterationCountTooLow {
                iterations: parsed.iterations,
                minimum: MIN_ITERATIONS,
            });
        }
        if parsed.iterations > MAX_ITERATIONS {
            return Err(AuthError::IterationCountTooHigh {
                iterations: parsed.iterations,
                maximum: MAX_ITERATIONS,
            });
        }
        let password = self
            .prepared_password
            .as_ref()
            .ok_or(AuthError::InvalidPassword)?;

        let keys = Keys::derive(self.mechanism, password, &parsed.salt, parsed.iterations);
        let without_proof = format!("c={},r={}", encode_b64(GS2_HEADER.as_bytes()), parsed.nonce);
        let auth = auth_message(client_first_bare, server_first, &without_proof);
        let client_signature = hmac(self.mechanism, &keys.stored_key, &auth);
        let proof = xor(&keys.client_key, &client_signature);
        let server_signature = hmac(self.mechanism, &keys.server_key, &auth);
        let message = format!("{without_proof},p={}", encode_b64(&proof)).into_bytes();
        Ok((message, server_signature))
    }

    /// Checks the server-final payload (`v=<ServerSignature>`) in constant
    /// time. An `e=` reply becomes [`AuthError::ServerRejected`].
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), AuthError> {
        let State::FinalSent { server_signature } = &self.state else {
            return Err(AuthError::OutOfOrder(
                "verify_server_final needs client_final to have succeeded",
            ));
        };
        let text = as_text(server_final, "server-final: not UTF-8 or too long")?;
        match parse_server_final(text)? {
            ServerFinal::Verifier(v) if constant_time_eq(&v, server_signature) => Ok(()),
            ServerFinal::Verifier(_) => Err(AuthError::ServerSignatureMismatch),
            ServerFinal::Error(e) => Err(e),
        }
    }
}

/// Shows the mechanism, user and step; never the password, nonce or keys.
impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scram::test_vectors::{Vector, PASSWORD, SHA1, SHA256, USER};

    fn vector_client(v: &Vector) -> ScramClient {
        ScramClient::with_nonce(
            v.mechanism,
            USER,
            &Secret::new(PASSWORD),
            v.client_nonce.to_owned(),
        )
    }

    fn server_first_with(v: &Vector, nonce: &str, iterations: u32) -> Vec<u8> {
        format!("r={nonce},s={},i={iterations}", v.salt).into_bytes()
    }

    #[test]
    fn fixed_nonce_vectors() {
        for v in [&SHA1, &SHA256] {
            let mut c = vector_client(v);
            assert_eq!(c.client_first(), v.client_first.as_bytes());
            let fin = c.client_final(v.server_first.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(fin).unwrap(), v.client_final);
            c.verify_server_final(v.server_final.as_bytes()).unwrap();
        }
    }

    #[test]
    fn random_nonces_differ_and_are_valid() {
        let mut a = ScramClient::new(Mechanism::ScramSha256, "u", &Secret::new("p"));
        let mut b = ScramClient::new(Mechanism::ScramSha256, "u", &Secret::new("p"));
        let (fa, fb) = (a.client_first(), b.client_first());
        assert_ne!(fa, fb);
        let text = String::from_utf8(fa).unwrap();
        let nonce = text.strip_prefix("n,,n=u,r=").unwrap();
        assert!(super::super::message::is_valid_nonce(nonce));
        assert_eq!(nonce.len(), 32);
    }

    #[test]
    fn username_is_escaped_not_saslprepped() {
        let mut c = ScramClient::with_nonce(
            Mechanism::ScramSha256,
            "a,b=\u{2168}",
            &Secret::new("p"),
            "abc".into(),
        );
        assert_eq!(c.client_first(), "n,,n=a=2Cb=3D\u{2168},r=abc".as_bytes());
    }

    #[test]
    fn refuses_absurd_iteration_counts() {
        for v in [&SHA1, &SHA256] {
            let nonce = format!("{}{}", v.client_nonce, v.server_nonce_suffix);
            let mut c = vector_client(v);
            c.client_first();
            let err = c
                .client_final(&server_first_with(v, &nonce, u32::MAX))
                .unwrap_err();
            assert!(matches!(err, AuthError::IterationCountTooHigh { .. }));
        }
    }

    #[test]
    fn refuses_low_iteration_counts() {
        for v in [&SHA1, &SHA256] {
            let nonce = format!("{}{}", v.client_nonce, v.server_nonce_suffix);
            let mut c = vector_client(v);
            c.client_first();
            let err = c
                .client_final(&server_first_with(v, &nonce, 4095))
                .unwrap_err();
            assert!(matches!(
                err,
                AuthError::IterationCountTooLow {
                    iterations: 4095,
                    minimum: 4096
                }
            ));
            // The failure ends the conversation.
            assert!(matches!(
                c.client_final(v.server_first.as_bytes()),
                Err(AuthError::OutOfOrder(_))
            ));
        }
    }

    #[test]
    fn server_nonce_must_extend_client_nonce() {
        let v = &SHA256;
        let bad = [
            // A different prefix.
            format!("X{}{}", &v.client_nonce[1..], v.server_nonce_suffix),
            // Only our nonce echoed back.
            v.client_nonce.to_owned(),
            // Truncated: a prefix of ours.
            v.client_nonce[..10].to_owned(),
        ];
        for nonce in bad {
            let mut c = vector_client(v);
            c.client_first();
            let err = c
                .client_final(&server_first_with(v, &nonce, 4096))
                .unwrap_err();
            assert!(matches!(err, AuthError::NonceMismatch), "{nonce}: {err:?}");
        }
    }

    #[test]
    fn tampered_or_rejecting_server_final_fails() {
        let v = &SHA256;
        let mut c = vector_client(v);
        c.client_first();
        c.client_final(v.server_first.as_bytes()).unwrap();
        let mut sig = v.server_final.as_bytes().to_vec();
        sig[5] ^= 0x01;
        assert!(matches!(
            c.verify_server_final(&sig),
            Err(AuthError::ServerSignatureMismatch | AuthError::Malformed(_))
        ));
        // The SHA-1 vector's signature under SHA-256 is the wrong length.
        assert!(matches!(
            c.verify_server_final(SHA1.server_final.as_bytes()),
            Err(AuthError::ServerSignatureMismatch)
        ));
        assert!(matches!(
            c.verify_server_final(b"v="),
            Err(AuthError::ServerSignatureMismatch)
        ));
        assert!(matches!(
            c.verify_server_final(b"e=invalid-proof"),
            Err(AuthError::ServerRejected(s)) if s == "invalid-proof"
        ));
        // A good signature still verifies after failed attempts.
        c.verify_server_final(v.server_final.as_bytes()).unwrap();
    }

    #[test]
    fn steps_out_of_order_are_errors() {
        let v = &SHA1;
        let mut c = vector_client(v);
        assert!(matches!(
            c.client_final(v.server_first.as_bytes()),
            Err(AuthError::OutOfOrder(_))
        ));
        assert!(matches!(
            c.verify_server_final(v.server_final.as_bytes()),
            Err(AuthError::OutOfOrder(_))
        ));
        // Still usable: the out-of-order call did not consume the state.
        c.client_first();
        c.client_final(v.server_first.as_bytes()).unwrap();
        c.verify_server_final(v.server_final.as_bytes()).unwrap();
    }

    #[test]
    fn saslprep_failure_surfaces_at_client_final() {
        let v = &SHA256;
        let mut c = ScramClient::with_nonce(
            v.mechanism,
            USER,
            &Secret::new("bad\u{0007}"),
            v.client_nonce.to_owned(),
        );
        c.client_first();
        assert!(matches!(
            c.client_final(v.server_first.as_bytes()),
            Err(AuthError::InvalidPassword)
        ));
    }

    #[test]
    fn malformed_server_first_is_an_error() {
        let v = &SHA1;
        for bad in [
            &b""[..],
            b"\xff\xfe",
            b"r=",
            b"e=other-error",
            b"r=HItJf50WURZBM709lokRHoASqN4FxmGkXYZ,s=!!,i=4096",
            b"r=HItJf50WURZBM709lokRHoASqN4FxmGkXYZ,s=c2FsdA==,i=4096x",
            b"r=HItJf50WURZBM709lokRHoASqN4FxmGkXYZ,i=4096,s=c2FsdA==",
        ] {
            let mut c = vector_client(v);
            c.client_first();
            assert!(c.client_final(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_shows_no_secrets() {
        let mut c = vector_client(&SHA1);
        c.client_first();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(PASSWORD));
        assert!(!dbg.contains(SHA1.client_nonce));
        assert!(!dbg.contains("1c33006e")); // the MongoDB password digest
    }
}
