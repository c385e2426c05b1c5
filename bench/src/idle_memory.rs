//! The `idle-memory` scenario: what an idle client connection costs the gateway, and proof that
//! the upstream sees only the pool however many clients there are.
//!
//! One FerretDB and one gateway. This process opens idle client connections to the gateway in
//! steps (e.g. 1,000 then 10,000), each a real TCP connection that completes a MongoDB handshake
//! (an OP_MSG `hello` with client metadata, answered by the gateway as a mongos) and then stays
//! silent, as a frozen Lambda's driver would. At each step it reads, from outside the gateway:
//! its resident memory (`VmRSS`), its open descriptors, the connections FerretDB has established,
//! and whether any idle client was closed; then it runs a `find` on a sample of the idle
//! connections at once (more than the pool size, so they queue for upstream connections) to show
//! they are live, watching FerretDB's connection count while they run.
//!
//! Clients are spread over loopback source addresses 127.0.0.1..127.0.0.N so ephemeral ports
//! never run short. The gateway is a separate process with its own descriptor limit; this one
//! raises its soft RLIMIT_NOFILE to the hard limit and refuses counts it cannot hold.
//!
//! What it must never do: measure memory while connections are still being opened (it waits for
//! the gateway to settle first), or report a count it did not actually reach.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bson::{doc, Bson, Document};
use clap::Args;
use futures::StreamExt as _;

use crate::observe::{
    established_from_pid, established_to_port, fd_count, raise_nofile_limit, rss_kib, MaxSampler,
};
use crate::procs::{Ferret, Gateway, GatewayOpts};
use crate::report::{unix_time, Csv, Table};
use crate::Common;
use mongomux_testkit::{is_ok, RawConn};

const DB: &str = "bench";
const COLL: &str = "idle";
/// Documents the sample operations read.
const SEED_DOCS: i64 = 100;
/// Deadline for a handshake or a sample operation.
const REPLY_DEADLINE: Duration = Duration::from_secs(30);
/// Descriptors this process needs beyond the client sockets (runtime, files).
const FD_HEADROOM: u64 = 200;

#[derive(Args, Debug)]
pub struct IdleMemoryArgs {
    #[command(flatten)]
    common: Common,
    /// Idle client counts, ascending (comma-separated) [default: 1000,10000; 50,200 with --smoke].
    #[arg(long, value_delimiter = ',')]
    clients: Option<Vec<usize>>,
    /// Spread clients over this many loopback source addresses, 127.0.0.1..127.0.0.N.
    #[arg(long, default_value_t = 8)]
    source_addrs: u8,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Idle connections that each run one `find` at every step [default: 100; 20 with --smoke].
    #[arg(long)]
    sample: Option<usize>,
    /// Pause before reading memory, so the gateway settles [default: 2000; 300 with --smoke].
    #[arg(long)]
    settle_ms: Option<u64>,
}

/// What one step measured.
struct Step {
    clients: usize,
    failed: usize,
    first_failure: Option<String>,
    open_secs: f64,
    closed_by_gateway: usize,
    gw_fds: usize,
    rss_kib: u64,
    rss_after_ops_kib: u64,
    ferret_conns: usize,
    gw_upstream: usize,
    ferret_conns_max_ops: u64,
    sample_ok: usize,
    sample_total: usize,
    sample_secs: f64,
    sample_error: Option<String>,
}

