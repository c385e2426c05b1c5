//! SCRAM-SHA-1 and SCRAM-SHA-256 as MongoDB speaks them.
//!
//! SCRAM is RFC 5802; SCRAM-SHA-256 is RFC 7677. MongoDB's profile
//! (specifications repository, `source/auth/auth.md`, sections "SCRAM-SHA-1"
//! and "SCRAM-SHA-256") differs from the RFCs in three ways that this module
//! owns and the rest of the gateway must not re-implement:
//!
//! - user names are never SASLprep'd (only `,` and `=` are escaped on the
//!   wire, RFC 5802 §5.1 "n");
//! - the SCRAM-SHA-1 "password" is `hex(md5(user + ":mongo:" + password))`,
//!   without SASLprep; the SCRAM-SHA-256 password is SASLprep'd (RFC 4013);
//! - channel binding is never used, and clients refuse fewer than
//!   [`MIN_ITERATIONS`] PBKDF2 iterations.
//!
//! The submodules split the work by who uses it: `client` (the gateway
//! authenticating to its upstreams), `server` (clients authenticating to the
//! gateway), `credential` (what the server stores instead of passwords),
//! `message` (the RFC 5802 §7 grammar, shared by both sides) and `crypto`
//! (the RFC 5802 §3 functions). Nothing here does I/O or knows about BSON:
//! callers move the payloads in and out of `saslStart`/`saslContinue`.

mod client;
mod credential;
mod crypto;
mod message;
mod server;

#[cfg(test)]
mod test_vectors;

pub use client::ScramClient;
pub use credential::ScramCredential;
pub use server::ScramServer;

use std::fmt;

/// The smallest PBKDF2 iteration count a client accepts from a server
/// (auth.md "SCRAM-SHA-1" and "SCRAM-SHA-256"; RFC 7677 §4 recommends at
/// least this many).
pub const MIN_ITERATIONS: u32 = 4096;

/// Most PBKDF2 iterations a client accepts from a server. Key derivation runs synchronously,
/// so an absurd count from a hostile or broken server would block a worker thread for hours;
/// real deployments use 10,000 to 15,000 and rarely more than 100,000.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// A SCRAM mechanism, named as in `saslStart.mechanism` and
/// `saslSupportedMechs`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Mechanism {
    /// SCRAM-SHA-1 (RFC 5802 with MongoDB's hashed password).
    #[serde(rename = "SCRAM-SHA-1")]
    ScramSha1,
    /// SCRAM-SHA-256 (RFC 7677).
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
}

impl Mechanism {
    /// The IANA/MongoDB mechanism name: `"SCRAM-SHA-1"` or `"SCRAM-SHA-256"`.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    /// Parses a mechanism name. Matching is exact: MongoDB's names are
    /// case-sensitive, so `"scram-sha-1"` is not a mechanism.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "SCRAM-SHA-1" => Some(Mechanism::ScramSha1),
            "SCRAM-SHA-256" => Some(Mechanism::ScramSha256),
            _ => None,
        }
    }

    /// The iteration count MongoDB's `createUser` uses by default
    /// (`scramIterationCount` 10,000 and `scramSHA256IterationCount` 15,000).
    /// [`ScramServer`] answers unknown users with this count, so stored
    /// credentials should use it too or the count itself hints which users
    /// exist.
    pub fn default_iterations(&self) -> u32 {
        match self {
            Mechanism::ScramSha1 => 10_000,
            Mechanism::ScramSha256 => 15_000,
        }
    }

    /// Salt length in bytes: the hash length minus four, which is what
    /// MongoDB's own `createUser` generates (16 and 28). Using the same
    /// lengths keeps credentials imported from MongoDB and credentials we
    /// derive (and the fake ones for unknown users) indistinguishable.
    pub(crate) fn salt_len(&self) -> usize {
        self.hash_len() - 4
    }

    /// Output length of the mechanism's hash (H and HMAC in RFC 5802 §2.2).
    pub(crate) fn hash_len(&self) -> usize {
        match self {
            Mechanism::ScramSha1 => 20,
            Mechanism::ScramSha256 => 32,
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests;
