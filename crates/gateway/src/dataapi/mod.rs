//! The HTTP Data API: MongoDB from functions with no driver, no connection and no secret, in
//! the shape of the retired Atlas Data API (`POST {base}/action/findOne`, ...), on a listener of
//! its own (`data_api_listen`, optionally HTTPS).
//!
//! It is another front door to the same gateway, not a second gateway: connections are
//! admitted by the listener's code (client limit, PROXY header, access list, per-source limit);
//! each request authenticates as a gateway user ([`auth`]: an API key, or an IAM principal
//! through the same STS path as MONGODB-AWS), becomes one MongoDB command ([`actions`]), and is
//! run through the same authorization table, pause gate and pool ([`exec`]). Bodies are JSON
//! or Extended JSON ([`ejson`]); [`routes`] is the HTTP surface and the one place errors become
//! HTTP answers; [`server`] drives a connection with hyper.

pub mod actions;
pub mod auth;
pub mod ejson;
pub mod exec;
pub mod routes;
pub mod server;

pub use server::serve_connection;
