//! Test support for mongomux, not product: one raw-wire MongoDB client and one counter of
//! established TCP sockets, shared by the integration tests (`crates/mongomux/tests`,
//! `crates/gateway/tests`) and the benchmarks (`bench/`), so there is one copy of each to fix.
//!
//! What it owns:
//! - [`frame`]: building and reading whole wire messages (header, OP_MSG sections), every length
//!   checked against a bound before anything is allocated.
//! - [`RawConn`] ([`client`]): one connection speaking OP_MSG, with a deadline on every wait, that
//!   logs in with SCRAM-SHA-256 or SCRAM-SHA-1 ([`scram`]) and sends raw bytes when a test needs
//!   to send what no driver sends.
//! - [`sockets`]: ESTABLISHED TCP sockets seen from outside every process (sock_diag netlink, with
//!   `/proc/net/tcp{,6}` as the plain reference), matched by full address.
//!
//! Why a client of our own rather than the official driver: FerretDB v1.24.2 with
//! `--test-enable-new-auth` answers the client-final SCRAM message with `done: false` although
//! the client sent `skipEmptyExchange: true`, and the Rust driver 3.9 refuses that ("expected
//! SCRAM authentication to have completed"; pymongo and the Go driver do the extra empty round).
//! This client does the extra round. A benchmark also needs ten thousand handshaken connections
//! for the price of a socket each, which a driver client (a monitor and a pool apiece) is not.
//!
//! It is written independently of the gateway's codec (`crates/wire`) and SCRAM code
//! (`crates/auth`) on purpose, so a bug there cannot hide itself by being shared here.
//!
//! `unsafe` is allowed in this crate only, because it is test support: the sock_diag counter
//! talks to the kernel through `socket(2)`/`send(2)`/`recv(2)` on a netlink socket, which the
//! standard library does not wrap. Every such call is in [`sockets`] with its reason.

pub mod client;
pub mod frame;
pub mod query;
pub mod scram;
pub mod sockets;

pub use client::{hello_command, RawConn, DEFAULT_LIMIT};
pub use frame::{is_ok, MAX_MESSAGE};
pub use query::{first_write_error, ServerError};
pub use scram::Mechanism;

/// What can go wrong talking to a server through this kit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}: no answer within {1:?}")]
    Timeout(&'static str, std::time::Duration),
    #[error("connection closed by the peer")]
    Closed,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("bson: {0}")]
    BsonDecode(#[from] bson::de::Error),
    #[error("bson: {0}")]
    BsonEncode(#[from] bson::ser::Error),
    #[error("authentication: {0}")]
    Auth(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
