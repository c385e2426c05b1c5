//! Everything on the upstream side: single authenticated connections ([`conn`]), what the
//! pool needs from them ([`connector`]), the bounded pool that hands them out ([`pool`]), and
//! the one error type for all of it ([`error`]); the deployment's description ([`config`],
//! [`read_pref`]) and the DNS lookups of a `mongodb+srv` name ([`srv`]).

mod bound;
pub mod config;
pub mod conn;
pub mod connector;
pub mod error;
#[cfg(test)]
mod mem_connector;
pub mod pool;
pub mod read_pref;
pub mod srv;
pub mod summary;

pub use config::{
    host_of, host_port, AwsStatic, Seeds, TopologyOptions, UpstreamAuth, UpstreamConfig,
};
pub use conn::{ConnMeta, UpstreamConn, UpstreamInfo};
pub use connector::{Connector, PoolConn, TcpConnector};
pub use error::UpstreamError;
pub use pool::{Pool, PoolLimits, PoolSettings, Pooled, PooledConn, UpstreamPool};
