//! **Benchmark-only null relay**: the cheapest possible extra hop, a byte pump that opens one
//! upstream connection per client connection and copies bytes both ways without reading a single
//! header. It parses nothing, pools nothing, authenticates nothing; it exists only to measure the
//! floor any proxy pays on this machine (two more socket writes, two more reads and two more
//! thread wake-ups per round trip), so the gateway's figures can be split into that floor and its
//! own work. Never put it in front of anything but a benchmark.

use std::net::SocketAddr;
use std::process::Child;

use anyhow::{ensure, Result};
use clap::Args;
use tokio::net::{TcpListener, TcpStream};

use crate::stub_upstream::spawn_self;

#[derive(Args, Debug)]
pub struct RelayArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to relay to.
    #[arg(long)]
    upstream: SocketAddr,
}

/// `mongomux-bench null-relay`: relay until killed; prints `null-relay: listening on ADDR`.
pub async fn run(args: RelayArgs) -> Result<()> {
    ensure!(
        args.listen.ip().is_loopback() && args.upstream.ip().is_loopback(),
        "the null relay works on loopback only"
    );
    let listener = TcpListener::bind(args.listen).await?;
    println!("null-relay: listening on {}", listener.local_addr()?);
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let upstream = args.upstream;
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}

/// A running null relay, killed on drop.
pub struct NullRelay {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl NullRelay {
    pub fn start(upstream: SocketAddr) -> Result<NullRelay> {
        let up = upstream.to_string();
        let (child, addr) = spawn_self(
            &["null-relay", "--upstream", &up],
            "null-relay: listening on ",
        )?;
        Ok(NullRelay {
            pid: child.id(),
            child,
            addr,
        })
    }
}

impl Drop for NullRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
