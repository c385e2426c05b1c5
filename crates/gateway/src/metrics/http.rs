//! The metrics endpoint and the health checks: answers `GET /metrics` with the text
//! exposition, `GET /livez` with 200 whenever the event loop runs (the answer itself is the
//! proof), `GET /readyz` with 200 or 503 and a one-line reason from the gateway's readiness probe
//! ([`Readiness`]), `GET /admin/...` with the operators' JSON reports through [`AdminJson`],
//! which checks its own bearer token, and anything else with 404; one response per connection.
//! It serves until `stop` changes, which the gateway sends after its drain, so a load balancer
//! sees `/readyz` turn 503 while the gateway drains instead of a refused connection.
//!
//! A scrape is one small request, so this is a few lines over a TCP socket rather than an HTTP
//! server; the head is parsed by `httparse`. It is read into a fixed 2 KiB buffer under a
//! deadline, and at most [`MAX_SCRAPES`] exchanges run at once, so a misbehaving client holds a
//! bounded amount of memory and tasks.
//!
//! With the gateway's `proxy_protocol` on, a request may start with a PROXY header
//! ([`ProxyPolicy`]): a load balancer that sends one on every connection to its targets sends it
//! on its health checks too (an AWS NLB target group with `proxy_protocol.v2.enabled`, HAProxy's
//! `check-send-proxy`), and the check must still reach `/readyz`. The header is read by
//! [`crate::proxy`] (bounded to [`crate::proxy::MAX_HEADER`] bytes, under [`HEADER_DEADLINE`]),
//! and only a peer in `proxy_protocol_sources` may send one; from anyone else it closes the
//! connection unanswered, as on the client listener.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::Metrics;
use crate::proxy::{self, Decision, ProxyMode, Refusal};

/// Bytes of request head read at most; a scrape's head is far smaller.
const MAX_HEAD: usize = 2048;
/// Time one exchange may take, from accept to the last byte written.
const DEADLINE: Duration = Duration::from_secs(5);
/// Exchanges served at once; further connections wait in the listen backlog.
const MAX_SCRAPES: usize = 16;
/// Time for the PROXY header decision, within [`DEADLINE`]: a balancer sends the header and
/// its request at once, and a refusal for want of either is then decided (and reported) before
/// the exchange's own deadline cuts the connection silently.
const HEADER_DEADLINE: Duration = Duration::from_secs(2);

/// The readiness probe behind `GET /readyz`: `Ok` when ready, else a short plain-text reason.
/// Called once per request; it must not block.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The JSON admin endpoints (`/admin/...`): called with the path and the request's bearer
/// token, if it sent exactly one; answers a status line and a JSON body, or `None` for a path
/// that is not one of them. It does its own access control. Called once per request; it must
/// not block.
pub type AdminJson =
    Arc<dyn Fn(&str, Option<&str>) -> Option<(&'static str, String)> + Send + Sync>;

/// Who may put a PROXY header in front of a request: the gateway's own `proxy_protocol` and
/// `proxy_protocol_sources`, handed in as closures because settings are not this module's.
#[derive(Clone)]
pub struct ProxyPolicy {
    /// For a peer's address: the `proxy_protocol` mode in force and whether the peer is one of
    /// the `proxy_protocol_sources`. Asked once per connection, so a reload applies to the next
    /// one. Any mode but `off` is served as `optional` here, even where the client listener
    /// requires a header: a Prometheus server or an operator's `curl` inside the listed ranges
    /// sends none and must still be answered, while a balancer's check sends one.
    pub trust: Arc<dyn Fn(IpAddr) -> (ProxyMode, bool) + Send + Sync>,
    /// Told of every connection refused at the PROXY step except a peer that just left (the
    /// caller logs it, rate-limited). Must not block.
    pub refused: Arc<dyn Fn(SocketAddr, Refusal) + Send + Sync>,
}

impl ProxyPolicy {
    /// No PROXY protocol: every request is plain HTTP from its socket's peer.
    pub fn off() -> ProxyPolicy {
        ProxyPolicy {
            trust: Arc::new(|_| (ProxyMode::Off, false)),
            refused: Arc::new(|_, _| {}),
        }
    }
}

/// What the endpoint serves besides the metrics.
#[derive(Clone)]
pub struct Endpoints {
    /// `/readyz`.
    pub ready: Readiness,
    /// `/admin/...`.
    pub admin: AdminJson,
    /// PROXY headers in front of requests.
    pub proxy: ProxyPolicy,
}

/// Serves `GET /metrics`, `/livez`, `/readyz` and `/admin/...` until `stop` changes or its
/// sender is dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    endpoints: Endpoints,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let accepted = tokio::select! {
            a = async {
                let slot = slots.clone().acquire_owned().await;
                (listener.accept().await, slot)
            } => a,
            _ = stop.changed() => return,
        };
        let (Ok((sock, peer)), Ok(slot)) = accepted else {
            // Accept errors are transient (descriptor limit, aborted handshake): back off.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let exchange = respond(sock, peer, &metrics, &endpoints);
            let _ = tokio::time::timeout(DEADLINE, exchange).await;
            drop(slot);
        });
    }
}

