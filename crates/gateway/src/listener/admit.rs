//! Admission of one accepted socket, in its own task: the PROXY protocol step (when on), then
//! the access list for addresses only known after it, the per-source limit, and the session
//! (a wire-protocol session, or an HTTP Data API connection: both doors admit alike).
//!
//! The client's effective address is computed once, here ([`admit`]), and is the only address
//! handed on: the access list, the per-source limit, the failed-login throttle (keyed by the
//! session's peer), the logs (`peer=`) and the metrics all see it. It is the socket's peer
//! unless a listed load balancer sent a PROXY header carrying another.
//!
//! Refusals are logged at most every [`WARN_EVERY`] per kind, with a count of those left out,
//! so a flood of refused connections cannot flood the log.
//!
//! The metrics listener's PROXY policy ([`metrics_proxy`]) is built here too, from the same
//! settings, so both listeners trust the same sources.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;

use crate::context::Shared;
use crate::limits::client_limit::ClientPermit;
use crate::metrics::http::ProxyPolicy;
use crate::proxy::{self, Decision, ProxyMode, Refusal};
use crate::session;

/// Least time between two warnings of one kind.
pub(super) const WARN_EVERY: Duration = Duration::from_secs(5);

/// One kind of rate-limited warning.
#[derive(Debug)]
pub(super) struct Throttle(Mutex<(Option<Instant>, u64)>, &'static str);

impl Throttle {
    /// Logs `msg()` as a warning, with the client's `address`, unless one of this kind was
    /// logged less than [`WARN_EVERY`] ago; the next logged one says how many were left out
    /// (a scan must not flood the log; the metrics count every one).
    pub(super) fn warn(&self, address: Option<SocketAddr>, msg: impl FnOnce() -> String) {
        let mut state = self.0.lock().expect("throttle lock");
        let (last, suppressed) = &mut *state;
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            let address = address.map(|a| a.to_string()).unwrap_or_default();
            tracing::warn!(event = self.1, %address, suppressed = *suppressed, "{}", msg());
            *suppressed = 0;
        } else {
            *suppressed += 1;
        }
    }
}

impl Throttle {
    /// A throttle whose lines carry `event` (the kind, for log searches).
    fn new(event: &'static str) -> Throttle {
        Throttle(Mutex::default(), event)
    }
}

impl Default for Warnings {
    fn default() -> Self {
        Warnings {
            rejected: Throttle::new("client_rejected"),
            denied: Throttle::new("access_denied"),
            proxy: Throttle::new("proxy_refused"),
        }
    }
}

/// The listener's rate-limited warnings, shared by the accept loop and admission tasks.
#[derive(Debug)]
pub(super) struct Warnings {
    /// Limits reached (max-clients, per source, descriptors).
    pub(super) rejected: Throttle,
    /// Access list.
    pub(super) denied: Throttle,
    /// PROXY protocol refusals.
    pub(super) proxy: Throttle,
}

/// Logs and counts a connection refused by the access list.
pub(super) fn deny(shared: &Shared, warnings: &Warnings, client: SocketAddr, peer: SocketAddr) {
    shared.metrics.client_connections_denied.inc();
    warnings.denied.warn(Some(client), || {
        format!(
            "connection from {client}{} refused: address not in the access list",
            via(client, peer)
        )
    });
}

/// " (via BALANCER)" when the client's address came from a PROXY header.
fn via(client: SocketAddr, peer: SocketAddr) -> String {
    match client == peer {
        true => String::new(),
        false => format!(" (via {peer})"),
    }
}

/// Admits the socket accepted from `peer` (which already holds a client permit): works out
/// the effective client address, applies the checks that need it, and serves the session.
/// `access_checked` says the accept loop already judged `peer` against the access list, which
/// it does for every peer whose address cannot change (not a listed PROXY source).
pub(super) async fn admit(
    shared: Shared,
    (mut stream, peer, front): (TcpStream, SocketAddr, super::Front),
    permit: ClientPermit,
    access_checked: bool,
    warnings: Arc<Warnings>,
) {
    let (mode, trusted, deadline) = {
        let s = shared.live.settings.load();
        (
            s.proxy_protocol,
            s.trusts_proxy(peer.ip()),
            s.handshake_timeout,
        )
    };
    let client = match mode {
        ProxyMode::Off => peer,
        _ => {
            let seen = Box::pin(proxy::read(&mut stream, trusted, deadline)).await;
            match proxy::decide(mode, trusted, peer, seen) {
                Decision::Admit(client) => client,
                Decision::Refuse(why) => return refuse_proxy(&shared, &warnings, peer, why),
            }
        }
    };
    if !access_checked
        && !shared
            .live
            .settings
            .load()
            .access
            .allows(client.ip(), SystemTime::now())
    {
        return deny(&shared, &warnings, client, peer);
    }
    let limit = shared.live.settings.load().max_connections_per_source;
    let Some(slot) = shared.sources.admit(client.ip(), limit) else {
        shared.metrics.client_connections_rejected.inc();
        warnings.rejected.warn(Some(client), || {
            format!(
                "max-connections-per-source reached; refusing a client from {client}{}",
                via(client, peer)
            )
        });
        return;
    };
    if client != peer {
        tracing::debug!(peer = %client, via = %peer, "client address from PROXY header");
    }
    match front {
        super::Front::Wire => session::run(shared, stream, client, (permit, slot)).await,
        super::Front::DataApi => {
            crate::dataapi::serve_connection(shared, stream, client, (permit, slot)).await
        }
    }
}

fn refuse_proxy(shared: &Shared, warnings: &Warnings, peer: SocketAddr, why: Refusal) {
    match why.label() {
        Some(reason) => {
            shared.metrics.count_proxy_refused(reason);
            warnings.proxy.warn(Some(peer), || {
                format!("connection from {peer} refused: {}", why.describe())
            });
        }
        None => tracing::debug!(peer = %peer, "{}", why.describe()),
    }
}

/// The metrics listener's PROXY policy: the client listener's `proxy_protocol` and
/// `proxy_protocol_sources`, read per connection (a reload applies to the next one). Its
/// refusals are logged like the client listener's, under a kind of their own, so that refused
/// checks and refused clients do not hide each other's lines. They are not counted in
/// `mongomux_client_connections_proxy_refused_total`: a health check is not a client.
pub(super) fn metrics_proxy(shared: &Shared) -> ProxyPolicy {
    let live = shared.live.clone();
    let throttle = Arc::new(Throttle::new("metrics_proxy_refused"));
    ProxyPolicy {
        trust: Arc::new(move |ip| {
            let s = live.settings.load();
            (s.proxy_protocol, s.trusts_proxy(ip))
        }),
        refused: Arc::new(move |peer, why: Refusal| {
            throttle.warn(Some(peer), || {
                format!("metrics connection from {peer} refused: {}", why.describe())
            });
        }),
    }
}
