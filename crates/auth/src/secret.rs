//! [`Secret`]: the one type this crate uses to carry passwords.
//!
//! It owns a single guarantee: a secret never reaches a log line, an error
//! message or `Debug` output by accident. `Debug` and `Display` print `***`,
//! and the only way to read the value is the explicit [`Secret::expose`],
//! which makes every use of the plain text easy to find in review.
//!
//! It deliberately implements `Deserialize` (so configuration structs can hold
//! one) but not `Serialize` (so dumping a configuration cannot write it back
//! out), and not `PartialEq` (comparing secrets must go through a
//! constant-time path such as the SCRAM proof check instead).

use std::fmt;

/// A secret string (a password, a key, a token) whose `Debug` and `Display`
/// print `***`.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The plain text. Call this only where the value is fed into a
    /// computation (hashing, key derivation), never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("pencil");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "pencil");
    }

    #[test]
    fn deserializes_from_a_plain_string() {
        #[derive(serde::Deserialize, Debug)]
        struct Config {
            password: Secret,
        }
        let cfg: Config = bson::from_document(bson::doc! { "password": "pencil" }).unwrap();
        assert_eq!(cfg.password.expose(), "pencil");
        assert!(!format!("{cfg:?}").contains("pencil"));
    }
}
