//! The `fan-in` scenario: how many idle client connections a proxy folds into how few upstream
//! connections, and what each costs it in memory, up to the machine's descriptor limit.
//!
//! One FerretDB (SQLite, auth), then each proxy in turn in front of it: mongomux, and mongobetween
//! when its binary is given. Client connections are opened in steps (1,000, 5,000, 10,000, 20,000
//! by default) by [`crate::holder`] child processes, at most `--per-process` each, spread over
//! loopback source addresses so neither a process's descriptors nor a source's ephemeral ports run
//! short. At each step, measured from outside the proxy: its resident memory and open
//! descriptors, its established connections to FerretDB, and FerretDB's total; then a `find` runs
//! on a sample of the idle connections at once (more than the pool, so they queue), with
//! FerretDB's connection count sampled while it runs.
//!
//! The last default step asks for more connections than the proxy can hold: a process may have
//! at most 20,000 descriptors here. mongomux lowers its `max-clients` to fit its limit at start
//! and refuses the rest at accept; the run reports how many were refused, the gateway's log lines
//! saying so, and that the sample on the held connections still succeeds.
//!
//! What it must never do: report a count it did not reach, or measure while connections are
//! still opening.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use clap::Args;

use crate::holder::Holder;
use crate::idle_memory::seed;
use crate::observe::{established_from_pid, established_to_port, fd_count, rss_kib, MaxSampler};
use crate::procs::{Ferret, Gateway, GatewayOpts, Mongobetween};
use crate::report::{unix_time, Csv, Table};
use crate::Common;

#[derive(Args, Debug)]
pub struct FanInArgs {
    #[command(flatten)]
    common: Common,
    /// Client connection counts, ascending [default: 1000,5000,10000,20000; 100,400 with --smoke].
    #[arg(long, value_delimiter = ',')]
    clients: Option<Vec<usize>>,
    /// Most connections one holder process opens.
    #[arg(long, default_value_t = 5000)]
    per_process: usize,
    /// Loopback source addresses per holder process (each holder gets its own).
    #[arg(long, default_value_t = 8)]
    sources_per_process: u8,
    /// Idle connections that run one `find` at each step [default: 200; 20 with --smoke].
    #[arg(long)]
    sample: Option<usize>,
    /// Pause before measuring, so the proxy settles [default: 3000; 300 with --smoke].
    #[arg(long)]
    settle_ms: Option<u64>,
    /// A mongobetween binary to run the same steps against, after mongomux.
    #[arg(long, env = "MONGOMUX_MONGOBETWEEN")]
    mongobetween: Option<PathBuf>,
}

/// One proxy under test.
enum Proxy {
    Gateway(Gateway),
    Mongobetween(Mongobetween),
}

impl Proxy {
    fn name(&self) -> &'static str {
        match self {
            Proxy::Gateway(_) => "mongomux",
            Proxy::Mongobetween(_) => "mongobetween",
        }
    }
    fn pid(&self) -> u32 {
        match self {
            Proxy::Gateway(g) => g.pid,
            Proxy::Mongobetween(m) => m.pid,
        }
    }
    fn addr(&self) -> SocketAddr {
        match self {
            Proxy::Gateway(g) => g.addr,
            Proxy::Mongobetween(m) => m.addr,
        }
    }
}

/// What one step measured.
struct Step {
    requested: usize,
    held: usize,
    refused: usize,
    first_failure: Option<String>,
    open_secs: f64,
    fds: usize,
    rss_kib: u64,
    proxy_upstream: usize,
    ferret_conns: usize,
    ferret_max_ops: u64,
    sample_ok: usize,
    sample_total: usize,
    sample_error: Option<String>,
}

