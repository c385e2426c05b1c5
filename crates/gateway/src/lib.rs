//! The mongomux gateway: it speaks the MongoDB wire protocol to any official driver, answers the
//! handshake itself as a mongos, and multiplexes many client connections over a small, bounded
//! pool of authenticated upstream connections.
//!
//! Module map, from the socket inwards:
//! - [`server`]: listener, client limit, descriptor exhaustion, drain.
//! - [`session`]: one task per client connection: lifecycle, handshake, edge authentication,
//!   dispatch by command kind, forwarding.
//! - [`command`]: a request decoded once into a typed view; the command table; authorization.
//! - [`route`]: cursor ownership, sessions and pinned transactions, shared by all clients.
//! - [`upstream`]: authenticated upstream connections and the bounded pool.
//! - [`framed`]: whole messages out of a byte stream, with length checks.
//! - [`settings`]: raw configuration, validated [`Settings`], configuration errors, reload.
//! - [`client_limit`]: `max_clients` admission, and what drain waits for.
//! - [`metrics`], [`error`]: Prometheus metrics, the error-to-reply mapping.
//!
//! State shared between tasks is a few small parts ([`context::Shared`]), built once; the
//! reloadable settings sit behind `ArcSwap`s in [`context::Live`]. There are no globals.

#![forbid(unsafe_code)]

pub mod access;
pub mod client_limit;
pub mod command;
pub mod config_error;
pub mod context;
pub mod edge_auth;
pub mod error;
pub mod framed;
pub mod limits;
pub mod metrics;
pub mod reload;
pub mod route;
pub mod server;
pub mod session;
pub mod settings;
pub mod sts;
pub mod tls;
pub mod upstream;
pub mod users;

pub use context::{Live, Shared};
pub use error::GatewayError;
pub use server::{Gateway, StartError};
pub use settings::{ConfigError, RawConfig, Settings};
