//! The `throughput` scenario: operations per second through each proxy at a fixed concurrency,
//! and what each forwarded operation costs the proxy in CPU, in front of the benchmark-only
//! in-memory stub upstream (so the upstream is never the bottleneck).
//!
//! CPU comes from the proxy's own process accounting (`utime` and `stime` in `/proc/PID/stat`,
//! all threads), read before and after each measured round, so the load generator's and the
//! stub's work are not counted; the stub's own CPU per operation is reported beside it as the
//! price of one socket endpoint on this machine. Targets take turns in rounds, like `latency`.
//!
//! With `--callgrind`, a second gateway runs under `valgrind --tool=callgrind` and the scenario
//! counts the instructions it executes for a fixed number of operations: counters are zeroed
//! after a warm-up and dumped after the measured operations (`callgrind_control`). Instruction
//! counts, unlike times, repeat on a noisy shared machine; they cover user space only.
//!
//! What it must never do: count a round that had errors as throughput, or wait without a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Args;

use crate::load::{Endpoint, Op, Target};
use crate::null_relay::NullRelay;
use crate::procs::{Gateway, GatewayOpts, Mongobetween, UpstreamProc, UpstreamSpec};
use crate::report::{unix_time, Csv, Table};
use crate::Common;

#[derive(Args, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrent workers, one connection each.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Measured operations per target [default: 200000; 4000 with --smoke].
    #[arg(long)]
    ops: Option<u64>,
    /// Rounds the measured operations are split into; targets take turns each round.
    #[arg(long, default_value_t = 4)]
    rounds: u64,
    /// Also measure the benchmark-only null relay (the floor cost of any extra hop).
    #[arg(long)]
    null_relay: bool,
    /// A mongobetween binary to measure beside the gateway.
    #[arg(long, env = "MONGOMUX_MONGOBETWEEN")]
    mongobetween: Option<PathBuf>,
    /// Count the gateway's instructions per operation under valgrind's callgrind.
    #[arg(long)]
    callgrind: bool,
    /// Operations measured under callgrind [default: 20000; 500 with --smoke].
    #[arg(long)]
    callgrind_ops: Option<u64>,
    /// Keep the callgrind dumps in this folder, for `callgrind_annotate`.
    #[arg(long)]
    callgrind_keep: Option<PathBuf>,
}

/// CPU time a process has used, all threads, in microseconds: (user, system).
fn cpu_us(pid: u32, tick_us: f64) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')').context("bad /proc stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of proc(5), utime 14 and stime 15 → indices 11 and 12.
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime * tick_us, stime * tick_us))
}

/// Microseconds per clock tick (`getconf CLK_TCK`, 100 on Linux unless told otherwise).
fn tick_us() -> f64 {
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    1e6 / hz
}

/// One target's accumulated measurements.
struct Acc {
    name: &'static str,
    /// The proxy process whose CPU is charged to this target (`None` for direct).
    pid: Option<u32>,
    ops: u64,
    busy: Duration,
    user_us: f64,
    sys_us: f64,
    stub_us: f64,
}

impl Acc {
    fn per_op(&self, v: f64) -> f64 {
        v / self.ops.max(1) as f64
    }
}