pub async fn run(args: FanInArgs) -> Result<()> {
    let common = &args.common;
    let smoke = common.smoke;
    let counts = args.clients.clone().unwrap_or_else(|| {
        if smoke {
            vec![100, 400]
        } else {
            vec![1000, 5000, 10_000, 20_000]
        }
    });
    ensure!(
        !counts.is_empty() && counts[0] > 0 && counts.windows(2).all(|w| w[0] < w[1]),
        "--clients must be ascending and non-zero"
    );
    ensure!(
        args.per_process > 0 && args.sources_per_process > 0,
        "--per-process and --sources-per-process must be at least 1"
    );
    let holders_needed =
        counts.last().expect("non-empty").div_ceil(args.per_process) + counts.len();
    ensure!(
        holders_needed * usize::from(args.sources_per_process) < 250,
        "too many source addresses: lower --sources-per-process or raise --per-process"
    );
    let settle = Duration::from_millis(args.settle_ms.unwrap_or(if smoke { 300 } else { 3000 }));
    let sample = args.sample.unwrap_or(if smoke { 20 } else { 200 });
    let ferret = Ferret::start(&common.ferretdb_bin()?).await?;
    seed(&ferret).await?;
    let run = unix_time().to_string();
    let mut csv = csv_header();
    println!(
        "fan-in: idle client connections through each proxy to FerretDB (SQLite, auth), pool {}, \
         clients from holder processes of at most {} connections each{}",
        common.pool_size,
        args.per_process,
        if smoke { " [smoke]" } else { "" }
    );

    let mut proxies = vec!["mongomux"];
    if args.mongobetween.is_some() {
        proxies.push("mongobetween");
    }
    for which in proxies {
        let proxy = match which {
            "mongomux" => Proxy::Gateway(Gateway::start(
                &common.gateway_bin()?,
                &ferret.spec(),
                &GatewayOpts {
                    pool_size: common.pool_size,
                    // Far above what fits: the descriptor limit is what must stop it.
                    max_clients: Some(1_000_000),
                    log_level: common.gateway_log_level.clone(),
                },
            )?),
            _ => {
                let bin = args.mongobetween.as_ref().expect("checked");
                Proxy::Mongobetween(
                    Mongobetween::start(bin, &ferret.spec(), common.pool_size).await?,
                )
            }
        };
        let steps = run_proxy(&args, &proxy, &ferret, &counts, sample, settle)?;
        print_steps(&proxy, &steps, common.pool_size);
        if let Proxy::Gateway(g) = &proxy {
            print_refusals(g);
        }
        for (i, s) in steps.iter().enumerate() {
            csv.row(csv_row(&run, proxy.name(), common.pool_size, s, i, &steps));
        }
    }
    let path = csv.write(&common.out_dir(), "fan-in.csv")?;
    println!("csv: {}", path.display());
    Ok(())
}

/// All steps against one proxy; the holders (and their connections) are closed at the end.
fn run_proxy(
    args: &FanInArgs,
    proxy: &Proxy,
    ferret: &Ferret,
    counts: &[usize],
    sample: usize,
    settle: Duration,
) -> Result<Vec<Step>> {
    let pid = proxy.pid();
    let ping = matches!(proxy, Proxy::Mongobetween(_));
    let mut holders: Vec<Holder> = Vec::new();
    let (mut requested, mut held, mut refused) = (0usize, 0usize, 0usize);
    let mut first_failure = None;
    let mut steps = Vec::new();
    for &target in counts {
        let start = Instant::now();
        while requested < target {
            let n = (target - requested).min(args.per_process);
            let first = 1 + holders.len() as u8 * args.sources_per_process;
            let h = Holder::spawn(proxy.addr(), n, first, args.sources_per_process, ping)?;
            holders.push(h);
            requested += n;
        }
        // Every new holder connects at once; collect their reports in turn.
        for h in holders.iter_mut().filter(|h| !h.reported()) {
            let r = h.wait_held()?;
            held += r.ok;
            refused += r.failed;
            first_failure = first_failure.or(r.first_error);
        }
        let open_secs = start.elapsed().as_secs_f64();
        std::thread::sleep(settle);
        let mut closed_by_proxy = 0;
        for h in holders.iter_mut() {
            closed_by_proxy += h.closed()?;
        }
        let rss = rss_kib(pid)?;
        let fds = fd_count(pid)?;
        let proxy_upstream = established_from_pid(pid, ferret.port)?;
        let ferret_conns = established_to_port(ferret.port)?;
        let port = ferret.port;
        let watch = MaxSampler::start(Duration::from_millis(50), move || established_to_port(port));
        let per = sample.div_ceil(holders.len()).max(1);
        for h in holders.iter_mut() {
            h.send(&format!("sample {per}"))?;
        }
        let (mut ok, mut total, mut sample_error) = (0, 0, None);
        for h in holders.iter_mut() {
            let s = h.read_sample()?;
            ok += s.ok;
            total += s.total;
            sample_error = sample_error.or(s.first_error);
        }
        std::thread::sleep(Duration::from_millis(100));
        let ferret_max_ops = watch.max().max(established_to_port(port)? as u64);
        drop(watch);
        eprintln!("  {}: step {target} done", proxy.name());
        steps.push(Step {
            requested,
            held: held - closed_by_proxy,
            refused: refused + closed_by_proxy,
            first_failure: first_failure.clone(),
            open_secs,
            fds,
            rss_kib: rss,
            proxy_upstream,
            ferret_conns,
            ferret_max_ops,
            sample_ok: ok,
            sample_total: total,
            sample_error,
        });
    }
    if steps.iter().all(|s| s.held == 0) {
        bail!("{}: no client connection was held", proxy.name());
    }
    Ok(steps)
}

