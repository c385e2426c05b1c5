//! The secret that keys session namespacing ([`super::edge_auth::namespaced_session_id`]).
//!
//! Namespacing maps a client's session UUID into its identity's namespace; with a keyed MAC an
//! attacker who knows a victim's UUID (or guesses it) still cannot compute the upstream session
//! id, because the key never leaves the gateways. Several gateways of one deployment share the
//! key (setting `session_key`) so that a retryable write or a session retried through another
//! gateway lands on the same upstream session; without it each process draws its own key.

use std::fmt;

use base64::Engine;
use mongomux_auth::Secret;
use rand::RngCore;

use crate::config_error::ConfigError;

/// Shortest accepted key, in bytes.
pub const MIN_KEY_BYTES: usize = 16;
/// Length of a generated key, in bytes.
const GENERATED_KEY_BYTES: usize = 32;

/// A session-namespacing key. Never printed: `Debug` shows only whether it was configured.
#[derive(Clone)]
pub struct SessionKey {
    bytes: Vec<u8>,
    configured: bool,
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKey")
            .field("configured", &self.configured)
            .finish_non_exhaustive()
    }
}

impl SessionKey {
    /// Decodes a configured key: hex, or base64 (standard alphabet, padding optional), at
    /// least [`MIN_KEY_BYTES`] bytes. The error never repeats the value.
    pub fn parse(secret: &Secret) -> Result<SessionKey, ConfigError> {
        let text = secret.expose().trim();
        let bytes = decode_hex(text)
            .or_else(|| {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()
                    .or_else(|| {
                        base64::engine::general_purpose::STANDARD_NO_PAD
                            .decode(text)
                            .ok()
                    })
            })
            .ok_or_else(|| ConfigError::Invalid("session_key must be hex or base64".into()))?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(ConfigError::Invalid(format!(
                "session_key must be at least {MIN_KEY_BYTES} bytes (32 random bytes recommended)"
            )));
        }
        Ok(SessionKey {
            bytes,
            configured: true,
        })
    }

    /// A random key for this process only.
    pub fn generate() -> SessionKey {
        let mut bytes = vec![0u8; GENERATED_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        SessionKey {
            bytes,
            configured: false,
        }
    }

    /// The key in force at start: the configured one, or a generated one (said once in the
    /// log, since sessions then do not carry over to another gateway).
    pub fn effective(configured: Option<&SessionKey>) -> SessionKey {
        match configured {
            Some(key) => key.clone(),
            None => {
                tracing::info!(
                    "no session_key configured: a random key was generated; client sessions are not portable across gateways or restarts"
                );
                SessionKey::generate()
            }
        }
    }

    /// Whether the key was configured (shared by the deployment's gateways) rather than drawn
    /// for this process.
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    /// The key material, for the MAC only.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether two keys are the same, in time independent of where they differ.
    pub fn same_as(&self, other: &SessionKey) -> bool {
        self.bytes.len() == other.bytes.len()
            && self
                .bytes
                .iter()
                .zip(&other.bytes)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_decode_to_the_same_key() {
        let hex = SessionKey::parse(&Secret::new("00112233445566778899aabbccddeeff")).unwrap();
        let b64 = SessionKey::parse(&Secret::new("ABEiM0RVZneImaq7zN3u/w==")).unwrap();
        let b64_nopad = SessionKey::parse(&Secret::new("ABEiM0RVZneImaq7zN3u/w")).unwrap();
        assert!(hex.same_as(&b64) && b64.same_as(&b64_nopad));
        assert!(!hex.same_as(&SessionKey::generate()));
    }

    #[test]
    fn short_or_malformed_keys_are_refused_without_echoing_them() {
        for bad in ["00112233", "not a key at all!", ""] {
            let e = SessionKey::parse(&Secret::new(bad))
                .unwrap_err()
                .to_string();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        let key = SessionKey::parse(&Secret::new("00112233445566778899aabbccddeeff")).unwrap();
        assert!(!format!("{key:?}").contains("0011"));
    }
}
