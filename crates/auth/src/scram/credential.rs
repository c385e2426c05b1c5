//! [`ScramCredential`]: what the server side stores for a user instead of
//! the password (auth.md "Authentication"; RFC 5802 §3: the server needs only
//! salt, iteration count, StoredKey and ServerKey).
//!
//! This module owns deriving a credential from a password, checking a stored
//! one, and decoding it for [`super::ScramServer`]. It must never keep the
//! password, and its `Debug` must never print the keys: StoredKey lets anyone
//! impersonate the server to a client, and with an observed exchange it also
//! yields ClientKey.

use std::fmt;

use rand::RngCore;

use super::crypto::{prepare_password, Keys};
use super::message::{decode_b64, encode_b64};
use super::{Mechanism, MIN_ITERATIONS};
use crate::{AuthError, Secret};

/// A stored server-side SCRAM credential. Never contains the password.
///
/// The byte fields are base64 (standard alphabet, padded), as MongoDB stores
/// them in `system.users` and as they travel in SCRAM messages.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct ScramCredential {
    /// The mechanism this credential is for; serialised as `"SCRAM-SHA-1"` or
    /// `"SCRAM-SHA-256"`.
    pub mechanism: Mechanism,
    /// Base64 salt.
    pub salt: String,
    /// PBKDF2 iteration count (at least [`MIN_ITERATIONS`], or clients
    /// refuse it).
    pub iterations: u32,
    /// Base64 StoredKey = H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: String,
    /// Base64 ServerKey = HMAC(SaltedPassword, "Server Key").
    pub server_key: String,
}

/// A credential's fields decoded to bytes, ready for a conversation.
pub(crate) struct KeyMaterial {
    pub(crate) salt_b64: String,
    pub(crate) iterations: u32,
    pub(crate) stored_key: Vec<u8>,
    pub(crate) server_key: Vec<u8>,
}

impl ScramCredential {
    /// Derives a credential from a password with a fresh random salt.
    ///
    /// For SCRAM-SHA-1 the password fed to PBKDF2 is
    /// `hex(md5(username ":mongo:" password))`; for SCRAM-SHA-256 it is the
    /// SASLprep'd password and `username` is not used (auth.md "SCRAM-SHA-1",
    /// "SCRAM-SHA-256").
    ///
    /// If SASLprep rejects the password (it contains prohibited characters
    /// such as controls), the raw password is used instead so that this call
    /// cannot fail; conforming clients will refuse such a password, so the
    /// credential is then unusable by them. Use [`ScramCredential::try_derive`]
    /// to be told instead.
    pub fn derive(
        mechanism: Mechanism,
        username: &str,
        password: &Secret,
        iterations: u32,
    ) -> Self {
        let prepared =
            prepare_password(mechanism, username, password).unwrap_or_else(|_| password.clone());
        Self::derive_prepared(mechanism, &prepared, &random_salt(mechanism), iterations)
    }

    /// Like [`ScramCredential::derive`], but fails with
    /// [`AuthError::InvalidPassword`] when SASLprep rejects the password and
    /// with [`AuthError::InvalidCredential`] when `iterations` is below
    /// [`MIN_ITERATIONS`].
    pub fn try_derive(
        mechanism: Mechanism,
        username: &str,
        password: &Secret,
        iterations: u32,
    ) -> Result<Self, AuthError> {
        check_iterations(iterations)?;
        let prepared = prepare_password(mechanism, username, password)?;
        Ok(Self::derive_prepared(
            mechanism,
            &prepared,
            &random_salt(mechanism),
            iterations,
        ))
    }

    /// The deterministic core of `derive`, with the salt given (tests use it
    /// with fixed salts).
    pub(crate) fn derive_prepared(
        mechanism: Mechanism,
        prepared_password: &Secret,
        salt: &[u8],
        iterations: u32,
    ) -> Self {
        let keys = Keys::derive(mechanism, prepared_password, salt, iterations);
        ScramCredential {
            mechanism,
            salt: encode_b64(salt),
            iterations,
            stored_key: encode_b64(&keys.stored_key),
            server_key: encode_b64(&keys.server_key),
        }
    }

