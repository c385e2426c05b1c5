//! One admitted Data API connection: TLS when configured, then HTTP/1.1 by hyper, with the
//! axum router of [`super::routes`]. Request heads must arrive within the handshake timeout
//! (also the bound on an idle keep-alive connection) and are at most 64 KiB; a drain, or the
//! access list no longer admitting the client's address (an entry expired or was removed by a
//! reload), ends the connection gracefully after the request in progress.

use std::net::SocketAddr;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::watch;

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
    let mut rechecks = shared.live.rechecks();
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
                () = revoked(&shared, client, &mut rechecks) => {
                    shared.metrics.count_revoked("access");
                    tracing::info!(event = "client_revoked", peer = %client, reason = "access", "closing a Data API connection: the access list no longer admits its address");
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

/// Resolves once the access list in force no longer admits `client`, judged again at every
/// reload and access-list expiry; pending forever if that never happens.
async fn revoked(shared: &Shared, client: SocketAddr, rechecks: &mut watch::Receiver<u64>) {
    let admitted = || {
        let access = &shared.live.settings.load().access;
        access.allows(client.ip(), std::time::SystemTime::now())
    };
    if !admitted() {
        return;
    }
    while rechecks.changed().await.is_ok() {
        if !admitted() {
            return;
        }
    }
    std::future::pending().await
}
