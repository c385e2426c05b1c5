//! [`ScramServer`]: the server side of a SCRAM conversation, which the
//! gateway runs to authenticate its own clients (RFC 5802 §3, §5; auth.md
//! "SCRAM-SHA-1", "SCRAM-SHA-256").
//!
//! It owns three guarantees the rest of the gateway relies on:
//!
//! - it verifies proofs against a stored [`ScramCredential`] and never sees
//!   a password;
//! - the proof check is constant-time (`subtle`), so timing does not reveal
//!   how close a guess was;
//! - an unknown user is indistinguishable from a wrong password: the
//!   conversation goes on with a salt derived from the user name and a
//!   per-process secret (stable across attempts, like a real salt) and the
//!   mechanism's default iteration count, and fails at the proof with the
//!   same [`AuthError::AuthenticationFailed`].
//!
//! It does no I/O, keeps no global state other than that process secret, and
//! never tells its caller whether the user existed.

use std::fmt;
use std::sync::OnceLock;

use rand::RngCore;

use super::credential::KeyMaterial;
use super::crypto::{constant_time_eq, hash, hmac, xor};
use super::message::{as_text, auth_message, encode_b64, parse_client_final, parse_client_first};
use super::{Mechanism, ScramCredential};
use crate::AuthError;

/// Length of the random part the server adds to the nonce, before base64.
const NONCE_BYTES: usize = 24;

/// Server side of one SCRAM conversation: [`start`](Self::start) on
/// saslStart, [`finish`](Self::finish) on the first saslContinue.
pub struct ScramServer {
    mechanism: Mechanism,
    username: String,
    /// "n,," or "y,,", which client-final's `c=` must repeat.
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    /// Client nonce followed by ours; client-final must repeat it exactly.
    nonce: String,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    finished: bool,
}

impl ScramServer {
    /// Parses the client-first payload of saslStart and returns the
    /// conversation and the server-first payload to send back.
    ///
    /// `lookup` receives the un-escaped user name from the message and
    /// returns that user's credential. `None`, or a credential for a
    /// different mechanism, does not fail here: the conversation proceeds
    /// with fake parameters and fails in [`finish`](Self::finish) exactly as
    /// a wrong password does. A credential that cannot be decoded fails with
    /// [`AuthError::InvalidCredential`]; run [`ScramCredential::validate`]
    /// when loading the store so this does not happen at login time.
    pub fn start(
        mechanism: Mechanism,
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
    ) -> Result<(Self, Vec<u8>), AuthError> {
        let mut bytes = [0u8; NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self::start_with_nonce(mechanism, client_first, lookup, &encode_b64(&bytes))
    }

    /// [`start`](Self::start) with the server's nonce part given. Only for
    /// reproducible test vectors.
    pub(crate) fn start_with_nonce(
        mechanism: Mechanism,
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        server_nonce: &str,
    ) -> Result<(Self, Vec<u8>), AuthError> {
        let text = as_text(client_first, "client-first: not UTF-8 or too long")?;
        let parsed = parse_client_first(text)?;
        let material = match lookup(&parsed.username) {
            Some(c) if c.mechanism == mechanism => c.decode()?,
            _ => fake_material(mechanism, &parsed.username),
        };
        let nonce = format!("{}{server_nonce}", parsed.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            material.salt_b64, material.iterations
        );
        let reply = server_first.clone().into_bytes();
        let server = ScramServer {
            mechanism,
            username: parsed.username,
            gs2_header: parsed.gs2_header.to_owned(),
            client_first_bare: parsed.bare.to_owned(),
            server_first,
            nonce,
            stored_key: material.stored_key,
            server_key: material.server_key,
            finished: false,
        };
        Ok((server, reply))
    }

    /// The user name from client-first, `=2C`/`=3D` un-escaped. Not proof
    /// of anything until [`finish`](Self::finish) has succeeded.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The mechanism this conversation uses.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Verifies the client-final payload and, on success, returns the
    /// server-final payload `v=<ServerSignature>` (RFC 5802 §3).
    ///
    /// A conversation gets one attempt: any call after the first, whatever
    /// its outcome, is [`AuthError::OutOfOrder`].
    pub fn finish(&mut self, client_final: &[u8]) -> Result<Vec<u8>, AuthError> {
        if self.finished {
            return Err(AuthError::OutOfOrder("finish was already called"));
        }
        self.finished = true;

        let text = as_text(client_final, "client-final: not UTF-8 or too long")?;
        let parsed = parse_client_final(text)?;
        // Without channel-binding data, c= is just the GS2 header again
        // (RFC 5802 §5.1 "c"); a different one means the header was altered.
        if parsed.channel_binding != self.gs2_header.as_bytes() {
            return Err(AuthError::Malformed(
                "client-final: channel binding (c=) does not match the GS2 header",
            ));
        }
        if parsed.nonce != self.nonce {
            return Err(AuthError::NonceMismatch);
        }
        if parsed.proof.len() != self.mechanism.hash_len() {
            return Err(AuthError::Malformed(
                "client-final: proof has the wrong length",
            ));
        }

        // RFC 5802 §3: recover ClientKey from the proof and check that it
        // hashes to StoredKey.
        let auth = auth_message(
            &self.client_first_bare,
            &self.server_first,
            parsed.without_proof,
        );
        let client_signature = hmac(self.mechanism, &self.stored_key, &auth);
        let client_key = xor(&parsed.proof, &client_signature);
        if !constant_time_eq(&hash(self.mechanism, &client_key), &self.stored_key) {
            return Err(AuthError::AuthenticationFailed);
        }
        let server_signature = hmac(self.mechanism, &self.server_key, &auth);
        Ok(format!("v={}", encode_b64(&server_signature)).into_bytes())
    }
}

/// A random key, made once per process, from which fake credentials for
/// unknown users are derived. It has to be secret (or anyone could compute
/// the fake salt and compare) and stable for the process (or asking twice
/// would show a salt that changes, which a real one never does). It is the
/// one piece of global state in this crate, because a per-process value is
/// exactly what is wanted and no caller should have to thread it through.
fn process_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        key
    })
}

