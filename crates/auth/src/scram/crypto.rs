//! The SCRAM functions of RFC 5802 §2.2 and §3 (H, HMAC, Hi, the key
//! schedule) and MongoDB's password preparation (auth.md "SCRAM-SHA-1",
//! "SCRAM-SHA-256").
//!
//! This module owns every place a password or key is turned into bytes. It
//! never logs and never returns an error that carries input: the one fallible
//! step, SASLprep, maps its error (which names the offending character of the
//! password) to the content-free [`AuthError::InvalidPassword`].

use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Mechanism;
use crate::{AuthError, Secret};

/// HMAC(key, data) with the mechanism's hash (RFC 2104).
pub(crate) fn hmac(mechanism: Mechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    match mechanism {
        Mechanism::ScramSha1 => hmac_with::<Hmac<Sha1>>(key, data),
        Mechanism::ScramSha256 => hmac_with::<Hmac<Sha256>>(key, data),
    }
}

fn hmac_with<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC is defined for keys of any length (RFC 2104 §2: longer keys are
    // hashed first), so `new_from_slice` cannot fail for `Hmac<_>`.
    let mut mac =
        <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// H(data): the mechanism's hash.
pub(crate) fn hash(mechanism: Mechanism, data: &[u8]) -> Vec<u8> {
    match mechanism {
        Mechanism::ScramSha1 => Sha1::digest(data).to_vec(),
        Mechanism::ScramSha256 => Sha256::digest(data).to_vec(),
    }
}

/// Hi(password, salt, i) of RFC 5802 §2.2, which is PBKDF2 with HMAC as the
/// PRF and an output of one hash length.
pub(crate) fn hi(mechanism: Mechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; mechanism.hash_len()];
    match mechanism {
        Mechanism::ScramSha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
        Mechanism::ScramSha256 => {
            pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out)
        }
    }
    out
}

/// Byte-wise XOR of two equal-length strings (RFC 5802 §2.2 "XOR").
pub(crate) fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Equality that takes the same time wherever the inputs differ, so a
/// verifier does not tell an attacker how many leading bytes were right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The keys RFC 5802 §3 derives from SaltedPassword.
pub(crate) struct Keys {
    /// ClientKey = HMAC(SaltedPassword, "Client Key"); only the client keeps it.
    pub(crate) client_key: Vec<u8>,
    /// StoredKey = H(ClientKey); what the server stores to check proofs.
    pub(crate) stored_key: Vec<u8>,
    /// ServerKey = HMAC(SaltedPassword, "Server Key"); signs server-final.
    pub(crate) server_key: Vec<u8>,
}

impl Keys {
    /// Runs the key schedule from a prepared password (see
    /// [`prepare_password`]).
    pub(crate) fn derive(
        mechanism: Mechanism,
        prepared_password: &Secret,
        salt: &[u8],
        iterations: u32,
    ) -> Keys {
        let salted = hi(
            mechanism,
            prepared_password.expose().as_bytes(),
            salt,
            iterations,
        );
        let client_key = hmac(mechanism, &salted, b"Client Key");
        let stored_key = hash(mechanism, &client_key);
        let server_key = hmac(mechanism, &salted, b"Server Key");
        Keys {
            client_key,
            stored_key,
            server_key,
        }
    }
}

/// Turns the user's password into the string SCRAM's Hi() is fed with.
///
/// - SCRAM-SHA-1: `hex(md5(username ":mongo:" password))` over the raw,
///   un-escaped and un-SASLprep'd user name and password (auth.md
///   "SCRAM-SHA-1"). This is MongoDB's legacy digest; the MD5 is not a
///   security choice of ours.
/// - SCRAM-SHA-256: SASLprep(password) (RFC 7677 §4 via RFC 5802 §2.2
///   "Normalize"; auth.md "SCRAM-SHA-256"). The user name plays no part.
pub(crate) fn prepare_password(
    mechanism: Mechanism,
    username: &str,
    password: &Secret,
) -> Result<Secret, AuthError> {
    match mechanism {
        Mechanism::ScramSha1 => {
            let mut md5 = Md5::new();
            md5.update(username.as_bytes());
            md5.update(b":mongo:");
            md5.update(password.expose().as_bytes());
            Ok(Secret::new(hex_lower(&md5.finalize())))
        }
        Mechanism::ScramSha256 => stringprep::saslprep(password.expose())
            .map(|p| Secret::new(p.into_owned()))
            // The stringprep error names the prohibited character, which is
            // part of the password: drop it.
            .map_err(|_| AuthError::InvalidPassword),
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_password_is_mongodb_digest() {
        // md5("user:mongo:pencil"), computed independently with Python hashlib.
        let p = prepare_password(Mechanism::ScramSha1, "user", &Secret::new("pencil")).unwrap();
        assert_eq!(p.expose(), "1c33006ec1ffd90f9cadcbcc0e118200");
    }

    #[test]
    fn sha256_password_is_saslprepped() {
        let prep = |s: &str| {
            prepare_password(Mechanism::ScramSha256, "ignored", &Secret::new(s))
                .map(|p| p.expose().to_owned())
        };
        // Soft hyphen is "mapped to nothing" (RFC 4013 §2.1).
        assert_eq!(prep("I\u{00AD}X").unwrap(), "IX");
        // ROMAN NUMERAL FOUR normalises to "IV" under NFKC (RFC 4013 §2.2).
        assert_eq!(prep("\u{2163}").unwrap(), "IV");
        // Non-ASCII space maps to a plain space (RFC 4013 §2.1).
        assert_eq!(prep("a\u{00A0}b").unwrap(), "a b");
        assert_eq!(prep("pencil").unwrap(), "pencil");
        // Control characters are prohibited (RFC 4013 §2.3), and the error
        // must not echo the input.
        let err = prep("pen\u{0007}cil").unwrap_err();
        assert!(matches!(err, AuthError::InvalidPassword));
        assert!(!err.to_string().contains("pen"));
    }

    #[test]
    fn sha1_digest_does_not_saslprep() {
        // auth.md: neither user name nor password is SASLprep'd before the
        // MD5, so these two must differ.
        let a = prepare_password(Mechanism::ScramSha1, "u", &Secret::new("I\u{00AD}X")).unwrap();
        let b = prepare_password(Mechanism::ScramSha1, "u", &Secret::new("IX")).unwrap();
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn constant_time_eq_behaves_like_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