    /// Checks that a stored (for example, deserialised) credential is usable:
    /// base64 fields, keys of the mechanism's hash length, a non-empty salt,
    /// and at least [`MIN_ITERATIONS`]. Call it when loading a credential
    /// store, so a bad entry is reported at load time rather than at a
    /// client's login.
    pub fn validate(&self) -> Result<(), AuthError> {
        check_iterations(self.iterations)?;
        self.decode().map(|_| ())
    }

    /// Decodes the base64 fields for a conversation.
    pub(crate) fn decode(&self) -> Result<KeyMaterial, AuthError> {
        let salt = decode_b64(&self.salt, "salt is not base64")
            .map_err(|_| AuthError::InvalidCredential("salt is not base64"))?;
        if salt.is_empty() {
            return Err(AuthError::InvalidCredential("salt is empty"));
        }
        if self.iterations == 0 {
            return Err(AuthError::InvalidCredential("iteration count is zero"));
        }
        let key = |b64: &str, what: &'static str| -> Result<Vec<u8>, AuthError> {
            match decode_b64(b64, what) {
                Ok(k) if k.len() == self.mechanism.hash_len() => Ok(k),
                _ => Err(AuthError::InvalidCredential(what)),
            }
        };
        Ok(KeyMaterial {
            // Re-encoded rather than copied so the server-first message
            // always carries canonical base64.
            salt_b64: encode_b64(&salt),
            iterations: self.iterations,
            stored_key: key(&self.stored_key, "stored key is not a base64 hash")?,
            server_key: key(&self.server_key, "server key is not a base64 hash")?,
        })
    }
}

fn check_iterations(iterations: u32) -> Result<(), AuthError> {
    if iterations < MIN_ITERATIONS {
        Err(AuthError::InvalidCredential(
            "iteration count is below 4096, which clients refuse",
        ))
    } else {
        Ok(())
    }
}

fn random_salt(mechanism: Mechanism) -> Vec<u8> {
    let mut salt = vec![0u8; mechanism.salt_len()];
    rand::thread_rng().fill_bytes(&mut salt);
    salt
}

