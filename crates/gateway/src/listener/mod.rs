//! The listener, the accept loop and the drain.
//!
//! Owns admission through the client limit ([`crate::limits::client_limit`], whose permits travel with
//! each session task, so "no permit held" means "no client left") and the reaction to running
//! out of file descriptors:
//! a spare descriptor is kept open so that, at the limit, the gateway can still accept and
//! immediately close a new client instead of spinning on EMFILE, while existing clients carry on.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::context::Shared;
use crate::settings::Settings;
use crate::{metrics, session};

/// Least time between two warnings about refused clients.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Why a gateway with valid settings could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The upstream's `mongodb+srv` name could not be resolved.
    #[error("the upstream's SRV lookup failed")]
    Srv(#[source] crate::upstream::srv::SrvError),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}{purpose}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Empty for the client listener, " for metrics" for the metrics endpoint.
        purpose: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet running gateway.
pub struct Gateway {
    shared: Shared,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    drain_tx: watch::Sender<bool>,
}

impl Gateway {
    /// Binds the sockets for already validated settings.
    pub async fn bind(settings: Settings) -> Result<Gateway, StartError> {
        let start = crate::upstream::topology::srv_watch::initial_seeds(
            &settings.upstream,
            settings.upstream_resolver,
        )
        .await
        .map_err(StartError::Srv)?;
        let rescan = settings.upstream_srv_rescan_interval;
        let bind = |addr: SocketAddr, purpose: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr,
                    purpose,
                    source,
                })
        };
        let listener = bind(settings.listen, "").await?;
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(bind(addr, " for metrics").await?),
            None => None,
        };
        let (drain_tx, drain_rx) = watch::channel(false);
        let shared = Shared::with_seeds(settings, start.config, start.seeds, drain_rx);
        shared.upstream.start();
        if let Some(resolver) = start.resolver {
            shared.upstream.watch_srv(resolver, rescan);
        }
        Ok(Gateway {
            shared,
            listener,
            metrics_listener,
            drain_tx,
        })
    }

    /// The client address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound socket has an address")
    }

    /// The metrics address actually bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound socket has an address"))
    }

    /// The shared parts of the running gateway (for SIGHUP reload, tests and embedding).
    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// Serves until `shutdown` resolves, then drains: stops accepting, lets in-flight
    /// operations finish, closes idle clients, and returns when none is left or at the drain
    /// deadline.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway {
            shared,
            listener,
            metrics_listener,
            drain_tx,
        } = self;
        if let Some(l) = metrics_listener {
            tokio::spawn(metrics::serve(
                l,
                shared.metrics.clone(),
                shared.draining.clone(),
            ));
        }
        tokio::spawn(reaper(shared.clone()));
        tokio::spawn({
            let pool = shared.upstream.clone();
            let deadline = shared.live.settings.load().handshake_timeout;
            async move { session::handshake::ensure_upstream_info(&pool, deadline).await }
        });
        accept_loop(&shared, listener, shutdown).await;
        let _ = drain_tx.send(true);
        let deadline = shared.live.settings.load().drain_timeout;
        tracing::info!(clients = shared.clients.held(), "draining");
        match tokio::time::timeout(deadline, shared.clients.all_released()).await {
            Ok(()) => tracing::info!("drained: no client left"),
            Err(_) => tracing::warn!(
                clients = shared.clients.held(),
                "drain deadline reached; closing remaining clients"
            ),
        }
        shared.upstream.close_idle();
    }
}

async fn accept_loop(shared: &Shared, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut spare = std::fs::File::open("/dev/null").ok();
    let mut last_warn: Option<Instant> = None;
    let mut warn = |msg: &str, peer: Option<SocketAddr>| {
        if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            last_warn = Some(Instant::now());
            tracing::warn!(peer = ?peer, "{msg}");
        }
    };
    let mut last_denied: Option<Instant> = None;
    let mut suppressed = 0u64;
    let mut denied_warn = |msg: &str| {
        if last_denied.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            last_denied = Some(Instant::now());
            tracing::warn!(suppressed, "{msg}");
            suppressed = 0;
        } else {
            suppressed += 1;
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer))
                if !shared
                    .live
                    .settings
                    .load()
                    .access
                    .allows(peer.ip(), SystemTime::now()) =>
            {
                // Refused before reading a byte: nothing from this peer is parsed.
                shared.metrics.client_connections_denied.inc();
                denied_warn(&format!(
                    "connection from {peer} refused: address not in the access list"
                ));
                drop(stream);
            }
            Ok((stream, peer)) => match shared.clients.try_acquire() {
                Some(permit) => {
                    let limit = shared.live.settings.load().max_connections_per_source;
                    match shared.sources.admit(peer.ip(), limit) {
                        Some(slot) => {
                            tokio::spawn(session::run(
                                shared.clone(),
                                stream,
                                peer,
                                (permit, slot),
                            ));
                        }
                        None => {
                            shared.metrics.client_connections_rejected.inc();
                            warn(
                                "max-connections-per-source reached; refusing a client",
                                Some(peer),
                            );
                        }
                    }
                }
                None => {
                    shared.metrics.client_connections_rejected.inc();
                    warn(
                        "max-clients reached; refusing new client connections",
                        Some(peer),
                    );
                    drop(stream);
                }
            },
            Err(e) if is_fd_exhaustion(&e) => {
                // Free the spare descriptor to accept and close the waiting client, so it
                // learns now instead of hanging in the backlog.
                shared.metrics.client_connections_rejected.inc();
                warn(
                    "file descriptor limit reached; refusing new client connections",
                    None,
                );
                drop(spare.take());
                if let Ok((stream, _)) = listener.accept().await {
                    refuse(stream);
                }
                spare = std::fs::File::open("/dev/null").ok();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn refuse(stream: TcpStream) {
    drop(stream);
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE (24): process limit; ENFILE (23): system limit.
    matches!(e.raw_os_error(), Some(23) | Some(24))
}

/// Closes idle upstream connections past their idle timeout.
async fn reaper(shared: Shared) {
    let every = (shared.live.settings.load().idle_timeout / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut draining = shared.draining.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => shared.upstream.reap_idle(),
            _ = draining.changed() => return,
        }
    }
}
