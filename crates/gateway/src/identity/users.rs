//! Gateway users: who may connect, with which stored SCRAM keys, to which databases, and
//! whether read-only. Loaded from the configuration's `[[users]]` entries and swapped whole on
//! reload.
//!
//! Only stored keys (salt, iterations, StoredKey, ServerKey) are held, never passwords. An empty
//! store means client authentication is off (the local-development default); any user entry
//! turns it on for everyone.

use std::collections::HashMap;
use std::sync::Arc;

use mongomux_auth::{Mechanism, ScramCredential};
use serde::Deserialize;

use crate::config_error::ConfigError;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Role {
    /// Reads only.
    #[serde(rename = "read")]
    Read,
    /// Reads and writes.
    #[default]
    #[serde(rename = "readWrite")]
    ReadWrite,
    /// An operator who may read the gateway's own state (pools, clients, statistics) with the
    /// admin commands, and has no access to data, like PgBouncer's `stats_users`.
    #[serde(rename = "gatewayMonitor")]
    GatewayMonitor,
    /// An operator who may also steer the gateway (pause, resume, reload, close clients), and
    /// has no access to data, like PgBouncer's `admin_users`.
    #[serde(rename = "gatewayAdmin")]
    GatewayAdmin,
}

impl Role {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::ReadWrite => "readWrite",
            Role::GatewayMonitor => "gatewayMonitor",
            Role::GatewayAdmin => "gatewayAdmin",
        }
    }

    /// Whether the role is one of the gateway's operator roles (no data access).
    pub fn is_operator(self) -> bool {
        matches!(self, Role::GatewayMonitor | Role::GatewayAdmin)
    }
}

/// One `[[users]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name.
    pub name: String,
    /// Database the user authenticates against (`authSource`).
    #[serde(default = "default_auth_db")]
    pub db: String,
    /// Read-only or read-write.
    #[serde(default)]
    pub role: Role,
    /// Databases the user may use; empty means all.
    #[serde(default)]
    pub databases: Vec<String>,
    /// Stored SCRAM keys, one per mechanism.
    #[serde(default)]
    pub scram: Vec<ScramCredential>,
    /// An IAM principal authenticating with MONGODB-AWS: `name` is then its ARN
    /// (`arn:aws:iam::ACCOUNT:role/NAME` or `...:user/NAME`) and `db` must be `$external`.
    #[serde(default)]
    pub aws: bool,
}

fn default_auth_db() -> String {
    "admin".to_string()
}

/// An authenticated identity.
#[derive(Debug)]
pub struct User {
    /// User name.
    pub name: String,
    /// Authentication database.
    pub db: String,
    /// Read-only or read-write.
    pub role: Role,
    /// Databases allowed; empty means all.
    pub databases: Vec<String>,
    scram: Vec<ScramCredential>,
}

impl User {
    /// Whether the user may use database `db`.
    pub fn may_use(&self, db: &str) -> bool {
        self.databases.is_empty() || self.databases.iter().any(|d| d == db)
    }

    /// The stored key for `mechanism`, if the user has one.
    pub fn credential(&self, mechanism: Mechanism) -> Option<&ScramCredential> {
        self.scram.iter().find(|c| c.mechanism == mechanism)
    }

    /// `db.name`, the form used in logs and `saslSupportedMechs`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.db, self.name)
    }
}

/// All users, keyed by (auth database, name).
#[derive(Debug, Default)]
pub struct UserStore {
    users: HashMap<(String, String), Arc<User>>,
}

