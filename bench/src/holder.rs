//! `mongomux-bench hold-clients`: a child process of the `fan-in` scenario that opens and holds
//! idle client connections, so the client side of a 20,000-connection run is spread over several
//! processes (one process may hold at most 20,000 descriptors on these machines, the gateway
//! included, so no single client process can face it alone).
//!
//! It talks to its parent in lines. It prints `held OK FAILED SECS FIRST_ERROR` once its
//! connections are open, then answers commands read from stdin: `sample K` runs a `find` on K of
//! its connections at once (`sample OK K SECS FIRST_ERROR`), `closed` counts connections the
//! server has closed (`closed N`), `quit` (or end of input) exits, which closes them all.
//!
//! What it must never do: report a connection as held that did not complete its opening command.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use bson::doc;
use clap::Args;
use futures::StreamExt as _;
use std::io::{BufRead, BufReader, Write};
use tokio::io::AsyncBufReadExt;

use crate::idle_memory::sample_ops;
use crate::observe::raise_nofile_limit;
use mongomux_testkit::{is_ok, RawConn};

const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct HoldArgs {
    /// The proxy to connect to.
    #[arg(long)]
    target: SocketAddr,
    /// Connections to open and hold.
    #[arg(long)]
    count: usize,
    /// Source addresses used: 127.0.0.FIRST .. 127.0.0.(FIRST+N-1), round robin.
    #[arg(long, default_value_t = 1)]
    first_source: u8,
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Open with `ping` instead of a driver's `hello` (for mongobetween, which forwards `hello`
    /// to an upstream connection that refuses client metadata twice).
    #[arg(long)]
    ping: bool,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
}

async fn open_one(args: &HoldArgs, i: usize) -> Result<RawConn> {
    let octet = u16::from(args.first_source) + (i % usize::from(args.sources.max(1))) as u16;
    ensure!(octet <= 254, "source address 127.0.0.{octet} out of range");
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet as u8));
    if args.ping {
        let mut c = tokio::time::timeout(DEADLINE, RawConn::connect(args.target, Some(source)))
            .await
            .context("connect: no answer")??;
        let reply = c
            .command(&doc! {"ping": 1, "$db": "admin"}, DEADLINE)
            .await?;
        ensure!(is_ok(&reply), "ping failed: {reply}");
        Ok(c)
    } else {
        Ok(RawConn::handshake(args.target, Some(source), DEADLINE)
            .await?
            .0)
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

pub async fn run(args: HoldArgs) -> Result<()> {
    let limit = raise_nofile_limit()?;
    ensure!(
        args.count as u64 + 100 <= limit,
        "{} connections do not fit this process's descriptor limit {limit}",
        args.count
    );
    let start = Instant::now();
    let mut conns = Vec::with_capacity(args.count);
    let (mut failed, mut first) = (0usize, None::<String>);
    let mut opened = futures::stream::iter(0..args.count)
        .map(|i| open_one(&args, i))
        .buffer_unordered(args.connect_concurrency.max(1));
    while let Some(r) = opened.next().await {
        match r {
            Ok(c) => conns.push(c),
            Err(e) => {
                failed += 1;
                first = first.or(Some(format!("{e:#}")));
            }
        }
    }
    drop(opened);
    println!(
        "held {} {failed} {:.3} {}",
        conns.len(),
        start.elapsed().as_secs_f64(),
        one_line(first.as_deref().unwrap_or("-"))
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("sample"), Some(k)) => {
                let k: usize = k.parse().context("sample count")?;
                let stride = (conns.len() / k.max(1)).max(1);
                let picked: Vec<&mut RawConn> = conns.iter_mut().step_by(stride).take(k).collect();
                let total = picked.len();
                let t0 = Instant::now();
                let (ok, err) = sample_ops(picked).await;
                println!(
                    "sample {ok} {total} {:.3} {}",
                    t0.elapsed().as_secs_f64(),
                    one_line(err.as_deref().unwrap_or("-"))
                );
            }
            (Some("closed"), _) => {
                println!(
                    "closed {}",
                    conns.iter().filter(|c| c.peer_closed()).count()
                )
            }
            (Some("quit"), _) => break,
            _ => println!("error unknown command: {}", one_line(&line)),
        }
    }
    Ok(())
}

/// The parent's handle on one holder process; killed on drop.
pub struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    reported: bool,
}

/// What a holder reported after opening its connections.
pub struct Held {
    pub ok: usize,
    pub failed: usize,
    pub first_error: Option<String>,
}

/// What a holder reported for a sample.
pub struct Sampled {
    pub ok: usize,
    pub total: usize,
    pub first_error: Option<String>,
}

fn rest_to_error(rest: &[&str]) -> Option<String> {
    let s = rest.join(" ");
    (s != "-" && !s.is_empty()).then_some(s)
}

impl Holder {
    /// Start a holder; it begins connecting at once.
    pub fn spawn(
        target: SocketAddr,
        count: usize,
        first_source: u8,
        sources: u8,
        ping: bool,
    ) -> Result<Holder> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("hold-clients")
            .arg(format!("--target={target}"))
            .arg(format!("--count={count}"))
            .arg(format!("--first-source={first_source}"))
            .arg(format!("--sources={sources}"));
        if ping {
            cmd.arg("--ping");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn hold-clients")?;
        let stdin = child.stdin.take().context("holder stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("holder stdout")?);
        Ok(Holder {
            child,
            stdin,
            stdout,
            reported: false,
        })
    }

    /// The next line the holder prints, split into words, expecting `word` first. Blocking: the
    /// holder applies its own deadlines to every connection and operation.
    fn expect(&mut self, word: &str) -> Result<Vec<String>> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("hold-clients exited ({status}) before answering `{word}`");
        }
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        ensure!(
            words.first().map(String::as_str) == Some(word),
            "hold-clients said {line:?}, expected `{word} ...`"
        );
        Ok(words)
    }

    /// Whether [`Holder::wait_held`] has returned its report already.
    pub fn reported(&self) -> bool {
        self.reported
    }

    pub fn wait_held(&mut self) -> Result<Held> {
        let w = self.expect("held")?;
        self.reported = true;
        ensure!(w.len() >= 4, "short `held` line");
        let rest: Vec<&str> = w[4..].iter().map(String::as_str).collect();
        Ok(Held {
            ok: w[1].parse()?,
            failed: w[2].parse()?,
            first_error: rest_to_error(&rest),
        })
    }

    pub fn send(&mut self, command: &str) -> Result<()> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        Ok(())
    }

    pub fn read_sample(&mut self) -> Result<Sampled> {
        let w = self.expect("sample")?;
        ensure!(w.len() >= 4, "short `sample` line");
        let rest: Vec<&str> = w[4..].iter().map(String::as_str).collect();
        Ok(Sampled {
            ok: w[1].parse()?,
            total: w[2].parse()?,
            first_error: rest_to_error(&rest),
        })
    }

    pub fn closed(&mut self) -> Result<usize> {
        self.send("closed")?;
        Ok(self.expect("closed")?[1].parse()?)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.send("quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
