//! The endpoint over real sockets: health paths following the probe, request heads parsed,
//! admin paths handed to their handler, bounded heads, and PROXY headers in front of requests
//! from listed and unlisted peers.

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
        proxy: ProxyPolicy::off(),
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

/// Sends `bytes` and reads the answer; "" when the server closed (or reset) without one.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn v2(command: ppp::v2::Command, client: &str) -> Vec<u8> {
    use ppp::v2::{Builder, Protocol, Version};
    let from: SocketAddr = client.parse().expect("address");
    let to: SocketAddr = match from {
        SocketAddr::V4(_) => "10.0.0.1:9216",
        SocketAddr::V6(_) => "[fd00::1]:9216",
    }
    .parse()
    .expect("address");
    Builder::with_addresses(Version::Two | command, Protocol::Stream, (from, to))
        .build()
        .expect("header")
}

const READYZ: &[u8] = b"GET /readyz HTTP/1.1\r\nHost: gateway\r\n\r\n";

/// An endpoint whose PROXY policy says `mode` and `listed` for every peer, and the refusals
/// it reported.
async fn behind_proxy(
    mode: ProxyMode,
    listed: bool,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<Refusal>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let refusals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = refusals.clone();
    let mut endpoints = always_ready();
    endpoints.proxy = ProxyPolicy {
        trust: Arc::new(move |_| (mode, listed)),
        refused: Arc::new(move |_, why| seen.lock().expect("lock").push(why)),
    };
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        serve(listener, Arc::new(Metrics::default()), endpoints, rx).await;
        drop(tx);
    });
    (addr, refusals)
}

fn with(header: &[u8], request: &[u8]) -> Vec<u8> {
    [header, request].concat()
}

#[tokio::test]
async fn a_listed_balancer_may_put_a_header_before_its_check() {
    use ppp::v2::Command;
    // `required` on the client listener is still `optional` here: plain scrapes keep working.
    let (addr, refusals) = behind_proxy(ProxyMode::Required, true).await;
    let v1 = b"PROXY TCP4 10.0.0.9 10.0.0.1 40000 9216\r\n".as_slice();
    for (what, head) in [
        ("v2 LOCAL", v2(Command::Local, "10.0.0.9:40000")),
        ("v2 PROXY", v2(Command::Proxy, "10.0.0.9:40000")),
        ("v2 PROXY, IPv6", v2(Command::Proxy, "[fd00::9]:40000")),
        ("v1", v1.to_vec()),
        ("no header", Vec::new()),
    ] {
        let out = exchange(addr, &with(&head, READYZ)).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{what}: {out}");
        assert!(out.ends_with("\r\n\r\nready\n"), "{what}: {out}");
    }
    // The header and the request in separate segments, as a slow sender would.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = v2(Command::Proxy, "10.0.0.9:40000");
    s.write_all(&head[..7]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.write_all(&head[7..]).await.expect("write");
    s.write_all(b"GET /livez HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert!(out.ends_with("\r\n\r\nok\n"), "{out}");
    assert!(refusals.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn a_header_from_an_unlisted_peer_or_a_broken_one_is_refused() {
    use ppp::v2::Command;
    let (addr, refusals) = behind_proxy(ProxyMode::Optional, false).await;
    let forged = exchange(addr, &with(&v2(Command::Proxy, "10.0.0.9:1"), READYZ)).await;
    assert_eq!(forged, "", "a forged header got an answer");
    let v1 = exchange(addr, &with(b"PROXY TCP4 10.0.0.9 10.0.0.1 1 2\r\n", READYZ)).await;
    assert_eq!(v1, "", "a forged version 1 header got an answer");
    // The same peer without a header is served.
    let plain = exchange(addr, READYZ).await;
    assert!(plain.starts_with("HTTP/1.1 200 OK\r\n"), "{plain}");
    let untrusted = [Refusal::Untrusted, Refusal::Untrusted];
    assert_eq!(refusals.lock().expect("lock").as_slice(), untrusted);

    let (addr, refusals) = behind_proxy(ProxyMode::Optional, true).await;
    let garbage = [proxy_signature(), b"\x99\x99\x00\x04abcd".as_slice()].concat();
    assert_eq!(exchange(addr, &with(&garbage, READYZ)).await, "");
    assert_eq!(
        refusals.lock().expect("lock").as_slice(),
        [Refusal::Invalid]
    );
}

fn proxy_signature() -> &'static [u8] {
    ppp::v2::PROTOCOL_PREFIX
}

#[tokio::test]
async fn with_proxy_protocol_off_a_header_is_not_looked_for() {
    let (addr, refusals) = behind_proxy(ProxyMode::Off, true).await;
    let out = exchange(
        addr,
        &with(&v2(ppp::v2::Command::Local, "10.0.0.9:1"), READYZ),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
    assert!(refusals.lock().expect("lock").is_empty());
}