impl UserStore {
    /// Builds and validates the store.
    pub fn from_config(entries: &[UserConfig]) -> Result<UserStore, ConfigError> {
        let mut users = HashMap::new();
        for e in entries {
            if e.name.is_empty() {
                return Err(ConfigError::Invalid(
                    "a user entry has an empty name".into(),
                ));
            }
            if e.aws {
                if e.db != "$external" || !e.name.starts_with("arn:") || !e.scram.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "IAM user {:?} needs db = \"$external\", an ARN as its name, and no SCRAM keys",
                        e.name
                    )));
                }
                if e.name.contains(":sts::") {
                    return Err(ConfigError::Invalid(format!(
                        "IAM user {:?}: register the role ARN (arn:aws:iam::ACCOUNT:role/NAME), not an assumed-role session ARN",
                        e.name
                    )));
                }
            } else if e.scram.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "user {:?} has no credentials; generate them with `mongomux user add`",
                    e.name
                )));
            }
            for c in &e.scram {
                c.validate().map_err(|_| {
                    ConfigError::Invalid(format!("user {:?} has an invalid stored key", e.name))
                })?;
            }
            let user = User {
                name: e.name.clone(),
                db: e.db.clone(),
                role: e.role,
                databases: e.databases.clone(),
                scram: e.scram.clone(),
            };
            if users
                .insert((e.db.clone(), e.name.clone()), Arc::new(user))
                .is_some()
            {
                return Err(ConfigError::Invalid(format!(
                    "user {:?} in database {:?} is defined twice",
                    e.name, e.db
                )));
            }
        }
        Ok(UserStore { users })
    }

    /// How many users are defined.
    pub fn count(&self) -> usize {
        self.users.len()
    }

    /// Whether client authentication is on.
    pub fn auth_required(&self) -> bool {
        !self.users.is_empty()
    }

    /// Looks a user up.
    pub fn get(&self, db: &str, name: &str) -> Option<Arc<User>> {
        self.users.get(&(db.to_string(), name.to_string())).cloned()
    }

    /// Whether `user` (an identity from before a reload) still exists unchanged in role and
    /// scope, so its connections may continue.
    pub fn still_valid(&self, user: &User) -> bool {
        self.get(&user.db, &user.name)
            .is_some_and(|u| u.role == user.role && u.databases == user.databases)
    }

    /// Mechanisms to advertise for `db.name` in `saslSupportedMechs`. Unknown users get the
    /// full list, so the answer does not reveal whether a user exists.
    pub fn mechanisms_for(&self, qualified: &str) -> Vec<&'static str> {
        let user = qualified
            .split_once('.')
            .and_then(|(db, name)| self.get(db, name));
        match user {
            Some(u) => [Mechanism::ScramSha1, Mechanism::ScramSha256]
                .into_iter()
                .filter(|m| u.credential(*m).is_some())
                .map(|m| m.name())
                .collect(),
            None => vec!["SCRAM-SHA-1", "SCRAM-SHA-256"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongomux_auth::Secret;

    fn entry(name: &str, mechs: &[Mechanism]) -> UserConfig {
        UserConfig {
            name: name.into(),
            db: "admin".into(),
            role: Role::Read,
            databases: vec!["a".into()],
            scram: mechs
                .iter()
                .map(|m| ScramCredential::derive(*m, name, &Secret::new("pw"), 4096))
                .collect(),
            aws: false,
        }
    }

    #[test]
    fn store_lookup_and_mechanisms() {
        let s = UserStore::from_config(&[entry("u", &[Mechanism::ScramSha256])]).unwrap();
        assert!(s.auth_required());
        let u = s.get("admin", "u").unwrap();
        assert!(u.may_use("a") && !u.may_use("b"));
        assert_eq!(s.mechanisms_for("admin.u"), vec!["SCRAM-SHA-256"]);
        assert_eq!(s.mechanisms_for("admin.nobody").len(), 2);
        assert!(s.still_valid(&u));
    }

    #[test]
    fn invalid_entries_refused() {
        assert!(UserStore::from_config(&[entry("u", &[])]).is_err());
        let e = entry("u", &[Mechanism::ScramSha1]);
        assert!(UserStore::from_config(&[e.clone(), e]).is_err());
        assert!(!UserStore::default().auth_required());
    }
}
