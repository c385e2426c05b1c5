//! The metrics endpoint and the health checks: answers `GET /metrics` with the text
//! exposition, `GET /livez` with 200 whenever the event loop runs (the answer itself is the
//! proof), `GET /readyz` with 200 or 503 and a one-line reason from the gateway's readiness probe
//! ([`Readiness`]), and anything else with 404; one response per connection. It serves until
//! `stop` changes, which the gateway sends after its drain, so a load balancer sees `/readyz`
//! turn 503 while the gateway drains instead of a refused connection.
//!
//! A scrape is one small request, so this is a few lines over a TCP socket rather than an HTTP
//! library: the request head is read into a fixed 2 KiB buffer under a deadline, and at most
//! [`MAX_SCRAPES`] exchanges run at once, so a misbehaving client holds a bounded amount of
//! memory and tasks.

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

/// Serves `GET /metrics`, `/livez` and `/readyz` until `stop` changes or its sender is dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Readiness,
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
        let ready = ready.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DEADLINE, respond(sock, &metrics, &ready)).await;
            drop(slot);
        });
    }
}

/// The path of a `GET` request line (query string dropped), if the head starts with one.
fn get_path(head: &[u8]) -> Option<&[u8]> {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next()?;
    let mut parts = line.split(|&b| b == b' ');
    if parts.next()? != b"GET" {
        return None;
    }
    let target = parts.next()?;
    target.split(|&b| b == b'?').next()
}

/// Reads one request head and writes one response.
async fn respond(mut sock: TcpStream, metrics: &Metrics, ready: &Readiness) {
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
    let (status, content_type, body) = match get_path(&buf[..n]) {
        Some(b"/metrics") => ("200 OK", prometheus::TEXT_FORMAT, metrics.render()),
        Some(b"/livez") => ("200 OK", plain, "ok\n".to_string()),
        Some(b"/readyz") => match ready() {
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
            "not found; try /metrics, /livez or /readyz\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
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

    fn always_ready() -> Readiness {
        Arc::new(|| Ok(()))
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
        tokio::spawn(serve(listener, Arc::new(Metrics::default()), ready, rx));
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
    fn request_lines_are_split_not_prefix_matched() {
        assert_eq!(get_path(b"GET /readyz HTTP/1.1\r\n"), Some(&b"/readyz"[..]));
        assert_eq!(
            get_path(b"GET /livez?x=1 HTTP/1.1\r\n"),
            Some(&b"/livez"[..])
        );
        assert_eq!(get_path(b"POST /readyz HTTP/1.1\r\n"), None);
        assert_eq!(get_path(b""), None);
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
