//! The configuration error type, kept apart from request errors ([`crate::GatewayError`]) and in
//! a module of its own with no dependencies, so that every part that validates its own settings
//! (access list, users, TLS, STS) can return it without depending on the settings as a whole:
//! a bad setting is reported to the operator at start-up, `check-config` or reload, never to a
//! client as a MongoDB reply.
//!
//! Each message says once what is wrong, without a prefix such as "invalid configuration" (the
//! binary adds that once), and never contains a password: URI errors name the problem, not the
//! URI.

use std::path::PathBuf;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has settings of the wrong type or name.
    #[error("{0}")]
    Syntax(String),
    /// A setting, or a combination of settings, that cannot work.
    #[error("{0}")]
    Invalid(String),
}
