//! Authentication for mongomux: SCRAM-SHA-1 and SCRAM-SHA-256 on both sides
//! of the gateway.
//!
//! - [`ScramClient`] authenticates the gateway's upstream connections to
//!   MongoDB.
//! - [`ScramServer`] authenticates clients to the gateway against stored
//!   [`ScramCredential`]s (salt, iteration count, StoredKey, ServerKey; never
//!   a password).
//! - [`AwsClient`] logs the gateway in to its upstream with MONGODB-AWS
//!   (the payloads and the SigV4 signature; [`aws`] is the server side).
//! - [`Secret`] carries passwords so they never reach logs or `Debug` output,
//!   and every [`AuthError`] message is free of secret material.
//!
//! The protocol is RFC 5802 (SCRAM) and RFC 7677 (SCRAM-SHA-256) as profiled
//! by MongoDB's authentication specification (`source/auth/auth.md` in the
//! mongodb/specifications repository). This crate handles only the SASL
//! payloads; wrapping them in `saslStart`/`saslContinue` commands, choosing a
//! mechanism from `saslSupportedMechs`, and mapping errors to MongoDB replies
//! (code 18, AuthenticationFailed) belong to the gateway. It does no I/O.
//!
//! ```
//! use mongomux_auth::{Mechanism, ScramClient, ScramCredential, ScramServer, Secret};
//!
//! let m = Mechanism::ScramSha256;
//! let password = Secret::new("pencil");
//! let stored = ScramCredential::derive(m, "user", &password, m.default_iterations());
//!
//! let mut client = ScramClient::new(m, "user", &password);
//! let (mut server, server_first) =
//!     ScramServer::start(m, &client.client_first(), |name| {
//!         (name == "user").then(|| stored.clone())
//!     })?;
//! let client_final = client.client_final(&server_first)?;
//! let server_final = server.finish(&client_final)?;
//! client.verify_server_final(&server_final)?;
//! assert_eq!(server.username(), "user");
//! # Ok::<(), mongomux_auth::AuthError>(())
//! ```

#![forbid(unsafe_code)]

pub mod aws;
pub mod aws_client;
mod aws_fields;
mod error;
mod scram;
mod secret;

pub use aws_client::{AwsChallenge, AwsClient, AwsCredentials};
pub use error::AuthError;
pub use scram::{
    Mechanism, ScramClient, ScramCredential, ScramServer, MAX_ITERATIONS, MIN_ITERATIONS,
};
pub use secret::Secret;
