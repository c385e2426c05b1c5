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

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::Metrics;

/// Bytes of request head read at most; a scrape's head is far smaller.
const MAX_HEAD: usize = 2048;
/// Time one exchange may take, from accept to the last byte written.
const DEADLINE: Duration = Duration::from_secs(5);
/// Exchanges served at once; further connections wait in the listen backlog.
const MAX_SCRAPES: usize = 16;

/// The readiness probe behind `GET /readyz`: `Ok` when ready, else a short plain-text reason.
/// Called once per request; it must not block.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The JSON admin endpoints (`/admin/...`): called with the path and the request's bearer
/// token, if it sent exactly one; answers a status line and a JSON body, or `None` for a path
/// that is not one of them. It does its own access control. Called once per request; it must
/// not block.
pub type AdminJson =
    Arc<dyn Fn(&str, Option<&str>) -> Option<(&'static str, String)> + Send + Sync>;

/// What the endpoint serves besides the metrics.
#[derive(Clone)]
pub struct Endpoints {
    /// `/readyz`.
    pub ready: Readiness,
    /// `/admin/...`.
    pub admin: AdminJson,
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
        let (Ok((sock, _)), Ok(slot)) = accepted else {
            // Accept errors are transient (descriptor limit, aborted handshake): back off.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DEADLINE, respond(sock, &metrics, &endpoints)).await;
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

/// Reads one request head and writes one response.
async fn respond(mut sock: TcpStream, metrics: &Metrics, endpoints: &Endpoints) {
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
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    fn always_ready() -> Endpoints {
        with_ready(Arc::new(|| Ok(())))
    }

    fn with_ready(ready: Readiness) -> Endpoints {
        Endpoints {
            ready,
            admin: Arc::new(|path, bearer| {
                let section = path.strip_prefix("/admin/")?;
                Some(match bearer {
                    Some("t0k3n") => ("200 OK", format!("{{\"section\":\"{section}\"}}")),
                    _ => ("401 Unauthorized", "{}".to_string()),
                })
            }),
        }
    }

    #[tokio::test]
    async fn health_endpoints_follow_the_probe() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let probe = flag.clone();
        let ready: Readiness = Arc::new(move || match probe.load(Ordering::Relaxed) {
            true => Ok(()),
            false => Err("draining".into()),
        });
        let (_tx, rx) = watch::channel(false);
        tokio::spawn(serve(
            listener,
            Arc::new(Metrics::default()),
            with_ready(ready),
            rx,
        ));
        let live = get(addr, "/livez").await;
        assert!(live.starts_with("HTTP/1.1 200 OK\r\n"), "{live}");
        let ok = get(addr, "/readyz").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nready\n"), "{ok}");
        flag.store(false, Ordering::Relaxed);
        let not = get(addr, "/readyz?verbose=1").await;
        assert!(
            not.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{not}"
        );
        assert!(not.ends_with("\r\n\r\nnot ready: draining\n"), "{not}");
        // Liveness does not depend on readiness; other paths and methods are 404.
        assert!(get(addr, "/livez").await.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(get(addr, "/readyzz").await.starts_with("HTTP/1.1 404 "));
        assert!(get(addr, "/metricsx").await.starts_with("HTTP/1.1 404 "));
    }

    #[test]
    fn request_heads_are_parsed_not_prefix_matched() {
        let path = |head: &[u8]| parse_get(head).map(|g| g.path);
        assert_eq!(
            path(b"GET /readyz HTTP/1.1\r\n\r\n").as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            path(b"GET /livez?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").as_deref(),
            Some("/livez")
        );
        assert_eq!(path(b"POST /readyz HTTP/1.1\r\n\r\n"), None);
        assert_eq!(path(b"GET /readyz HTTP/1.1\r\n"), None, "partial head");
        assert_eq!(path(b""), None);
        let bearer = |head: &[u8]| parse_get(head).and_then(|g| g.bearer);
        assert_eq!(
            bearer(b"GET /admin/status HTTP/1.1\r\nauthorization: Bearer abc \r\n\r\n").as_deref(),
            Some("abc")
        );
        // Two Authorization headers, or another scheme, carry no token.
        assert_eq!(
            bearer(b"GET / HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n"),
            None
        );
        assert_eq!(
            bearer(b"GET / HTTP/1.1\r\nAuthorization: Basic YTpi\r\n\r\n"),
            None
        );
    }

    #[tokio::test]
    async fn admin_paths_go_to_the_admin_handler_with_the_token() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_tx, rx) = watch::channel(false);
        tokio::spawn(serve(
            listener,
            Arc::new(Metrics::default()),
            always_ready(),
            rx,
        ));
        let denied = get(addr, "/admin/status").await;
        assert!(
            denied.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "{denied}"
        );
        assert!(denied.contains("WWW-Authenticate: Bearer"), "{denied}");
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /admin/pools HTTP/1.1\r\nAuthorization: Bearer t0k3n\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Content-Type: application/json"), "{out}");
        assert!(out.ends_with("{\"section\":\"pools\"}"), "{out}");
    }

    #[tokio::test]
    async fn serves_metrics_404_and_stops_on_drain() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        metrics.count_op("find");
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, metrics, always_ready(), rx));

        let ok = get(addr, "/metrics").await;
        let (head, body) = ok.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(body.contains("mongomux_operations_total{command=\"find\"} 1\n"));

        let missing = get(addr, "/").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );

        tx.send(true).expect("send");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns on drain")
            .expect("serve task");
    }

    #[tokio::test]
    async fn oversized_head_is_answered_without_growing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_tx, rx) = watch::channel(false);
        tokio::spawn(serve(
            listener,
            Arc::new(Metrics::default()),
            always_ready(),
            rx,
        ));
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // No end of head within the limit: the reply comes after MAX_HEAD bytes.
        let junk = vec![b'x'; MAX_HEAD];
        s.write_all(&junk).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
    }
}