pub async fn run(args: IdleMemoryArgs) -> Result<()> {
    let smoke = args.common.smoke;
    let counts = args.clients.clone().unwrap_or_else(|| {
        if smoke {
            vec![50, 200]
        } else {
            vec![1000, 10_000]
        }
    });
    let sample = args.sample.unwrap_or(if smoke { 20 } else { 100 });
    let settle = Duration::from_millis(args.settle_ms.unwrap_or(if smoke { 300 } else { 2000 }));
    if counts.is_empty() || counts.windows(2).any(|w| w[0] >= w[1]) || counts[0] == 0 {
        bail!("--clients must be ascending and non-zero");
    }
    if args.source_addrs == 0 || args.connect_concurrency == 0 {
        bail!("--source-addrs and --connect-concurrency must be at least 1");
    }
    let max = *counts.last().expect("checked non-empty");
    let limit = raise_nofile_limit()?;
    if max as u64 + FD_HEADROOM > limit {
        bail!(
            "{max} clients need about {} descriptors; this process may hold {limit}",
            max as u64 + FD_HEADROOM
        );
    }

    let common = &args.common;
    let ferret = Ferret::start(&common.ferretdb_bin()?).await?;
    let opts = GatewayOpts {
        pool_size: common.pool_size,
        max_clients: Some(u32::try_from(max + 64)?),
        log_level: common.gateway_log_level.clone(),
    };
    let mut gateway = Gateway::start(&common.gateway_bin()?, &ferret.spec(), &opts)?;
    seed(&ferret).await?;
    println!(
        "idle-memory: mongomux (pool {}) in front of FerretDB; clients over {} loopback source \
         address(es); RSS read {} ms after the last client connected{}",
        common.pool_size,
        args.source_addrs,
        settle.as_millis(),
        if smoke { " [smoke]" } else { "" }
    );

    // Baseline: one client has come and gone, so the pool and the handshake cache are warm.
    let mut probe = open_one(&gateway, None).await?;
    let (ok, err) = sample_ops(std::slice::from_mut(&mut probe).iter_mut().collect()).await;
    if ok != 1 {
        bail!(
            "a find through the gateway failed: {}",
            err.unwrap_or_default()
        );
    }
    drop(probe);
    tokio::time::sleep(settle).await;
    let baseline_rss = rss_kib(gateway.pid)?;
    let baseline_fds = fd_count(gateway.pid)?;

    let mut conns: Vec<RawConn> = Vec::with_capacity(max);
    let mut steps = Vec::new();
    for &target in &counts {
        let step = run_step(&args, &gateway, &ferret, &mut conns, target, sample, settle).await?;
        gateway.check_alive()?;
        eprintln!("  done: {target} idle clients");
        steps.push(step);
    }
    print_steps(&steps, baseline_rss, baseline_fds, common.pool_size);
    let path =
        csv(&steps, baseline_rss, common.pool_size).write(&common.out_dir(), "idle-memory.csv")?;
    println!("csv: {}", path.display());
    if steps
        .iter()
        .any(|s| s.failed > 0 || s.sample_ok < s.sample_total || s.closed_by_gateway > 0)
    {
        println!("gateway log tail:\n{}", gateway.log_tail(20));
    }
    drop(conns);
    Ok(())
}

/// Seed the documents the sample operations read, straight to FerretDB.
pub async fn seed(ferret: &Ferret) -> Result<()> {
    let mut conn = ferret.connect(REPLY_DEADLINE).await?;
    let docs: Vec<Document> = (0..SEED_DOCS).map(|i| doc! {"_id": i, "v": i}).collect();
    for cmd in [
        doc! {"dropDatabase": 1, "$db": DB},
        doc! {"insert": COLL, "documents": docs, "$db": DB},
    ] {
        let reply = conn.command(&cmd, REPLY_DEADLINE).await?;
        if !is_ok(&reply) || reply.contains_key("writeErrors") {
            bail!("seeding failed: {reply}");
        }
    }
    // Dropping the connection closes it, so FerretDB's count below is the gateway's alone.
    Ok(())
}

/// Connect one client to the gateway and complete its handshake, as a mongos would answer it.
async fn open_one(gateway: &Gateway, source: Option<IpAddr>) -> Result<RawConn> {
    let (conn, reply) = RawConn::handshake(gateway.addr, source, REPLY_DEADLINE).await?;
    if reply.get_str("msg").ok() != Some("isdbgrid") {
        bail!("unexpected hello reply: {reply}");
    }
    Ok(conn)
}

/// Source address for the `i`th client: 127.0.0.(1 + i mod n), or the default for n = 1.
pub fn source_for(i: usize, n: u8) -> Option<IpAddr> {
    (n > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(n)) as u8)))
}

