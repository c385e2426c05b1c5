//! The mongomux gateway: it speaks the MongoDB wire protocol to any official driver, answers the
//! handshake itself as a mongos, and multiplexes many client connections over a small, bounded
//! pool of authenticated upstream connections.
//!
//! Module map, in the order a request meets the parts:
//! - [`listener`]: accept loop, client limit, per-source limit, access list check, descriptor
//!   exhaustion, drain.
//! - [`session`]: one task per client connection: lifecycle (TLS, read loop, deadlines),
//!   handshake, edge authentication, dispatch by command kind, forwarding.
//! - [`command`]: a request decoded once into a typed view; the command table; authorization.
//! - [`route`]: cursor ownership, sessions and pinned transactions, shared by all clients.
//! - [`upstream`]: authenticated upstream connections and the bounded pool.
//! - [`dataapi`]: the HTTP Data API, a second front door: the listener admits its connections,
//!   and each request becomes one command through the same authorization and pool.
//!
//! Beside the request path: [`identity`] (users, SCRAM/MONGODB-AWS conversations, STS),
//! [`settings`] (raw configuration, validated [`Settings`]) with [`reload`] applying new ones,
//! [`access`] (the IP access list), [`proxy`] (PROXY protocol headers and who may send them), [`limits`] (client, per-source and failed-login limits), [`tls`], [`framed`] (whole messages out of a byte stream),
//! [`metrics`], [`admin`] (what operators see and steer: clients, pause, reports), and
//! [`error`], the one place errors become MongoDB replies.
//!
//! State shared between tasks is a few small parts ([`context::Shared`]), built once; the
//! reloadable settings are one validated value behind an `ArcSwap` in [`context::Live`]. There
//! are no globals.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod command;
pub mod config_error;
pub mod context;
pub mod dataapi;
pub mod error;
pub mod framed;
pub mod identity;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod session;
pub mod settings;
pub mod text;
pub mod tls;
pub mod upstream;

pub use context::{Live, Shared};
pub use error::GatewayError;
pub use listener::{Gateway, StartError};
pub use settings::{ConfigError, RawConfig, Settings};
