//! Regression test for the `max_clients` reload/drain bug: a reload that changed `max_clients`
//! changed what drain waited for while admission kept the old count, so drain ended early or
//! waited for its whole deadline, and lowering the limit below the clients held underflowed
//! (a panic in debug builds).
//!
//! The gateway runs in-process. Each client sends the first 4 bytes of a message and stops:
//! a partly received request is in flight, so the session stays through the drain until its
//! client leaves.

use std::net::SocketAddr;

use std::time::{Duration, Instant};

use mongomux_gateway::reload::reload;
use mongomux_gateway::{Gateway, RawConfig, Settings, Shared};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const CLIENTS: usize = 3;
/// Far longer than any wait below, so that reaching it shows up as a failure.
const DRAIN_TIMEOUT: &str = "60s";

fn toml(max_clients: usize) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"mongodb://127.0.0.1:1\"\n\
         handshake_timeout = \"60s\"\ndrain_timeout = \"{DRAIN_TIMEOUT}\"\n\
         max_clients = {max_clients}\n"
    )
}

struct Running {
    addr: SocketAddr,
    ctx: Shared,
    shutdown: oneshot::Sender<()>,
    run: JoinHandle<()>,
}

async fn start(max_clients: usize) -> Running {
    let gw = Gateway::bind(Settings::from_toml(&toml(max_clients)).unwrap())
        .await
        .unwrap();
    let (shutdown, rx) = oneshot::channel::<()>();
    Running {
        addr: gw.local_addr(),
        ctx: gw.shared(),
        shutdown,
        run: tokio::spawn(gw.run(async {
            let _ = rx.await;
        })),
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Clients each with a partly sent request.
async fn clients_in_flight(gw: &Running) -> Vec<TcpStream> {
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&64i32.to_le_bytes()).await.unwrap();
        clients.push(s);
    }
    until("clients admitted", || gw.ctx.clients.held() == CLIENTS).await;
    // Let each session read its 4 bytes, so it counts as in flight when drain starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    clients
}

/// Whether the gateway closes a new connection at once (refused at the client limit).
async fn refused(addr: SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn reload_then_drain(before: usize, after: usize) {
    let gw = start(before).await;
    let clients = clients_in_flight(&gw).await;
    let change = reload(&gw.ctx, RawConfig::from_toml(&toml(after)).unwrap()).unwrap();
    assert_eq!(change.applied, ["max_clients"]);
    assert!(change.needs_restart.is_empty(), "{change:?}");
    assert_eq!(gw.ctx.clients.total(), after);
    if after <= CLIENTS {
        assert!(
            refused(gw.addr).await,
            "a client beyond the lowered limit was admitted"
        );
    }

    let _ = gw.shutdown.send(());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !gw.run.is_finished(),
        "drain ended while {CLIENTS} clients had requests in flight"
    );
    drop(clients);
    let left = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), gw.run)
        .await
        .expect("drain did not end once the clients left")
        .expect("the gateway task panicked");
    assert!(left.elapsed() < Duration::from_secs(5));
    assert_eq!(gw.ctx.clients.held(), 0);
}

#[tokio::test]
async fn drain_after_lowering_max_clients_below_the_clients_held() {
    reload_then_drain(8, 1).await;
}

#[tokio::test]
async fn drain_after_raising_max_clients() {
    reload_then_drain(8, 64).await;
}
