//! The listener, the accept loop and the drain.
//!
//! Each accepted socket is admitted in its own task ([`admit`]): the PROXY protocol step
//! ([`crate::proxy`]) when it is on, so the client's effective address is known before the access
//! list, the per-source limit and the session see it; peers whose address cannot change are
//! judged by the access list in the accept loop, before a byte of theirs is read. The readiness
//! probe of the metrics endpoint's `/readyz` lives here too, next to what it reports on.
//!
//! Owns admission through the client limit ([`crate::limits::client_limit`], whose permits travel with
//! each session task, so "no permit held" means "no client left") and the reaction to running
//! out of file descriptors:
//! a spare descriptor is kept open so that, at the limit, the gateway can still accept and
//! immediately close a new client instead of spinning on EMFILE, while existing clients carry on.

mod admit;
mod status_json;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::context::Shared;
use crate::settings::Settings;
use crate::upstream::topology::select::Need;
use crate::{metrics, session};
use admit::Warnings;

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
    data_api_listener: Option<TcpListener>,
    drain_tx: watch::Sender<bool>,
}

/// Which protocol an accepted connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Front {
    /// The MongoDB wire protocol.
    Wire,
    /// The HTTP Data API.
    DataApi,
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
        let bind = |addr: SocketAddr, purpose: &'static str| {
            listen(addr).map_err(|source| StartError::Bind {
                addr,
                purpose,
                source,
            })
        };
        let listener = bind(settings.listen, "")?;
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(bind(addr, " for metrics")?),
            None => None,
        };
        let data_api_listener = match settings.data_api_listen {
            Some(addr) => Some(bind(addr, " for the Data API")?),
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
            data_api_listener,
            drain_tx,
        })
    }

    /// The Data API address actually bound.
    pub fn data_api_addr(&self) -> Option<SocketAddr> {
        self.data_api_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound socket has an address"))
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
            data_api_listener,
            drain_tx,
        } = self;
        // The client socket is bound (the kernel queues connections from here on) and the
        // accept loop starts below; it turns false when the loop stops.
        let accepting = Arc::new(AtomicBool::new(true));
        // The metrics endpoint outlives the drain (its `/readyz` says 503 meanwhile) and stops
        // when this function returns and drops `_stop_metrics`.
        let (_stop_metrics, stop_rx) = watch::channel(false);
        if let Some(l) = metrics_listener {
            let endpoints = metrics::http::Endpoints {
                ready: readiness(&shared, &accepting),
                admin: status_json::handler(&shared),
                proxy: admit::metrics_proxy(&shared),
            };
            tokio::spawn(metrics::serve(
                l,
                shared.metrics.clone(),
                endpoints,
                stop_rx,
            ));
        }
        tokio::spawn(reaper(shared.clone()));
        tokio::spawn(crate::reload::watch_access_expiry(shared.clone()));
        if let Some(l) = data_api_listener {
            let shared = shared.clone();
            let mut draining = shared.draining.clone();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = draining.wait_for(|d| *d).await;
                };
                accept_loop(&shared, l, Front::DataApi, stop).await;
            });
        }
        tokio::spawn({
            let pool = shared.upstream.clone();
            let deadline = shared.live.settings.load().handshake_timeout;
            async move { session::handshake::ensure_upstream_info(&pool, deadline).await }
        });
        accept_loop(&shared, listener, Front::Wire, shutdown).await;
        accepting.store(false, Ordering::Relaxed);
        let _ = drain_tx.send(true);
        shared.metrics.draining.set(1);
        let deadline = shared.live.settings.load().drain_timeout;
        let drain_ends = tokio::time::Instant::now() + deadline;
        tracing::info!(
            event = "drain_started",
            clients = shared.clients.held(),
            "draining"
        );
        match tokio::time::timeout(deadline, shared.clients.all_released()).await {
            Ok(()) => tracing::info!(event = "drained", "drained: no client left"),
            Err(_) => tracing::warn!(
                clients = shared.clients.held(),
                "drain deadline reached; closing remaining clients"
            ),
        }
        linger_for_cursors(&shared, drain_ends).await;
        shared.upstream.close_idle();
    }
}

/// FerretDB 1.x ends a cursor with the upstream connection that opened it, and with a shared
/// `session_key` clients may still be reading this gateway's cursors through other gateways:
/// closing those connections as soon as the last client left would end the cursors
/// mid-iteration (CursorNotFound). So while an idle connection may carry such cursors, the
/// drain keeps the connections open until its deadline. MongoDB keeps cursors on the server,
/// so there nothing waits.
async fn linger_for_cursors(shared: &Shared, until: tokio::time::Instant) {
    let ties_cursors = matches!(
        shared.upstream.upstream_info().map(|i| i.flavor),
        Some(crate::upstream::Flavor::FerretDbV1)
    );
    if !ties_cursors || !shared.routes.shares_sessions() {
        return;
    }
    let carrying = shared.upstream.carrying_cursors();
    if carrying == 0 || tokio::time::Instant::now() >= until {
        return;
    }
    tracing::info!(
        event = "drain_cursor_linger",
        connections = carrying,
        "keeping upstream connections whose cursors other gateways may be continuing open until the drain deadline"
    );
    tokio::time::sleep_until(until).await;
}

