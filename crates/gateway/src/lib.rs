//! The mongomux gateway: it speaks the MongoDB wire protocol to any official driver, answers the
//! handshake itself as a mongos, and multiplexes many client connections over a small, bounded
//! pool of authenticated upstream connections.
//!
//! Module map, from the socket inwards:
//! - [`server`]: listener, client limit, descriptor exhaustion, drain.
//! - [`session`]: one task per client connection; what is answered locally, what is forwarded.
//! - [`handshake`]: the gateway's own `hello`.
//! - [`request`]: the routing fields read from each command.
//! - [`routing`]: per-client cursors, sessions and pinned transactions.
//! - [`upstream`]: authenticated upstream connections and the bounded pool.
//! - [`framed`]: whole messages out of a byte stream, with length checks.
//! - [`settings`]: raw configuration, validated [`Settings`], configuration errors, reload.
//! - [`client_limit`]: `max_clients` admission, and what drain waits for.
//! - [`metrics`], [`error`]: Prometheus metrics, the error-to-reply mapping.
//!
//! State shared between tasks lives in one [`Context`] passed as an `Arc`; there are no globals.

pub mod access;
pub mod authz;
pub mod client_limit;
pub mod context;
pub mod edge_auth;
pub mod error;
pub mod framed;
pub mod handshake;
pub mod limits;
pub mod metrics;
pub mod request;
pub mod routing;
pub mod server;
pub mod session;
pub mod settings;
pub mod sts;
pub mod tls;
pub mod upstream;
pub mod users;

pub use context::Context;
pub use error::GatewayError;
pub use server::{Gateway, StartError};
pub use settings::{ConfigError, RawConfig, Settings};