/// Parameters for a user with no credential: a salt of the real length and
/// keys of the real length, all HMAC(process secret, label | mechanism |
/// user name), and the mechanism's default iteration count. No password
/// hashes to these keys, so the proof check fails as for a wrong password.
fn fake_material(mechanism: Mechanism, username: &str) -> KeyMaterial {
    let secret = process_secret();
    let derive = |label: &str, len: usize| -> Vec<u8> {
        let input = format!("mongomux fake {label}\0{}\0{username}", mechanism.name());
        // HMAC-SHA-256 gives 32 bytes, enough for every length we need.
        let mut out = hmac(Mechanism::ScramSha256, secret, input.as_bytes());
        out.truncate(len);
        out
    };
    KeyMaterial {
        salt_b64: encode_b64(&derive("salt", mechanism.salt_len())),
        iterations: mechanism.default_iterations(),
        stored_key: derive("stored key", mechanism.hash_len()),
        server_key: derive("server key", mechanism.hash_len()),
    }
}

/// Shows the mechanism, user and whether `finish` ran; never keys or nonces.
impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scram::message::decode_b64;
    use crate::scram::test_vectors::{Vector, SHA1, SHA256, USER};

    /// Which error a malformed input must produce.
    type Check = fn(&AuthError) -> bool;

    fn vector_credential(v: &Vector) -> ScramCredential {
        ScramCredential {
            mechanism: v.mechanism,
            salt: v.salt.into(),
            iterations: v.iterations,
            stored_key: v.stored_key.into(),
            server_key: v.server_key.into(),
        }
    }

    fn vector_server(v: &Vector) -> (ScramServer, Vec<u8>) {
        ScramServer::start_with_nonce(
            v.mechanism,
            v.client_first.as_bytes(),
            |u| (u == USER).then(|| vector_credential(v)),
            v.server_nonce_suffix,
        )
        .unwrap()
    }

    #[test]
    fn fixed_nonce_vectors() {
        for v in [&SHA1, &SHA256] {
            let (mut s, first) = vector_server(v);
            assert_eq!(s.username(), USER);
            assert_eq!(String::from_utf8(first).unwrap(), v.server_first);
            let fin = s.finish(v.client_final.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(fin).unwrap(), v.server_final);
        }
    }

    #[test]
    fn one_attempt_per_conversation() {
        let (mut s, _) = vector_server(&SHA256);
        assert!(s.finish(b"garbage").is_err());
        assert!(matches!(
            s.finish(SHA256.client_final.as_bytes()),
            Err(AuthError::OutOfOrder(_))
        ));
    }

    #[test]
    fn unknown_user_gets_plausible_stable_parameters() {
        for m in [Mechanism::ScramSha1, Mechanism::ScramSha256] {
            let start = |user: &str| {
                let first = format!("n,,n={user},r=abc");
                let (_, reply) = ScramServer::start(m, first.as_bytes(), |_| None).unwrap();
                let reply = String::from_utf8(reply).unwrap();
                let parsed = crate::scram::message::parse_server_first(&reply).unwrap();
                (parsed.salt, parsed.iterations)
            };
            let (salt_a, iters) = start("ghost");
            assert_eq!(salt_a.len(), m.salt_len());
            assert_eq!(iters, m.default_iterations());
            // Stable for the same user, like a stored salt.
            assert_eq!(start("ghost").0, salt_a);
            // Different for another user.
            assert_ne!(start("phantom").0, salt_a);
        }
    }

    #[test]
    fn unknown_user_fails_like_wrong_proof() {
        // Replay the SHA-256 vector's client-final against a server that does
        // not know "user": the proof is well-formed but cannot verify.
        let v = &SHA256;
        let (mut s, _) = ScramServer::start_with_nonce(
            v.mechanism,
            v.client_first.as_bytes(),
            |_| None,
            v.server_nonce_suffix,
        )
        .unwrap();
        let unknown = s.finish(v.client_final.as_bytes()).unwrap_err();

        // A known user with a wrong password: same shape, one proof bit off.
        let (mut s, _) = vector_server(v);
        let (without_proof, proof) = v.client_final.rsplit_once(",p=").unwrap();
        let mut proof = decode_b64(proof, "proof").unwrap();
        proof[0] ^= 0x80;
        let tampered = format!("{without_proof},p={}", encode_b64(&proof));
        let wrong = s.finish(tampered.as_bytes()).unwrap_err();

        assert!(matches!(unknown, AuthError::AuthenticationFailed));
        assert!(matches!(wrong, AuthError::AuthenticationFailed));
        assert_eq!(unknown.to_string(), wrong.to_string());
    }

    #[test]
    fn credential_for_other_mechanism_counts_as_unknown() {
        let v = &SHA256;
        let (mut s, first) = ScramServer::start_with_nonce(
            Mechanism::ScramSha256,
            v.client_first.as_bytes(),
            |_| Some(vector_credential(&SHA1)),
            v.server_nonce_suffix,
        )
        .unwrap();
        let first = String::from_utf8(first).unwrap();
        assert!(!first.contains(SHA1.salt));
        assert!(first.ends_with(",i=15000"));
        assert!(matches!(
            s.finish(v.client_final.as_bytes()),
            Err(AuthError::AuthenticationFailed)
        ));
    }

    #[test]
    fn broken_stored_credential_is_reported() {
        let mut c = vector_credential(&SHA1);
        c.stored_key = "short".into();
        let err = ScramServer::start(Mechanism::ScramSha1, SHA1.client_first.as_bytes(), |_| {
            Some(c)
        })
        .unwrap_err();
        assert!(matches!(err, AuthError::InvalidCredential(_)));
    }

    #[test]
    fn client_final_must_match_the_conversation() {
        let v = &SHA1;
        let nonce = format!("{}{}", v.client_nonce, v.server_nonce_suffix);
        let proof = v.client_final.rsplit_once(",p=").unwrap().1;
        let cases: Vec<(String, Check)> = vec![
            // c= for "y,," while client-first said "n,,".
            (format!("c=eSws,r={nonce},p={proof}"), |e| {
                matches!(e, AuthError::Malformed(_))
            }),
            // Nonce without the server part, and with an extra character.
            (format!("c=biws,r={},p={proof}", v.client_nonce), |e| {
                matches!(e, AuthError::NonceMismatch)
            }),
            (format!("c=biws,r={nonce}X,p={proof}"), |e| {
                matches!(e, AuthError::NonceMismatch)
            }),
            // A proof of SHA-256 length for a SHA-1 conversation.
            (
                format!("c=biws,r={nonce},p={}", encode_b64(&[0u8; 32])),
                |e| matches!(e, AuthError::Malformed(_)),
            ),
            // An extension changes AuthMessage, so the proof no longer fits.
            (format!("c=biws,r={nonce},x=1,p={proof}"), |e| {
                matches!(e, AuthError::AuthenticationFailed)
            }),
        ];
        for (msg, expected) in cases {
            let (mut s, _) = vector_server(v);
            let err = s.finish(msg.as_bytes()).unwrap_err();
            assert!(expected(&err), "{msg}: {err:?}");
        }
    }

    #[test]
    fn y_header_is_accepted_and_must_be_repeated() {
        // A client that supports channel binding but believes we do not
        // sends "y,,"; the exchange is otherwise the same (RFC 5802 §6).
        let v = &SHA256;
        let first = v.client_first.replacen("n,,", "y,,", 1);
        let (mut s, _) = ScramServer::start_with_nonce(
            v.mechanism,
            first.as_bytes(),
            |_| Some(vector_credential(v)),
            v.server_nonce_suffix,
        )
        .unwrap();
        // The vector's proof was made with c=biws, so it cannot verify, but
        // c=eSws must get past the header check to the proof.
        let fin = v.client_final.replacen("c=biws", "c=eSws", 1);
        assert!(matches!(
            s.finish(fin.as_bytes()),
            Err(AuthError::AuthenticationFailed)
        ));
    }

    #[test]
    fn debug_shows_no_keys() {
        let (s, _) = vector_server(&SHA256);
        let dbg = format!("{s:?}");
        let stored = decode_b64(SHA256.stored_key, "k").unwrap();
        assert!(!dbg.contains(SHA256.stored_key) && !dbg.contains(SHA256.server_key));
        assert!(!dbg.contains(&format!("{stored:?}")));
        assert!(!dbg.contains(SHA256.server_nonce_suffix));
    }
}