/// KiB of resident memory per held connection between step `i` and the one before it (or the
/// first step alone, from zero connections, for i = 0 it is left out).
fn slope(steps: &[Step], i: usize) -> Option<f64> {
    let prev = steps.get(i.checked_sub(1)?)?;
    let s = &steps[i];
    let dn = s.held.checked_sub(prev.held).filter(|&d| d > 0)? as f64;
    Some((s.rss_kib as f64 - prev.rss_kib as f64) / dn)
}

fn print_steps(proxy: &Proxy, steps: &[Step], pool: u32) {
    let mut t = Table::new(&[
        "requested",
        "held",
        "refused",
        "open_s",
        "rss_MiB",
        "KiB/client",
        "fds",
        "proxy_upstream",
        "ferret_conns",
        "ferret_max_ops",
        "sample_ok",
    ]);
    for (i, s) in steps.iter().enumerate() {
        t.row(vec![
            s.requested.to_string(),
            s.held.to_string(),
            s.refused.to_string(),
            format!("{:.1}", s.open_secs),
            format!("{:.1}", s.rss_kib as f64 / 1024.0),
            slope(steps, i)
                .map(|v| format!("{v:.2}"))
                .unwrap_or_default(),
            s.fds.to_string(),
            s.proxy_upstream.to_string(),
            s.ferret_conns.to_string(),
            s.ferret_max_ops.to_string(),
            format!("{}/{}", s.sample_ok, s.sample_total),
        ]);
    }
    println!("\n{} (pool size {pool}):", proxy.name());
    println!("{}", t.render());
    for s in steps {
        if let Some(e) = &s.first_failure {
            println!("  first refused connection at {}: {e}", s.requested);
            break;
        }
    }
    for s in steps {
        if let Some(e) = &s.sample_error {
            println!("  sample error at {}: {e}", s.requested);
        }
        if s.ferret_max_ops > u64::from(pool) {
            println!(
                "  note: FerretDB saw {} connections during the sample at {} (pool {pool}; \
                 counts every client of FerretDB, including this run's seeding)",
                s.ferret_max_ops, s.requested
            );
        }
    }
}

/// The gateway's own words about refusing clients at its limit.
fn print_refusals(g: &Gateway) {
    let log = g.log_tail(10_000);
    let wanted = [
        "does not fit the file descriptor limit",
        "max-clients reached",
        "file descriptor limit reached",
    ];
    for w in wanted {
        let n = log.lines().filter(|l| l.contains(w)).count();
        if let Some(first) = log.lines().find(|l| l.contains(w)) {
            println!(
                "  gateway log ({n} line(s), rate-limited): {}",
                first.trim()
            );
        }
    }
}

fn csv_header() -> Csv {
    Csv::new(&[
        "run",
        "proxy",
        "pool_size",
        "clients_requested",
        "clients",
        "refused",
        "open_secs",
        "gateway_rss_kib",
        "kib_per_client",
        "fds",
        "upstream_conns",
        "ferret_conns",
        "ferret_conns_max_ops",
        "sample_ok",
        "sample_total",
    ])
}

fn csv_row(run: &str, proxy: &str, pool: u32, s: &Step, i: usize, steps: &[Step]) -> Vec<String> {
    vec![
        run.into(),
        proxy.into(),
        pool.to_string(),
        s.requested.to_string(),
        s.held.to_string(),
        s.refused.to_string(),
        format!("{:.2}", s.open_secs),
        s.rss_kib.to_string(),
        slope(steps, i)
            .map(|v| format!("{v:.3}"))
            .unwrap_or_default(),
        s.fds.to_string(),
        s.proxy_upstream.to_string(),
        s.ferret_conns.to_string(),
        s.ferret_max_ops.to_string(),
        s.sample_ok.to_string(),
        s.sample_total.to_string(),
    ]
}
