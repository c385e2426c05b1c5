//! The client side of SCRAM-SHA-256 and SCRAM-SHA-1 (RFC 5802, RFC 7677) as MongoDB drivers run
//! it: message formats, proofs, and the check of the server's signature.
//!
//! MongoDB specifics (the drivers' auth specification): SCRAM-SHA-1 derives its key from
//! `hex(md5("user:mongo:password"))` instead of the password; SCRAM-SHA-256 uses the password
//! itself, which should be SASLprep'ed. The kit's credentials are ASCII without special
//! characters, for which SASLprep is the identity, so it is not applied. User names are escaped
//! (`=` → `=3D`, `,` → `=2C`) as RFC 5802 requires.
//!
//! Independent of the gateway's own SCRAM code (`crates/auth`) on purpose: see the crate docs.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore as _;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Iteration counts above this are refused, so a hostile server cannot make us spin.
const MAX_ITERATIONS: u32 = 1_000_000;

/// The SCRAM variants MongoDB offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    ScramSha1,
    ScramSha256,
}

impl Mechanism {
    /// The name in `saslStart.mechanism`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    /// What the key is derived from: MongoDB's SCRAM-SHA-1 uses `hex(md5("user:mongo:pw"))`.
    fn key_source(self, user: &str, password: &str) -> String {
        match self {
            Mechanism::ScramSha1 => {
                let digest = Md5::digest(format!("{user}:mongo:{password}"));
                digest.iter().map(|b| format!("{b:02x}")).collect()
            }
            Mechanism::ScramSha256 => password.to_string(),
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::ScramSha1 => Sha1::digest(data).to_vec(),
            Mechanism::ScramSha256 => Sha256::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            let mut m = <M as Mac>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Mechanism::ScramSha1 => run::<Hmac<Sha1>>(key, data),
            Mechanism::ScramSha256 => run::<Hmac<Sha256>>(key, data),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Mechanism::ScramSha1 => {
                let mut out = [0u8; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            Mechanism::ScramSha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }
}

fn auth_error(what: impl Into<String>) -> Error {
    Error::Auth(what.into())
}

/// One conversation, from the client's first message to the check of the server's last.
pub struct Conversation {
    mechanism: Mechanism,
    key_source: String,
    nonce: String,
    first_bare: String,
    expected_server_signature: Option<Vec<u8>>,
}

impl Conversation {
    /// Start a conversation for `user` with a fresh random nonce.
    pub fn new(mechanism: Mechanism, user: &str, password: &str) -> Conversation {
        let mut raw = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut raw);
        let key_source = mechanism.key_source(user, password);
        Conversation::with_nonce(mechanism, user, key_source, &B64.encode(raw))
    }

    /// `key_source` is what PBKDF2 runs on (see [`Mechanism::key_source`]).
    fn with_nonce(
        mechanism: Mechanism,
        user: &str,
        key_source: String,
        nonce: &str,
    ) -> Conversation {
        let name = user.replace('=', "=3D").replace(',', "=2C");
        Conversation {
            mechanism,
            key_source,
            nonce: nonce.to_string(),
            first_bare: format!("n={name},r={nonce}"),
            expected_server_signature: None,
        }
    }

    /// The client-first message (GS2 header `n,,`: no channel binding, no authzid).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// Answer the server-first message with the client-final message (with the proof).
    pub fn client_final(&mut self, server_first: &str) -> Result<String> {
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in server_first.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => {
                    salt = Some(
                        B64.decode(v)
                            .map_err(|_| auth_error("salt is not base64"))?,
                    )
                }
                Some(("i", v)) => {
                    let n = v.parse::<u32>();
                    iterations = Some(n.map_err(|_| auth_error("bad iteration count"))?)
                }
                Some(("m", _)) => return Err(auth_error("server requires a SCRAM extension")),
                _ => {}
            }
        }
        let nonce = nonce.ok_or_else(|| auth_error("server-first without a nonce"))?;
        let salt = salt.ok_or_else(|| auth_error("server-first without a salt"))?;
        let iterations = iterations.ok_or_else(|| auth_error("server-first without iterations"))?;
        if !(nonce.starts_with(&self.nonce) && nonce.len() > self.nonce.len()) {
            return Err(auth_error("server nonce does not extend ours"));
        }
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(auth_error(format!(
                "iteration count {iterations} out of range"
            )));
        }
        let m = self.mechanism;
        let salted = m.salted_password(self.key_source.as_bytes(), &salt, iterations);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored_key = m.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = m.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = m.hmac(&salted, b"Server Key");
        self.expected_server_signature = Some(m.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Check the server-final message: the server proves it knows the password too.
    pub fn verify_server_final(&self, server_final: &str) -> Result<()> {
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(auth_error(format!("server refused authentication: {e}")));
        }
        let v = server_final
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .ok_or_else(|| auth_error("server-final without a signature"))?;
        let got = B64
            .decode(v)
            .map_err(|_| auth_error("server signature is not base64"))?;
        let want = self
            .expected_server_signature
            .as_ref()
            .ok_or_else(|| auth_error("server-final before client-final"))?;
        if &got != want {
            return Err(auth_error("server signature does not match"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 exchange printed in RFC 7677, section 3.
    #[test]
    fn rfc7677_example() {
        let mut c = Conversation::with_nonce(
            Mechanism::ScramSha256,
            "user",
            "pencil".into(),
            "rOprNGfwEbeRWgbNEkqO",
        );
        assert_eq!(c.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            c.client_final(server_first).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(c
            .verify_server_final("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .is_err());
    }

    /// The SCRAM-SHA-1 exchange printed in RFC 5802, section 5 (the plain password: the RFC
    /// knows nothing of MongoDB's md5 step, which is checked separately below).
    #[test]
    fn rfc5802_example() {
        let mut c = Conversation::with_nonce(
            Mechanism::ScramSha1,
            "user",
            "pencil".into(),
            "fyko+d2lbbFgONRv9qkxdawL",
        );
        let server_first = "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096";
        assert_eq!(
            c.client_final(server_first).unwrap(),
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        c.verify_server_final("v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            .unwrap();
    }

    #[test]
    fn mongodb_sha1_key_is_the_md5_of_user_mongo_password() {
        // md5("user:mongo:pencil"), as the drivers' auth spec computes it.
        assert_eq!(
            Mechanism::ScramSha1.key_source("user", "pencil"),
            "1c33006ec1ffd90f9cadcbcc0e118200"
        );
        assert_eq!(
            Mechanism::ScramSha256.key_source("user", "pencil"),
            "pencil"
        );
    }

    #[test]
    fn escapes_names_and_refuses_foreign_nonces_and_absurd_iterations() {
        let c = Conversation::with_nonce(Mechanism::ScramSha256, "a=b,c", "p".into(), "n");
        assert_eq!(c.client_first(), "n,,n=a=3Db=2Cc,r=n");
        let mut c = Conversation::with_nonce(Mechanism::ScramSha256, "user", "p".into(), "abc");
        assert!(c.client_final("r=xyz123,s=AAAA,i=4096").is_err());
        assert!(c.client_final("r=abc123,s=AAAA,i=4000000000").is_err());
        assert!(c.client_final("r=abc123,s=AAAA,i=1").is_ok());
    }
}