/// Open clients up to `target`, let the gateway settle, measure, then exercise a sample.
async fn run_step(
    args: &IdleMemoryArgs,
    gateway: &Gateway,
    ferret: &Ferret,
    conns: &mut Vec<RawConn>,
    target: usize,
    sample: usize,
    settle: Duration,
) -> Result<Step> {
    let start = Instant::now();
    let first = conns.len();
    let mut opened = futures::stream::iter(first..target)
        .map(|i| open_one(gateway, source_for(i, args.source_addrs)))
        .buffer_unordered(args.connect_concurrency);
    let (mut failed, mut first_failure) = (0, None);
    while let Some(r) = opened.next().await {
        match r {
            Ok(c) => conns.push(c),
            Err(e) => {
                failed += 1;
                first_failure = first_failure.or(Some(format!("{e:#}")));
            }
        }
    }
    drop(opened);
    let open_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;

    let pid = gateway.pid;
    let closed_by_gateway = conns.iter().filter(|c| c.peer_closed()).count();
    let rss = rss_kib(pid)?;
    let gw_fds = fd_count(pid)?;
    let ferret_conns = established_to_port(ferret.port)?;
    let gw_upstream = established_from_pid(pid, ferret.port)?;

    // Exercise a sample spread evenly over all idle connections, all at once.
    let port = ferret.port;
    let watch = MaxSampler::start(Duration::from_millis(50), move || established_to_port(port));
    let stride = (conns.len() / sample.max(1)).max(1);
    let picked: Vec<&mut RawConn> = conns.iter_mut().step_by(stride).take(sample).collect();
    let sample_total = picked.len();
    let t0 = Instant::now();
    let (sample_ok, sample_error) = sample_ops(picked).await;
    let sample_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ferret_conns_max_ops = watch.max().max(established_to_port(port)? as u64);
    drop(watch);
    let rss_after_ops_kib = rss_kib(pid)?;
    Ok(Step {
        clients: conns.len(),
        failed,
        first_failure,
        open_secs,
        closed_by_gateway,
        gw_fds,
        rss_kib: rss,
        rss_after_ops_kib,
        ferret_conns,
        gw_upstream,
        ferret_conns_max_ops,
        sample_ok,
        sample_total,
        sample_secs,
        sample_error,
    })
}

/// One `find` by `_id` on each connection, concurrently; returns the successes and first error.
pub async fn sample_ops(picked: Vec<&mut RawConn>) -> (usize, Option<String>) {
    let ops = picked.into_iter().enumerate().map(|(i, c)| async move {
        let id = i as i64 % SEED_DOCS;
        let cmd = doc! {"find": COLL, "filter": {"_id": id}, "$db": DB};
        let reply = c.command(&cmd, REPLY_DEADLINE).await?;
        let batch = reply
            .get_document("cursor")
            .and_then(|cur| cur.get_array("firstBatch"))
            .with_context(|| format!("find reply without a batch: {reply}"))?;
        match batch.first() {
            Some(Bson::Document(d)) if d.get_i64("_id").ok() == Some(id) => Ok(()),
            _ => bail!("find _id {id} returned {batch:?}"),
        }
    });
    let results: Vec<Result<()>> = futures::future::join_all(ops).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let first_error = results
        .into_iter()
        .find_map(|r| r.err())
        .map(|e| format!("{e:#}"));
    (ok, first_error)
}

/// Bytes per client between two points, from RSS in KiB.
fn per_client(rss_to: u64, rss_from: u64, n_to: usize, n_from: usize) -> f64 {
    let dn = n_to.saturating_sub(n_from).max(1) as f64;
    (rss_to as f64 - rss_from as f64) * 1024.0 / dn
}

