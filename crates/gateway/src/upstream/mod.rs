//! Everything on the upstream side: single authenticated connections ([`conn`]) and the
//! bounded pool that hands them out ([`pool`]).

pub mod conn;
pub mod pool;

pub use conn::{ConnMeta, UpstreamConn, UpstreamInfo};
pub use pool::{Pool, PoolSettings, PooledConn};
