//! Bearer tokens of the JSON admin endpoints: 256 random bits in hex; the configuration holds
//! only their SHA-256, so a leaked configuration file does not give the token away.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new token and its SHA-256, both hex.
pub fn generate() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    (token, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_hash_as_configured() {
        let (a, hash) = generate();
        let (b, _) = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash, hex::encode(Sha256::digest(a.as_bytes())));
    }
}
