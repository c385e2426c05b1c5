//! One admitted Data API connection: TLS when configured, then HTTP/1.1 by hyper, with the
//! axum router of [`super::routes`]. Request heads must arrive within the handshake timeout
//! (also the bound on an idle keep-alive connection) and are at most 64 KiB; a drain ends the
//! connection gracefully after the request in progress.

use std::net::SocketAddr;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;

use super::routes::{router, Api};
use crate::context::Shared;
use crate::limits::client_limit::ClientPermit;
use crate::limits::SourceSlot;

/// Largest request head (and read buffer) of a connection.
const MAX_HEAD: usize = 64 * 1024;

/// Serves one connection until the client closes it, it idles out, or the gateway drains.
pub async fn serve_connection(
    shared: Shared,
    stream: TcpStream,
    client: SocketAddr,
    _admission: (ClientPermit, SourceSlot),
) {
    let _ = stream.set_nodelay(true);
    let (tls, deadline) = {
        let s = shared.live.settings.load();
        (s.data_api_tls.clone(), s.handshake_timeout)
    };
    let service = TowerToHyperService::new(router(Api {
        shared: shared.clone(),
        client,
    }));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(deadline)
        .max_buf_size(MAX_HEAD);
    let mut draining = shared.draining.clone();
    macro_rules! drive {
        ($io:expr) => {{
            let conn = http.serve_connection(TokioIo::new($io), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { draining.wait_for(|d| *d).await.is_ok() } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }};
    }
    match tls {
        None => drive!(stream),
        Some(cfg) => {
            let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
            match tokio::time::timeout(deadline, accept).await {
                Ok(Ok(tls)) => drive!(tls),
                _ => tracing::debug!(peer = %client, "Data API TLS handshake failed"),
            }
        }
    }
}
