//! The `latency` scenario: what the extra hop costs a single-document operation.
//!
//! One upstream, either FerretDB (SQLite, authentication on: the end-to-end figure) or the
//! benchmark-only in-memory stub of [`crate::stub_upstream`] (the gateway's own cost, no longer
//! hidden behind FerretDB's ~0.8 ms), with the gateway in front of it and, when a binary is given,
//! the peer proxy mongobetween beside it. A `find` by `_id` over a seeded collection (as a
//! driver's `find_one` sends it: `limit: 1, singleBatch: true`) and a one-document `insert` run at
//! each concurrency level against every target: the upstream directly (logged in with
//! SCRAM-SHA-256 when it has auth), the gateway and the peer (no credentials: they hold the
//! upstream's). The targets take turns in short rounds, the order rotating and reversing from
//! round to round, so drift on a shared, noisy machine (other builds, SQLite growth, CPU
//! frequency) hits all equally. Each level starts with an unrecorded warm-up per target.
//!
//! Every target is driven by the same client ([`crate::load`]), so the only difference between
//! them is the hop. The official Rust driver is not used because it cannot log in to FerretDB
//! v1.24 directly (see [`crate::scram`]); a client identical on every side is the fairer measure
//! anyway. The upstream connections each proxy process holds are counted from `/proc` after every
//! round; more than the pool size is reported as misbehaviour.
//!
//! What it must never do: hide an error or a hang. Every operation has a deadline; errors are
//! counted and the first ones printed; a timeout stops the run with the gateway's log tail.

use std::path::PathBuf;

use anyhow::{bail, ensure, Result};
use bson::{doc, Document};
use clap::{Args, ValueEnum};

use crate::load::{
    doc_id, Endpoint, Op, Round, Tally, Target, CONNECT_DEADLINE, DB, FIND_COLL, OP_DEADLINE,
};
use crate::null_relay::NullRelay;
use crate::observe::{established_from_pid, established_to_port};
use crate::procs::{Gateway, GatewayOpts, Mongobetween, UpstreamProc};
use crate::report::{signed, unix_time, us, Csv, Summary, Table};
use crate::Common;
use mongomux_testkit::is_ok;

/// Which upstream the targets sit in front of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UpstreamKind {
    /// FerretDB v1.24 on SQLite with SCRAM: the end-to-end figure.
    Ferretdb,
    /// The benchmark-only in-memory stub: the proxies' own cost.
    Stub,
}

#[derive(Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrency levels (comma-separated) [default: 1,16,64,256; 1,4 with --smoke].
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<u32>>,
    /// Measured operations per operation kind, level and target [default: 10000; 200 with --smoke].
    #[arg(long)]
    ops: Option<u64>,
    /// Operations per round; the targets alternate every round [default: 500; 50 with --smoke].
    #[arg(long)]
    round_ops: Option<u64>,
    /// Documents seeded for `find` [default: 100; 20 with --smoke]. FerretDB v1.24 on SQLite has
    /// no index behind a find by `_id`: its cost grows with the collection (with string ids, as
    /// here, it filters inside SQLite; integer ids are filtered in Go, about 30 ms per find at
    /// 1,000 documents), so a small collection keeps its share from drowning the hop measured.
    #[arg(long)]
    docs: Option<u64>,
    /// Operation kinds to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "find,insert")]
    op: Vec<Op>,
    /// The upstream behind every target.
    #[arg(long, value_enum, default_value = "ferretdb")]
    upstream: UpstreamKind,
    /// Also measure the benchmark-only null relay (a byte pump: the floor cost of any extra hop).
    #[arg(long)]
    null_relay: bool,
    /// A mongobetween binary to measure beside the gateway, in front of the same upstream.
    #[arg(long, env = "MONGOMUX_MONGOBETWEEN")]
    mongobetween: Option<PathBuf>,
}

/// The settings of one run, after smoke defaults are applied.
struct Plan {
    levels: Vec<u32>,
    ops: u64,
    round_ops: u64,
    docs: u64,
    kinds: Vec<Op>,
    smoke: bool,
}

impl LatencyArgs {
    fn plan(&self) -> Result<Plan> {
        let smoke = self.common.smoke;
        let pick =
            |v: Option<u64>, full: u64, small: u64| v.unwrap_or(if smoke { small } else { full });
        let levels = self.concurrency.clone().unwrap_or_else(|| {
            if smoke {
                vec![1, 4]
            } else {
                vec![1, 16, 64, 256]
            }
        });
        let plan = Plan {
            levels,
            ops: pick(self.ops, 10_000, 200),
            round_ops: pick(self.round_ops, 500, 50),
            docs: pick(self.docs, 100, 20),
            kinds: self.op.clone(),
            smoke,
        };
        if plan.levels.is_empty() || plan.levels.contains(&0) {
            bail!("--concurrency needs levels of at least 1");
        }
        if plan.ops == 0 || plan.round_ops == 0 || plan.docs == 0 || plan.kinds.is_empty() {
            bail!("--ops, --round-ops, --docs and --op must be non-zero");
        }
        Ok(plan)
    }
}

