//! API keys of the HTTP Data API: each key acts as one gateway user (its role and databases),
//! and only its SHA-256 is configured, so a leaked configuration does not give a key away.
//! Keys are part of the settings: a reload that drops one revokes it for the next request.
//!
//! A key is 256 random bits, so one SHA-256 (not a slow password hash) is enough: guessing is
//! hopeless, and a fast check keeps a flood of bad keys cheap. The digest is looked up in a
//! map; the lookup's timing can reveal nothing useful about a digest of an unknown secret.

use std::collections::HashMap;
use std::sync::Arc;

use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::users::{User, UserStore};
use crate::config_error::ConfigError;

/// One `[[api_keys]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs and revocation (never the key).
    pub name: String,
    /// The gateway user the key acts as.
    pub user: String,
    /// That user's authentication database.
    #[serde(default = "default_db")]
    pub db: String,
    /// SHA-256 of the key, 64 hex digits.
    pub sha256: String,
}

fn default_db() -> String {
    "admin".into()
}

/// A key that matched: its name and the user it acts as.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// The key's name.
    pub name: Arc<str>,
    /// The user it acts as.
    pub user: Arc<User>,
}

/// The configured keys.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], ApiKey>,
}

impl PartialEq for ApiKeys {
    fn eq(&self, other: &Self) -> bool {
        self.by_digest.len() == other.by_digest.len()
            && self.by_digest.iter().all(|(d, k)| {
                other.by_digest.get(d).is_some_and(|o| {
                    o.name == k.name && o.user.qualified_name() == k.user.qualified_name()
                })
            })
    }
}

impl ApiKeys {
    /// Builds the keys: each names an existing user, and names and digests are unique.
    pub fn from_config(
        entries: &[ApiKeyConfig],
        users: &UserStore,
    ) -> Result<ApiKeys, ConfigError> {
        let mut by_digest = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for e in entries {
            let bad = |why: &str| ConfigError::Invalid(format!("api key {:?}: {why}", e.name));
            if e.name.is_empty() || !names.insert(e.name.as_str()) {
                return Err(bad("needs a name of its own (empty or repeated)"));
            }
            let digest: [u8; 32] = hex::decode(e.sha256.trim())
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| {
                    bad("sha256 must be 64 hex digits (`mongomux api-key add` prints one)")
                })?;
            let user = users.get(&e.db, &e.user).ok_or_else(|| {
                bad(&format!(
                    "names user {:?} in {:?}, which is not configured",
                    e.user, e.db
                ))
            })?;
            let key = ApiKey {
                name: e.name.as_str().into(),
                user,
            };
            if by_digest.insert(digest, key).is_some() {
                return Err(bad("has the same key as another entry"));
            }
        }
        Ok(ApiKeys { by_digest })
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The key `secret` is, if it is one.
    pub fn find(&self, secret: &str) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        self.by_digest.get(&digest)
    }
}

/// A new secret (256 random bits, hex) and its SHA-256 (hex): an API key, or the bearer token
/// of the JSON admin endpoints (`mongomux admin-token`).
pub fn generate() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = hex::encode(bytes);
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    (key, digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::users::UserConfig;

    fn users() -> UserStore {
        let entry: UserConfig = toml::from_str(
            r#"
name = "app"
role = "readWrite"
[[scram]]
mechanism = "SCRAM-SHA-256"
salt = "c2FsdHNhbHRzYWx0"
iterations = 15000
stored_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
server_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
"#,
        )
        .expect("user entry");
        UserStore::from_config(&[entry]).expect("users")
    }

    fn entry(name: &str, user: &str, sha256: &str) -> ApiKeyConfig {
        ApiKeyConfig {
            name: name.into(),
            user: user.into(),
            db: "admin".into(),
            sha256: sha256.into(),
        }
    }

    #[test]
    fn keys_match_by_digest_and_entries_are_checked() {
        let (key, digest) = generate();
        assert_eq!(key.len(), 64);
        assert_ne!(key, generate().0, "each secret is fresh");
        let users = users();
        let keys = ApiKeys::from_config(&[entry("fn", "app", &digest)], &users).expect("keys");
        let found = keys.find(&key).expect("the key");
        assert_eq!((&*found.name, found.user.name.as_str()), ("fn", "app"));
        assert!(keys.find(&digest).is_none(), "the digest is not the key");
        assert!(keys.find("").is_none());
        for bad in [
            vec![entry("fn", "nobody", &digest)],
            vec![entry("fn", "app", "abc")],
            vec![entry("", "app", &digest)],
            vec![entry("a", "app", &digest), entry("b", "app", &digest)],
            vec![entry("a", "app", &digest), entry("a", "app", &generate().1)],
        ] {
            assert!(ApiKeys::from_config(&bad, &users).is_err(), "{bad:?}");
        }
    }
}