pub async fn run(args: ThroughputArgs) -> Result<()> {
    let common = &args.common;
    let smoke = common.smoke;
    let ops = args.ops.unwrap_or(if smoke { 4_000 } else { 200_000 });
    ensure!(
        ops > 0 && args.rounds > 0 && args.concurrency > 0,
        "--ops, --rounds, --concurrency must be > 0"
    );
    let tick = tick_us();
    let stub = UpstreamProc::stub()?;
    let spec = stub.spec();
    let gw_opts = GatewayOpts {
        pool_size: common.pool_size,
        max_clients: None,
        log_level: common.gateway_log_level.clone(),
    };
    let gateway = Gateway::start(&common.gateway_bin()?, &spec, &gw_opts)?;
    let peer = match &args.mongobetween {
        Some(bin) => Some(Mongobetween::start(bin, &spec, common.pool_size).await?),
        None => None,
    };
    let relay = args
        .null_relay
        .then(|| NullRelay::start(spec.addr))
        .transpose()?;

    let conc = args.concurrency;
    let mut targets = vec![(stub.direct_target(), None)];
    targets.push((target("gateway", gateway.addr, true), Some(gateway.pid)));
    if let Some(p) = &peer {
        targets.push((target("mongobetween", p.addr, false), Some(p.pid)));
    }
    if let Some(r) = &relay {
        targets.push((target("null-relay", r.addr, true), Some(r.pid)));
    }
    let mut endpoints = Vec::new();
    let mut accs = Vec::new();
    for (t, pid) in targets {
        let mut e = Endpoint::open(t, conc as usize, 1).await?;
        let warm = e.round(Op::Find, conc, (ops / 10).max(200)).await?;
        ensure!(
            warm.errors == 0,
            "{} warm-up: {:?}",
            t.name,
            warm.first_error
        );
        endpoints.push(e);
        accs.push(Acc {
            name: t.name,
            pid,
            ops: 0,
            busy: Duration::ZERO,
            user_us: 0.0,
            sys_us: 0.0,
            stub_us: 0.0,
        });
    }
    println!(
        "throughput: find at concurrency {conc} through each target in front of the {}; \
         {ops} ops per target in {} rounds{}",
        stub.label(),
        args.rounds,
        if smoke { " [smoke]" } else { "" }
    );
    let per_round = ops.div_ceil(args.rounds);
    for i in 0..args.rounds {
        let n = endpoints.len();
        let order: Vec<usize> = (0..n).map(|k| (k + i as usize) % n).collect();
        for k in order {
            let acc = &mut accs[k];
            let before = acc.pid.map(|p| cpu_us(p, tick)).transpose()?;
            let stub_before = cpu_us(stub.pid(), tick)?;
            let r = endpoints[k].round(Op::Find, conc, per_round).await?;
            ensure!(
                r.errors == 0 && !r.timed_out,
                "{}: {} errors, first: {:?}",
                acc.name,
                r.errors,
                r.first_error
            );
            if let (Some(pid), Some((u0, s0))) = (acc.pid, before) {
                let (u1, s1) = cpu_us(pid, tick)?;
                acc.user_us += u1 - u0;
                acc.sys_us += s1 - s0;
            }
            let (su, ss) = cpu_us(stub.pid(), tick)?;
            acc.stub_us += su + ss - stub_before.0 - stub_before.1;
            acc.ops += per_round;
            acc.busy += r.elapsed;
        }
    }
    drop(endpoints);
    let run = unix_time().to_string();
    report(&accs, conc, &run, common)?;
    if args.callgrind {
        let n = args
            .callgrind_ops
            .unwrap_or(if smoke { 500 } else { 20_000 });
        callgrind(common, &spec, n, &run, args.callgrind_keep.as_deref()).await?;
    }
    Ok(())
}

fn target(name: &'static str, addr: std::net::SocketAddr, hello: bool) -> Target {
    Target {
        name,
        addr,
        login: false,
        hello,
    }
}

fn report(accs: &[Acc], conc: u32, run: &str, common: &Common) -> Result<()> {
    let mut t = Table::new(&[
        "target",
        "ops",
        "ops/s",
        "cpu_us/op",
        "user_us/op",
        "sys_us/op",
        "stub_cpu_us/op",
    ]);
    let mut csv = Csv::new(&[
        "run",
        "proxy",
        "concurrency",
        "ops",
        "seconds",
        "ops_per_s",
        "cpu_us_per_op",
        "user_us_per_op",
        "sys_us_per_op",
        "upstream_cpu_us_per_op",
    ]);
    for a in accs {
        let secs = a.busy.as_secs_f64();
        let rate = a.ops as f64 / secs.max(1e-9);
        let proxy_cell = |v: f64| match a.pid {
            Some(_) => format!("{:.2}", a.per_op(v)),
            None => String::new(),
        };
        let cells = [
            proxy_cell(a.user_us + a.sys_us),
            proxy_cell(a.user_us),
            proxy_cell(a.sys_us),
            format!("{:.2}", a.per_op(a.stub_us)),
        ];
        t.row(
            [a.name.to_string(), a.ops.to_string(), format!("{rate:.0}")]
                .into_iter()
                .chain(cells.clone())
                .collect(),
        );
        csv.row(
            [
                run.to_string(),
                a.name.to_string(),
                conc.to_string(),
                a.ops.to_string(),
                format!("{secs:.3}"),
                format!("{rate:.1}"),
            ]
            .into_iter()
            .chain(cells)
            .collect(),
        );
    }
    println!("{}", t.render());
    println!(
        "cpu = the proxy process's user + system time per forwarded operation (/proc/PID/stat); \
         stub_cpu = the stub upstream's, i.e. one socket endpoint's share"
    );
    let path = csv.write(&common.out_dir(), "throughput.csv")?;
    println!("csv: {}", path.display());
    Ok(())
}

/// A gateway under callgrind, killed on drop.
struct Valgrind {
    child: Child,
}

