//! The metrics endpoint: answers `GET /metrics` with the text exposition and anything else with
//! 404, one response per connection, until the gateway drains.
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

/// Serves `GET /metrics` until `shutdown` changes (the gateway starts draining).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let accepted = tokio::select! {
            a = async {
                let slot = slots.clone().acquire_owned().await;
                (listener.accept().await, slot)
            } => a,
            _ = shutdown.changed() => return,
        };
        let (Ok((sock, _)), Ok(slot)) = accepted else {
            // Accept errors are transient (descriptor limit, aborted handshake): back off.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DEADLINE, respond(sock, &metrics)).await;
            drop(slot);
        });
    }
}

/// Reads one request head and writes one response.
async fn respond(mut sock: TcpStream, metrics: &Metrics) {
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
    let (status, body) = if buf[..n].starts_with(b"GET /metrics") {
        ("200 OK", metrics.render())
    } else {
        ("404 Not Found", "not found; try /metrics\n".to_string())
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        prometheus::TEXT_FORMAT,
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_metrics_404_and_stops_on_drain() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        metrics.count_op("find");
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, metrics, rx));

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
        tokio::spawn(serve(listener, Arc::new(Metrics::default()), rx));
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // No end of head within the limit: the reply comes after MAX_HEAD bytes.
        let junk = vec![b'x'; MAX_HEAD];
        s.write_all(&junk).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
    }
}
