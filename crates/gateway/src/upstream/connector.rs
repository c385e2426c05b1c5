//! What the pool needs from the outside world: something that opens connections
//! ([`Connector`]) and connections it can judge and age ([`PoolConn`]).
//!
//! The pool is generic over these two traits so that its guarantees (bounded size, FIFO
//! checkout, no reuse after an interrupted exchange) can be unit-tested with an in-memory
//! connector and tokio's paused clock, and so that one pool per upstream member can be built
//! later. [`TcpConnector`] is the production connector: TCP, optional TLS, `hello` and SCRAM,
//! all in [`UpstreamConn::connect`].

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use super::config::UpstreamConfig;
use super::conn::{ConnMeta, UpstreamConn, UpstreamInfo};
use super::error::UpstreamError;

/// A connection as the pool sees it.
pub trait PoolConn: Send + Debug + 'static {
    /// Whether an idle connection is still usable; must not block.
    fn is_healthy(&self) -> bool;
    /// Facts shared with the cursor table: the id for logs and the open-cursor count that
    /// keeps a connection alive longer while idle.
    fn meta(&self) -> &Arc<ConnMeta>;
}

/// Opens ready-to-use connections (connected, greeted, authenticated).
pub trait Connector: Send + Sync + Debug + 'static {
    /// The connections this connector opens.
    type Conn: PoolConn;

    /// Opens connection number `id`. The pool bounds the whole with the connect timeout, so
    /// this need not time itself out.
    fn connect(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<(Self::Conn, UpstreamInfo), UpstreamError>> + Send;

    /// Where connections go (`host:port`), for error messages; never carries credentials.
    fn address(&self) -> &str;
}

/// The production connector: TCP (and TLS when the upstream URI asks for it), `hello`, SCRAM.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    upstream: Arc<UpstreamConfig>,
    address: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl TcpConnector {
    /// A connector to the member at `address` (`host:port`) of `upstream`, with TLS settings
    /// when its URI asks for TLS.
    pub fn new(
        upstream: Arc<UpstreamConfig>,
        address: String,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        TcpConnector {
            upstream,
            address,
            tls,
        }
    }
}

impl Connector for TcpConnector {
    type Conn = UpstreamConn;

    fn connect(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<(UpstreamConn, UpstreamInfo), UpstreamError>> + Send {
        UpstreamConn::connect(&self.upstream, &self.address, self.tls.as_ref(), id)
    }

    fn address(&self) -> &str {
        &self.address
    }
}

impl PoolConn for UpstreamConn {
    fn is_healthy(&self) -> bool {
        UpstreamConn::is_healthy(self)
    }

    fn meta(&self) -> &Arc<ConnMeta> {
        &self.meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GatewayError;

    #[tokio::test]
    async fn a_failed_connect_names_the_address_and_cause_but_never_the_password() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap().to_string();
        drop(closed);
        let mut upstream = UpstreamConfig::single(address.clone());
        upstream.auth = crate::upstream::UpstreamAuth::Scram {
            username: "gateway".into(),
            password: mongomux_auth::Secret::new("hunter2-do-not-log"),
            source: "admin".into(),
            mechanism: None,
        };
        let err = TcpConnector::new(Arc::new(upstream), address.clone(), None)
            .connect(1)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(&err, UpstreamError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused));
        let debug = format!("{err:?}");
        let errmsg = GatewayError::from(err).message();
        assert!(errmsg.starts_with(&format!("upstream unavailable: connect to {address}: ")));
        assert!(!errmsg.contains("hunter2") && !debug.contains("hunter2"));
    }
}