impl Drop for Valgrind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `callgrind_control ARGS PID` and insist it worked.
fn callgrind_control(args: &[&str], pid: u32) -> Result<()> {
    let out = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .context("run callgrind_control (part of valgrind)")?;
    ensure!(
        out.status.success(),
        "callgrind_control {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The total instruction count of a callgrind dump (its `summary:` or `totals:` line).
fn dump_total(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path)?;
    for line in text.lines() {
        if let Some(v) = line
            .strip_prefix("summary:")
            .or_else(|| line.strip_prefix("totals:"))
        {
            return Ok(v
                .split_whitespace()
                .next()
                .context("empty total")?
                .parse()?);
        }
    }
    bail!("no totals in {}", path.display())
}

/// Instructions the gateway executes per forwarded `find`, at concurrency 1 and at 16.
async fn callgrind(
    common: &Common,
    spec: &UpstreamSpec,
    n: u64,
    run: &str,
    keep: Option<&Path>,
) -> Result<()> {
    let dir = crate::procs::TempDir::new("mongomux-bench-callgrind")?;
    let log = dir.path().join("gateway.log");
    let out_file = dir.path().join("callgrind.out");
    let child = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(common.gateway_bin()?)
        .arg("serve")
        .arg("--listen=127.0.0.1:0")
        .arg(format!("--upstream=mongodb://{}/", spec.addr))
        .arg(format!("--pool-size={}", common.pool_size))
        .arg("--log-level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("spawn valgrind (install the valgrind package)")?;
    let mut vg = Valgrind { child };
    let pid = vg.child.id();
    let addr = crate::procs::wait_listening_line(&mut vg.child, &log, Duration::from_secs(120))?;
    let mut csv = Csv::new(&[
        "run",
        "proxy",
        "concurrency",
        "ops",
        "instructions",
        "instructions_per_op",
    ]);
    let mut t = Table::new(&["concurrency", "ops", "instructions", "instructions/op"]);
    for conc in [1u32, 16] {
        let mut e = Endpoint::open(target("gateway", addr, true), conc as usize, 1).await?;
        let warm = e.round(Op::Find, conc, 200).await?;
        ensure!(
            warm.errors == 0,
            "callgrind warm-up: {:?}",
            warm.first_error
        );
        callgrind_control(&["-z"], pid)?;
        let started = Instant::now();
        let r = e.round(Op::Find, conc, n).await?;
        ensure!(r.errors == 0, "callgrind round: {:?}", r.first_error);
        callgrind_control(&["-d"], pid)?;
        let keep = keep.map(|k| k.join(format!("callgrind.gateway.c{conc}.out")));
        let total = wait_dump_total(
            &out_file,
            dir.path(),
            keep.as_deref(),
            Duration::from_secs(60),
        )?;
        let per_op = total as f64 / n as f64;
        eprintln!(
            "  callgrind: {n} ops at concurrency {conc} in {:.1?}",
            started.elapsed()
        );
        t.row(vec![
            conc.to_string(),
            n.to_string(),
            total.to_string(),
            format!("{per_op:.0}"),
        ]);
        csv.row(vec![
            run.into(),
            "gateway".into(),
            conc.to_string(),
            n.to_string(),
            total.to_string(),
            format!("{per_op:.0}"),
        ]);
        drop(e);
    }
    println!("gateway instructions per forwarded find, user space, counted by callgrind:");
    println!("{}", t.render());
    let path = csv.write(&common.out_dir(), "callgrind.csv")?;
    println!("csv: {}", path.display());
    Ok(())
}

/// Wait for the newest dump callgrind writes next to `base` (`base.N` files), return its total,
/// and remove it so the next wait sees only a fresh one.
fn wait_dump_total(base: &Path, dir: &Path, keep: Option<&Path>, limit: Duration) -> Result<u64> {
    let deadline = Instant::now() + limit;
    let stem = base
        .file_name()
        .and_then(|s| s.to_str())
        .context("dump name")?
        .to_string();
    loop {
        let mut dumps: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s.starts_with(&format!("{stem}.")))
            })
            .collect();
        dumps.sort();
        if let Some(p) = dumps.pop() {
            if let Ok(total) = dump_total(&p) {
                if let Some(k) = keep {
                    std::fs::create_dir_all(k.parent().unwrap_or(Path::new(".")))?;
                    std::fs::copy(&p, k)?;
                }
                std::fs::remove_file(&p)?;
                return Ok(total);
            }
        }
        ensure!(Instant::now() < deadline, "callgrind wrote no dump");
        std::thread::sleep(Duration::from_millis(200));
    }
}