/// A `GET` request head: its path (query string dropped) and its bearer token, when it sent
/// exactly one `Authorization` header and that header is a bearer token.
struct Get {
    path: String,
    bearer: Option<String>,
}

/// Parses a complete request head; anything else (another method, a partial or malformed
/// head, more headers than a scrape sends) is `None`.
fn parse_get(head: &[u8]) -> Option<Get> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) || req.method != Some("GET") {
        return None;
    }
    let path = req.path?.split('?').next()?.to_string();
    let mut auth = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("authorization"));
    let bearer = match (auth.next(), auth.next()) {
        (Some(h), None) => std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string()),
        _ => None,
    };
    Some(Get { path, bearer })
}

/// The PROXY step of one connection from `peer`: whether it may go on to its request. Only a
/// header is read off the socket; the request stays unread. The address a header carries is
/// not kept: nothing on this listener judges or logs clients by address (the admin reports
/// check a token), and a balancer's check carries its own address or none (`LOCAL`).
async fn proxy_step(
    sock: &mut TcpStream,
    peer: SocketAddr,
    policy: &ProxyPolicy,
) -> Result<(), Refusal> {
    let (mode, trusted) = (policy.trust)(peer.ip());
    if mode == ProxyMode::Off {
        return Ok(());
    }
    let seen = proxy::read(sock, trusted, HEADER_DEADLINE).await;
    match proxy::decide(ProxyMode::Optional, trusted, peer, seen) {
        Decision::Admit(_) => Ok(()),
        Decision::Refuse(why) => Err(why),
    }
}

/// Reads one request head and writes one response; a connection refused at the PROXY step is
/// closed without one.
async fn respond(mut sock: TcpStream, peer: SocketAddr, metrics: &Metrics, endpoints: &Endpoints) {
    if let Err(why) = proxy_step(&mut sock, peer, &endpoints.proxy).await {
        if why != Refusal::Closed {
            (endpoints.proxy.refused)(peer, why);
        }
        return;
    }
    let mut buf = [0u8; MAX_HEAD];
    let mut n = 0;
    while n < buf.len() {
        match sock.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let plain = "text/plain; charset=utf-8";
    let get = parse_get(&buf[..n]);
    let admin = get
        .as_ref()
        .and_then(|g| (endpoints.admin)(&g.path, g.bearer.as_deref()));
    let (status, content_type, body) = match get.as_ref().map(|g| g.path.as_str()) {
        _ if admin.is_some() => {
            let (status, body) = admin.expect("checked");
            (status, "application/json", body)
        }
        Some("/metrics") => ("200 OK", prometheus::TEXT_FORMAT, metrics.render()),
        Some("/livez") => ("200 OK", plain, "ok\n".to_string()),
        Some("/readyz") => match (endpoints.ready)() {
            Ok(()) => ("200 OK", plain, "ready\n".to_string()),
            Err(why) => (
                "503 Service Unavailable",
                plain,
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            "404 Not Found",
            plain,
            "not found; try /metrics, /livez, /readyz or /admin/status\n".to_string(),
        ),
    };
    let challenge = match status.starts_with("401") {
        true => "WWW-Authenticate: Bearer realm=\"mongomux\"\r\n",
        false => "",
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{challenge}Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
