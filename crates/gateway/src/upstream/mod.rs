//! Everything on the upstream side: single authenticated connections ([`conn`], what the pool
//! and the cursor table share about each in [`conn_meta`], with the MONGODB-AWS login in `aws_login`, its credential source in `aws_credentials`, and wire
//! compression in [`compression`]), what the pool needs from them ([`connector`]), the bounded
//! pool per member that hands them out ([`pool`]) under a budget shared by all members
//! ([`total`]), and the one error type for all of it ([`error`]); the deployment's description
//! ([`config`], [`read_pref`]) and the DNS lookups of a `mongodb+srv` name ([`srv`]).

mod aws_credentials;
mod aws_login;
mod bound;
pub mod compression;
pub mod config;
pub mod conn;
pub mod conn_meta;
pub mod connector;
pub mod error;
#[cfg(test)]
mod mem_connector;
pub mod pool;
mod pool_limits;
pub mod pool_stats;
pub mod read_pref;
pub mod srv;
pub mod summary;
pub mod topology;
pub mod total;

pub use aws_credentials::AwsCredentialSource;
pub use config::{
    host_of, host_port, AwsStatic, Seeds, TopologyOptions, UpstreamAuth, UpstreamConfig,
};
pub use conn::{ConnMeta, Flavor, UpstreamConn, UpstreamInfo};
pub use connector::{Connector, PoolConn, TcpConnector};
pub use error::UpstreamError;
pub use pool::{Pool, PoolLimits, Pooled, PooledConn, UpstreamPool};
