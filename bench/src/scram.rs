//! The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) for the raw client, so the bench can log
//! in to FerretDB directly.
//!
//! Why not the official Rust driver: FerretDB v1.24 with `--test-enable-new-auth` answers the
//! client-final message with `done: false` even when the client asked for `skipEmptyExchange`,
//! and the Rust driver 3.9 gives up on that ("expected SCRAM authentication to have completed"),
//! while pymongo and the Go driver send the extra empty `saslContinue`. This client sends it. It
//! offers no PLAIN either: FerretDB's new authentication refuses that mechanism.
//!
//! What it owns: the message formats and proofs, and checking the server's signature. It is
//! independent of the gateway's own SCRAM code (`crates/auth`) on purpose. It does not SASLprep
//! names or passwords: the bench's own credentials are plain ASCII without `,` or `=`.

use anyhow::{bail, ensure, Context as _, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Iteration counts above this are refused, so a hostile server cannot make us spin.
const MAX_ITERATIONS: u32 = 1_000_000;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// One conversation, from the client's first message to the check of the server's last.
pub struct Conversation {
    nonce: String,
    first_bare: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl Conversation {
    /// Start a conversation for `user` with a fresh random nonce.
    pub fn new(user: &str) -> Conversation {
        let mut raw = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut raw);
        Conversation::with_nonce(user, &B64.encode(raw))
    }

    fn with_nonce(user: &str, nonce: &str) -> Conversation {
        Conversation {
            nonce: nonce.to_string(),
            first_bare: format!("n={user},r={nonce}"),
            expected_server_signature: None,
        }
    }

    /// The client-first message (GS2 header `n,,`: no channel binding, no authzid).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// Answer the server-first message with the client-final message (with the proof).
    pub fn client_final(&mut self, password: &str, server_first: &str) -> Result<String> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(B64.decode(v).context("salt is not base64")?),
                Some(("i", v)) => {
                    iterations = Some(v.parse::<u32>().context("bad iteration count")?)
                }
                Some(("m", _)) => bail!("server requires a SCRAM extension"),
                _ => {}
            }
        }
        let nonce = nonce.context("server-first without a nonce")?;
        let salt = salt.context("server-first without a salt")?;
        let iterations = iterations.context("server-first without an iteration count")?;
        ensure!(
            nonce.starts_with(&self.nonce) && nonce.len() > self.nonce.len(),
            "server nonce does not extend ours"
        );
        ensure!(
            (1..=MAX_ITERATIONS).contains(&iterations),
            "iteration count {iterations} out of range"
        );
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        self.expected_server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Check the server-final message: the server proves it knows the password too.
    pub fn verify_server_final(&self, server_final: &str) -> Result<()> {
        if let Some(e) = server_final.strip_prefix("e=") {
            bail!("server refused authentication: {e}");
        }
        let v = server_final
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .context("server-final without a signature")?;
        let got = B64.decode(v).context("server signature is not base64")?;
        let want = self
            .expected_server_signature
            .context("server-final before client-final")?;
        ensure!(got == want, "server signature does not match");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 exchange printed in RFC 7677, section 3.
    #[test]
    fn rfc7677_example() {
        let mut c = Conversation::with_nonce("user", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(c.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            c.client_final("pencil", server_first).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(c
            .verify_server_final("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .is_err());
    }

    #[test]
    fn refuses_a_nonce_that_is_not_ours_and_absurd_iterations() {
        let mut c = Conversation::with_nonce("user", "abc");
        assert!(c.client_final("p", "r=xyz123,s=AAAA,i=4096").is_err());
        assert!(c.client_final("p", "r=abc123,s=AAAA,i=4000000000").is_err());
        assert!(c.client_final("p", "r=abc123,s=AAAA,i=1").is_ok());
    }
}