/// Results of one (operation, level): a summary per target, in target order, and the
/// connections seen.
struct LevelResult {
    op: Op,
    conc: u32,
    summaries: Vec<(&'static str, Summary)>,
    /// Upstream connections held by each proxy (gateway, then peer), most seen after any round.
    proxy_upstream_max: Vec<(&'static str, u64)>,
    upstream_conns_max: u64,
}

pub async fn run(args: LatencyArgs) -> Result<()> {
    let plan = args.plan()?;
    let common = &args.common;
    let upstream = match args.upstream {
        UpstreamKind::Ferretdb => UpstreamProc::ferret(&common.ferretdb_bin()?).await?,
        UpstreamKind::Stub => UpstreamProc::stub()?,
    };
    let gw_opts = GatewayOpts {
        pool_size: common.pool_size,
        max_clients: None,
        log_level: common.gateway_log_level.clone(),
    };
    let mut gateway = Gateway::start(&common.gateway_bin()?, &upstream.spec(), &gw_opts)?;
    let peer = match &args.mongobetween {
        Some(bin) => Some(Mongobetween::start(bin, &upstream.spec(), common.pool_size).await?),
        None => None,
    };
    seed(&upstream, plan.docs).await?;
    let mut targets = vec![
        upstream.direct_target(),
        Target {
            name: "gateway",
            addr: gateway.addr,
            login: false,
            hello: true,
        },
    ];
    let mut proxies = vec![("gateway", gateway.pid)];
    if let Some(p) = &peer {
        targets.push(Target {
            name: "mongobetween",
            addr: p.addr,
            login: false,
            hello: false,
        });
        proxies.push(("mongobetween", p.pid));
    }
    let relay = match args.null_relay {
        true => Some(NullRelay::start(upstream.spec().addr)?),
        false => None,
    };
    if let Some(r) = &relay {
        // The relay passes the direct client's login through to the upstream.
        targets.push(Target {
            name: "null-relay",
            addr: r.addr,
            ..upstream.direct_target()
        });
    }
    let max_conc = *plan.levels.iter().max().expect("levels checked non-empty") as usize;
    let mut endpoints = Vec::new();
    for t in targets {
        endpoints.push(Endpoint::open(t, max_conc, plan.docs).await?);
    }
    println!(
        "latency: {} direct vs through mongomux (pool {}){}; {} ops per op/level/target in \
         interleaved rounds of {}; one connection per worker{}",
        upstream.label(),
        common.pool_size,
        if peer.is_some() {
            " vs through mongobetween (same pool size)"
        } else {
            ""
        },
        plan.ops,
        plan.round_ops,
        if plan.smoke { " [smoke]" } else { "" }
    );

    let mut results = Vec::new();
    let mut first_errors = Vec::new();
    for &conc in &plan.levels {
        for &op in &plan.kinds {
            let mut watch = ConnWatch::new(&proxies, upstream.port());
            let summaries = measure_level(
                &plan,
                op,
                conc,
                &mut endpoints,
                &mut watch,
                &mut first_errors,
            )
            .await
            .map_err(|e| e.context(format!("gateway log tail:\n{}", gateway.log_tail(30))))?;
            gateway.check_alive()?;
            results.push(LevelResult {
                op,
                conc,
                summaries,
                proxy_upstream_max: watch.proxy_max.clone(),
                upstream_conns_max: watch.upstream_max,
            });
            eprintln!("  done: {} at concurrency {conc}", op.name());
        }
    }
    print_results(&results, common.pool_size, &first_errors);
    let name = match args.upstream {
        UpstreamKind::Ferretdb => "latency.csv",
        UpstreamKind::Stub => "latency-stub.csv",
    };
    let path = csv(&results, common.pool_size, upstream.label()).write(&common.out_dir(), name)?;
    println!("csv: {}", path.display());
    if !first_errors.is_empty() {
        println!("gateway log tail:\n{}", gateway.log_tail(20));
    }
    Ok(())
}

/// Seed the documents `find` reads (ids 0..docs), straight to the upstream (the stub stores
/// nothing and answers every find with one document, so it needs none).
pub(crate) async fn seed(upstream: &UpstreamProc, docs: u64) -> Result<()> {
    let Some(mut conn) = upstream.seed_conn(CONNECT_DEADLINE).await? else {
        return Ok(());
    };
    let drop = conn
        .command(&doc! {"dropDatabase": 1, "$db": DB}, OP_DEADLINE)
        .await?;
    ensure!(is_ok(&drop), "dropDatabase: {drop}");
    let ids: Vec<u64> = (0..docs).collect();
    for chunk in ids.chunks(1000) {
        let batch: Vec<Document> = chunk
            .iter()
            .map(|&i| doc! {"_id": doc_id(i), "n": i as i64, "pad": "y".repeat(64)})
            .collect();
        let cmd = doc! {"insert": FIND_COLL, "documents": batch, "$db": DB};
        let reply = conn.command(&cmd, OP_DEADLINE).await?;
        ensure!(
            is_ok(&reply) && !reply.contains_key("writeErrors"),
            "seed insert: {reply}"
        );
    }
    Ok(())
}

/// Counts connections to the upstream between rounds, outside the timed sections: reading
/// `/proc/net/tcp` costs CPU the measured processes would otherwise have. Pooled connections live
/// far longer than a round, so one sample per round sees any a proxy holds beyond its pool.
struct ConnWatch {
    proxies: Vec<(&'static str, u32)>,
    upstream_port: u16,
    proxy_max: Vec<(&'static str, u64)>,
    upstream_max: u64,
}

impl ConnWatch {
    fn new(proxies: &[(&'static str, u32)], upstream_port: u16) -> ConnWatch {
        ConnWatch {
            proxies: proxies.to_vec(),
            upstream_port,
            proxy_max: proxies.iter().map(|&(n, _)| (n, 0)).collect(),
            upstream_max: 0,
        }
    }

    fn sample(&mut self) -> Result<()> {
        for (i, &(_, pid)) in self.proxies.iter().enumerate() {
            let n = established_from_pid(pid, self.upstream_port)? as u64;
            self.proxy_max[i].1 = self.proxy_max[i].1.max(n);
        }
        let all = established_to_port(self.upstream_port)? as u64;
        self.upstream_max = self.upstream_max.max(all);
        Ok(())
    }
}

/// Warm up every target, then let them take turns in measured rounds.
async fn measure_level(
    plan: &Plan,
    op: Op,
    conc: u32,
    endpoints: &mut [Endpoint],
    watch: &mut ConnWatch,
    first_errors: &mut Vec<String>,
) -> Result<Vec<(&'static str, Summary)>> {
    let warm = if plan.smoke {
        u64::from(conc) * 5
    } else {
        (u64::from(conc) * 50).max(500)
    };
    for e in endpoints.iter_mut() {
        let r = e.round(op, conc, warm).await?;
        note_errors(&r, e.target, "warm-up", first_errors)?;
    }
    let n_targets = endpoints.len();
    let mut tallies: Vec<Tally> = (0..n_targets).map(|_| Tally::new()).collect();
    let rounds = plan.ops.div_ceil(plan.round_ops);
    for i in 0..rounds {
        let n = plan.round_ops.min(plan.ops - i * plan.round_ops);
        // Rotate who goes first, and reverse every other round (A B C, C B A, B C A, A C B, ...),
        // so no target always follows the same one.
        let mut order: Vec<usize> = (0..n_targets)
            .map(|k| (k + i as usize / 2) % n_targets)
            .collect();
        if i % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let e = &mut endpoints[k];
            let r = e.round(op, conc, n).await?;
            note_errors(&r, e.target, "round", first_errors)?;
            let tally = &mut tallies[k];
            tally.hist.add(&r.hist).expect("same histogram bounds");
            tally.errors += r.errors;
            tally.busy += r.elapsed;
            watch.sample()?;
        }
    }
    Ok(endpoints
        .iter()
        .zip(&tallies)
        .map(|(e, t)| (e.target.name(), t.summary()))
        .collect())
}

/// Keep the first errors for the report; a hang ends the run.
fn note_errors(r: &Round, target: Target, phase: &str, first: &mut Vec<String>) -> Result<()> {
    if let Some(e) = &r.first_error {
        if first.len() < 10 {
            first.push(format!(
                "{} {phase}: {e} ({} errors)",
                target.name(),
                r.errors
            ));
        }
    }
    if r.timed_out {
        bail!(
            "{} {phase}: an operation hung for over {OP_DEADLINE:?}; errors so far:\n{}",
            target.name(),
            first.join("\n")
        );
    }
    Ok(())
}

fn print_results(results: &[LevelResult], pool_size: u32, first_errors: &[String]) {
    let mut t = Table::new(&[
        "op", "conc", "target", "ops", "errors", "p50_us", "p99_us", "p99.9_us", "mean_us",
        "max_us", "ops/s",
    ]);
    for r in results {
        for (name, s) in &r.summaries {
            t.row(vec![
                r.op.name().into(),
                r.conc.to_string(),
                (*name).into(),
                s.ops.to_string(),
                s.errors.to_string(),
                us(s.p50_us),
                us(s.p99_us),
                us(s.p999_us),
                us(s.mean_us),
                us(s.max_us),
                format!("{:.0}", s.ops_per_s),
            ]);
        }
        for (name, d) in differences(r) {
            t.row(vec![
                r.op.name().into(),
                r.conc.to_string(),
                name,
                String::new(),
                String::new(),
                signed(d.p50_us),
                signed(d.p99_us),
                signed(d.p999_us),
                signed(d.mean_us),
                String::new(),
                format!("{:+.0}", d.ops_per_s),
            ]);
        }
    }
    println!("{}", t.render());
    println!();
    let mut headers = vec!["op", "conc"];
    if let Some(r) = results.first() {
        headers.extend(r.proxy_upstream_max.iter().map(|(n, _)| *n));
    }
    headers.push("upstream_conns_max");
    let mut c = Table::new(&headers);
    for r in results {
        let mut row = vec![r.op.name().into(), r.conc.to_string()];
        row.extend(r.proxy_upstream_max.iter().map(|(_, n)| n.to_string()));
        row.push(r.upstream_conns_max.to_string());
        c.row(row);
    }
    println!(
        "upstream connections held by each proxy, counted after every round (must stay <= pool size {pool_size}); \
         the upstream's total also counts the direct client's connections:"
    );
    println!("{}", c.render());
    for r in results {
        for (name, n) in &r.proxy_upstream_max {
            if *n > u64::from(pool_size) {
                println!(
                    "MISBEHAVIOUR: {name} held {n} upstream connections (pool size {pool_size}) during {} at concurrency {}",
                    r.op.name(),
                    r.conc
                );
            }
        }
    }
    if !first_errors.is_empty() {
        println!("errors (first of each round that had any):");
        for e in first_errors {
            println!("  {e}");
        }
    }
}

/// Each proxy's figures minus the direct ones (the first target is always `direct`).
fn differences(r: &LevelResult) -> Vec<(String, Summary)> {
    let (_, d) = &r.summaries[0];
    r.summaries[1..]
        .iter()
        .map(|(name, g)| {
            let diff = Summary {
                ops: 0,
                errors: 0,
                p50_us: g.p50_us - d.p50_us,
                p99_us: g.p99_us - d.p99_us,
                p999_us: g.p999_us - d.p999_us,
                mean_us: g.mean_us - d.mean_us,
                max_us: g.max_us - d.max_us,
                ops_per_s: g.ops_per_s - d.ops_per_s,
            };
            (format!("{name}-direct"), diff)
        })
        .collect()
}

fn csv(results: &[LevelResult], pool_size: u32, upstream: &str) -> Csv {
    let mut csv = Csv::new(&[
        "run",
        "upstream",
        "op",
        "concurrency",
        "target",
        "pool_size",
        "ops",
        "errors",
        "p50_us",
        "p99_us",
        "p999_us",
        "mean_us",
        "max_us",
        "ops_per_s",
        "proxy_upstream_max",
        "upstream_conns_max",
    ]);
    let run = unix_time().to_string();
    for r in results {
        let proxy_max = |name: &str| {
            r.proxy_upstream_max
                .iter()
                .find(|(n, _)| name.starts_with(n))
                .map(|(_, v)| v.to_string())
                .unwrap_or_default()
        };
        let rows = r
            .summaries
            .iter()
            .map(|(n, s)| ((*n).to_string(), *s))
            .chain(differences(r));
        for (name, s) in rows {
            csv.row(vec![
                run.clone(),
                upstream.into(),
                r.op.name().into(),
                r.conc.to_string(),
                name.clone(),
                pool_size.to_string(),
                s.ops.to_string(),
                s.errors.to_string(),
                format!("{:.1}", s.p50_us),
                format!("{:.1}", s.p99_us),
                format!("{:.1}", s.p999_us),
                format!("{:.1}", s.mean_us),
                format!("{:.1}", s.max_us),
                format!("{:.1}", s.ops_per_s),
                proxy_max(&name),
                r.upstream_conns_max.to_string(),
            ]);
        }
    }
    csv
}