fn print_steps(steps: &[Step], baseline_rss: u64, baseline_fds: usize, pool: u32) {
    let mut t = Table::new(&[
        "clients",
        "failed",
        "open_s",
        "closed",
        "gw_fds",
        "rss_kib",
        "B/client",
        "slope_B/client",
        "rss_after_ops_kib",
        "ferret_conns",
        "gw_upstream",
        "ferret_max_ops",
        "sample_ok",
        "sample_ms",
    ]);
    t.row(vec![
        "0".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        baseline_fds.to_string(),
        baseline_rss.to_string(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    let mut prev = (baseline_rss, 0usize);
    for s in steps {
        t.row(vec![
            s.clients.to_string(),
            s.failed.to_string(),
            format!("{:.2}", s.open_secs),
            s.closed_by_gateway.to_string(),
            s.gw_fds.to_string(),
            s.rss_kib.to_string(),
            format!("{:.0}", per_client(s.rss_kib, baseline_rss, s.clients, 0)),
            format!("{:.0}", per_client(s.rss_kib, prev.0, s.clients, prev.1)),
            s.rss_after_ops_kib.to_string(),
            s.ferret_conns.to_string(),
            s.gw_upstream.to_string(),
            s.ferret_conns_max_ops.to_string(),
            format!("{}/{}", s.sample_ok, s.sample_total),
            format!("{:.1}", s.sample_secs * 1000.0),
        ]);
        prev = (s.rss_kib, s.clients);
    }
    println!("{}", t.render());
    if let (Some(a), Some(b)) = (steps.first(), steps.last()) {
        if b.clients > a.clients {
            let slope = per_client(b.rss_kib, a.rss_kib, b.clients, a.clients);
            println!(
                "gateway RSS per idle client, slope {} -> {} clients: {:.0} bytes ({:.2} KiB)",
                a.clients,
                b.clients,
                slope,
                slope / 1024.0
            );
        }
    }
    for s in steps {
        if let Some(e) = &s.first_failure {
            println!(
                "at {} clients, {} failed to connect; first: {e}",
                s.clients, s.failed
            );
        }
        if let Some(e) = &s.sample_error {
            println!("at {} clients, a sample operation failed: {e}", s.clients);
        }
        let seen = s.ferret_conns_max_ops.max(s.ferret_conns as u64);
        if seen > u64::from(pool) {
            println!(
                "MISBEHAVIOUR: FerretDB saw {seen} connections at {} clients (pool size {pool})",
                s.clients
            );
        }
    }
}

fn csv(steps: &[Step], baseline_rss: u64, pool: u32) -> Csv {
    let mut csv = Csv::new(&[
        "run",
        "pool_size",
        "clients",
        "failed",
        "open_s",
        "closed_by_gateway",
        "gw_fds",
        "rss_kib",
        "baseline_rss_kib",
        "bytes_per_client",
        "rss_after_ops_kib",
        "ferret_conns",
        "gw_upstream",
        "ferret_conns_max_ops",
        "sample_ok",
        "sample_total",
    ]);
    let run = unix_time().to_string();
    for s in steps {
        csv.row(vec![
            run.clone(),
            pool.to_string(),
            s.clients.to_string(),
            s.failed.to_string(),
            format!("{:.3}", s.open_secs),
            s.closed_by_gateway.to_string(),
            s.gw_fds.to_string(),
            s.rss_kib.to_string(),
            baseline_rss.to_string(),
            format!("{:.0}", per_client(s.rss_kib, baseline_rss, s.clients, 0)),
            s.rss_after_ops_kib.to_string(),
            s.ferret_conns.to_string(),
            s.gw_upstream.to_string(),
            s.ferret_conns_max_ops.to_string(),
            s.sample_ok.to_string(),
            s.sample_total.to_string(),
        ]);
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_sources_over_loopback_addresses() {
        assert_eq!(source_for(5, 1), None);
        assert_eq!(
            source_for(0, 4),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)))
        );
        assert_eq!(
            source_for(7, 4),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)))
        );
    }

    #[test]
    fn per_client_is_bytes_over_the_step() {
        assert_eq!(per_client(2000, 1000, 1000, 0), 1024.0);
        assert_eq!(per_client(1000, 2000, 10, 0), -102_400.0);
    }
}