/// The listen backlog asked of the kernel (Linux caps it at `net.core.somaxconn`, 4096 by
/// default since 5.4). A reconnect storm, thousands of clients whose gateway restarted, arrives
/// within milliseconds; once the accept queue is full the kernel drops their SYNs, and a client
/// only resends one after 1, 3 and 7 seconds. With tokio's default of 1,024, 5,000 clients
/// reconnecting to a restarted gateway overflowed the queue (404 SYNs dropped in one run, the
/// kernel's `ListenOverflows`); with 4,096, none (docs/reliability.md "Reconnect storms").
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr`, as `TcpListener::bind` makes one (`SO_REUSEADDR`, so a gateway
/// restarted on its port binds while the old one's connections sit in TIME_WAIT), with a
/// backlog of [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(
    shared: &Shared,
    listener: TcpListener,
    front: Front,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut spare = std::fs::File::open("/dev/null").ok();
    let warnings = Arc::new(Warnings::default());
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => on_accept(shared, &warnings, stream, peer, front),
            Err(e) if is_fd_exhaustion(&e) => {
                // Free the spare descriptor to accept and close the waiting client, so it
                // learns now instead of hanging in the backlog.
                shared.metrics.client_connections_rejected.inc();
                warnings.rejected.warn(None, || {
                    "file descriptor limit reached; refusing new client connections".into()
                });
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

/// The checks that need no byte from the socket, then the admission task. A peer whose address
/// cannot be replaced by a PROXY header (PROXY protocol off, or a peer not listed as a source)
/// is judged by the access list here, before a single byte of it is read.
fn on_accept(
    shared: &Shared,
    warnings: &Arc<Warnings>,
    stream: TcpStream,
    peer: SocketAddr,
    front: Front,
) {
    let (trusted, allowed) = {
        let s = shared.live.settings.load();
        (
            s.trusts_proxy(peer.ip()),
            s.access.allows(peer.ip(), SystemTime::now()),
        )
    };
    if !trusted && !allowed {
        admit::deny(shared, warnings, peer, peer);
        return;
    }
    let Some(permit) = shared.clients.try_acquire() else {
        shared.metrics.client_connections_rejected.inc();
        warnings.rejected.warn(Some(peer), || {
            format!("max-clients reached; refusing new client connections (peer {peer})")
        });
        return;
    };
    tokio::spawn(admit::admit(
        shared.clone(),
        (stream, peer, front),
        permit,
        !trusted,
        warnings.clone(),
    ));
}

/// The probe behind `GET /readyz`: ready while the listener accepts, the gateway is not
/// draining, and the topology has a member selectable for writes now (a primary, a mongos, a
/// standalone, or the load balancer), per the current description, without waiting. Writes,
/// not reads, because a gateway that can only read would fail most of what clients send; a
/// replica set election makes it unready for its few seconds, which an NLB (two failed checks
/// 10 s apart) does not act on.
fn readiness(shared: &Shared, accepting: &Arc<AtomicBool>) -> metrics::http::Readiness {
    let accepting = accepting.clone();
    let draining = shared.draining.clone();
    let upstream = shared.upstream.clone();
    Arc::new(move || {
        if *draining.borrow() {
            return Err("draining".into());
        }
        if !accepting.load(Ordering::Relaxed) {
            return Err("the client listener is not accepting".into());
        }
        if upstream.select_now(Need::Write).is_none() {
            let kind = upstream.description().kind.name();
            return Err(format!(
                "no upstream member selectable for writes (topology {kind})"
            ));
        }
        Ok(())
    })
}

fn refuse(stream: TcpStream) {
    drop(stream);
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE (24): process limit; ENFILE (23): system limit.
    matches!(e.raw_os_error(), Some(23) | Some(24))
}

/// Closes idle upstream connections past their idle timeout, and aborts transactions whose
/// pinned connection has been idle past `transaction_idle_timeout` (a client frozen or gone
/// quiet in the middle of a transaction must not hold a connection of the pool for longer).
async fn reaper(shared: Shared) {
    let mut draining = shared.draining.clone();
    loop {
        let (every, txn_idle) = {
            let s = shared.live.settings.load();
            let every = (s.idle_timeout.min(s.transaction_idle_timeout) / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(5));
            (every, s.transaction_idle_timeout)
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {
                shared.upstream.reap_idle();
                if let Some(cutoff) = std::time::Instant::now().checked_sub(txn_idle) {
                    let idle = shared.routes.take_idle_transactions(cutoff);
                    if idle.transactions() > 0 {
                        tracing::info!(count = idle.transactions(), ?txn_idle, "aborting transactions idle past transaction_idle_timeout");
                        let upstream = shared.upstream.clone();
                        tokio::spawn(async move { idle.release(&upstream).await });
                    }
                }
            }
            _ = draining.changed() => return,
        }
    }
}