/// Prints the keys as `***`: they are password-equivalent for SCRAM.
impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("mechanism", &self.mechanism)
            .field("salt", &self.salt)
            .field("iterations", &self.iterations)
            .field("stored_key", &format_args!("***"))
            .field("server_key", &format_args!("***"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scram::test_vectors::{SHA1, SHA256};

    #[test]
    fn derive_matches_independent_vectors() {
        for v in [&SHA1, &SHA256] {
            let prepared = prepare_password(v.mechanism, "user", &Secret::new("pencil")).unwrap();
            let salt = decode_b64(v.salt, "salt").unwrap();
            let c = ScramCredential::derive_prepared(v.mechanism, &prepared, &salt, v.iterations);
            assert_eq!(c.salt, v.salt);
            assert_eq!(c.stored_key, v.stored_key, "{}", v.mechanism);
            assert_eq!(c.server_key, v.server_key, "{}", v.mechanism);
            c.validate().unwrap();
        }
    }

    #[test]
    fn sha1_digest_uses_the_raw_username() {
        // Keys for user "a,b=c", password "pencil", the SHA-1 vector's salt
        // and 4096 iterations, computed independently with Python's hashlib.
        let prepared =
            prepare_password(Mechanism::ScramSha1, "a,b=c", &Secret::new("pencil")).unwrap();
        let salt = decode_b64(SHA1.salt, "salt").unwrap();
        let c = ScramCredential::derive_prepared(Mechanism::ScramSha1, &prepared, &salt, 4096);
        assert_eq!(c.stored_key, "qC/6BTyViRnm4+KaO7l1zoxHPPE=");
        assert_eq!(c.server_key, "3dTP3OnCqA7IcRRXRqlPajtRLtU=");
    }

    #[test]
    fn derive_uses_fresh_salt_of_mongodb_length() {
        for (m, salt_len) in [(Mechanism::ScramSha1, 16), (Mechanism::ScramSha256, 28)] {
            let a = ScramCredential::derive(m, "u", &Secret::new("p"), 4096);
            let b = ScramCredential::derive(m, "u", &Secret::new("p"), 4096);
            assert_ne!(a.salt, b.salt);
            assert_ne!(a.stored_key, b.stored_key);
            assert_eq!(decode_b64(&a.salt, "salt").unwrap().len(), salt_len);
            a.validate().unwrap();
        }
    }

    #[test]
    fn try_derive_reports_what_derive_tolerates() {
        let bad = Secret::new("pen\u{0007}cil");
        assert!(matches!(
            ScramCredential::try_derive(Mechanism::ScramSha256, "u", &bad, 4096),
            Err(AuthError::InvalidPassword)
        ));
        // SCRAM-SHA-1 does not SASLprep, so the same password is fine there.
        ScramCredential::try_derive(Mechanism::ScramSha1, "u", &bad, 4096).unwrap();
        assert!(matches!(
            ScramCredential::try_derive(Mechanism::ScramSha1, "u", &Secret::new("p"), 4095),
            Err(AuthError::InvalidCredential(_))
        ));
        let c = ScramCredential::derive(Mechanism::ScramSha256, "u", &bad, 4096);
        c.validate().unwrap();
    }

    #[test]
    fn validate_rejects_broken_credentials() {
        let good = ScramCredential::derive(Mechanism::ScramSha256, "u", &Secret::new("p"), 4096);
        let mut cases = Vec::new();
        let mut c = good.clone();
        c.salt = "not base64!".into();
        cases.push(c);
        let mut c = good.clone();
        c.salt = String::new();
        cases.push(c);
        let mut c = good.clone();
        c.iterations = 1000;
        cases.push(c);
        let mut c = good.clone();
        c.stored_key = good.salt.clone(); // 28 bytes, not 32
        cases.push(c);
        let mut c = good.clone();
        c.server_key = "%%%".into();
        cases.push(c);
        let mut c = good.clone();
        c.mechanism = Mechanism::ScramSha1; // 32-byte keys for a 20-byte hash
        cases.push(c);
        for c in cases {
            assert!(
                matches!(c.validate(), Err(AuthError::InvalidCredential(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn debug_hides_keys() {
        let c = ScramCredential::derive(Mechanism::ScramSha256, "u", &Secret::new("p"), 4096);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(&c.stored_key), "{dbg}");
        assert!(!dbg.contains(&c.server_key), "{dbg}");
        assert!(dbg.contains("stored_key: ***"), "{dbg}");
        assert!(dbg.contains("server_key: ***"), "{dbg}");
        assert!(
            dbg.contains("SCRAM") || dbg.contains("ScramSha256"),
            "{dbg}"
        );
        let alt = format!("{c:#?}");
        assert!(!alt.contains(&c.stored_key) && !alt.contains(&c.server_key));
    }

    #[test]
    fn serde_uses_mechanism_names() {
        let c = ScramCredential::derive(Mechanism::ScramSha256, "u", &Secret::new("p"), 4096);
        let doc = bson::to_document(&c).unwrap();
        assert_eq!(doc.get_str("mechanism").unwrap(), "SCRAM-SHA-256");
        let back: ScramCredential = bson::from_document(doc).unwrap();
        assert_eq!(back.mechanism, Mechanism::ScramSha256);
        assert_eq!(back.stored_key, c.stored_key);
        let doc = bson::doc! { "mechanism": "SCRAM-SHA-1", "salt": "", "iterations": 1,
        "stored_key": "", "server_key": "" };
        let c: ScramCredential = bson::from_document(doc).unwrap();
        assert_eq!(c.mechanism, Mechanism::ScramSha1);
        let doc = bson::doc! { "mechanism": "scram-sha-1", "salt": "", "iterations": 1,
        "stored_key": "", "server_key": "" };
        assert!(bson::from_document::<ScramCredential>(doc).is_err());
    }
}
