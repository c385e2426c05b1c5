//! The `latency` scenario: what the extra hop costs a single-document operation.
//!
//! One FerretDB (SQLite, authentication on) and one gateway in front of it. A `find` by `_id`
//! over a seeded collection (as a driver's `find_one` sends it: `limit: 1, singleBatch: true`) and
//! a one-document `insert` run at each concurrency level against two targets: FerretDB directly
//! (logged in with SCRAM-SHA-256) and the gateway (no credentials: it holds the upstream's). The
//! targets alternate in short rounds (A B B A …) within one run, so drift on a shared, noisy
//! machine (other builds, SQLite growth, CPU frequency) hits both equally. Each level starts with
//! an unrecorded warm-up per target.
//!
//! Both targets are driven by the same client, the raw OP_MSG client in [`crate::wire`], with one
//! connection per concurrent worker (a pool as large as the concurrency), so the only difference
//! between them is the gateway and its upstream pool of `--pool-size`. The official Rust driver is
//! not used because it cannot log in to FerretDB v1.24 directly (see [`crate::scram`]); a client
//! identical on both sides is the fairer measure of the hop anyway. While the scenario runs, the
//! upstream connections the gateway process holds are counted from `/proc`; more than the pool
//! size is reported as misbehaviour.
//!
//! What it must never do: hide an error or a hang. Every operation has a deadline; errors are
//! counted and the first ones printed; a timeout stops the run with the gateway's log tail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use bson::oid::ObjectId;
use bson::{doc, Document};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;

use crate::observe::{established_from_pid, established_to_port};
use crate::procs::{login, Ferret, Gateway, GatewayOpts};
use crate::report::{new_histogram, signed, unix_time, us, Csv, Summary, Table};
use crate::wire::{is_ok, RawConn};
use crate::Common;

/// Longest any single operation may take before the run is declared hung.
const OP_DEADLINE: Duration = Duration::from_secs(30);
/// Longest a connection may take to open, handshake and log in.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);
const DB: &str = "bench";
const FIND_COLL: &str = "latency_find";
const INSERT_COLL: &str = "latency_insert";

#[derive(Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrency levels (comma-separated) [default: 1,16,64; 1,4 with --smoke].
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
                vec![1, 16, 64]
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

/// An operation kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    Find,
    Insert,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Find => "find",
            Op::Insert => "insert",
        }
    }
}

/// Where the client connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// FerretDB itself, logged in.
    Direct(SocketAddr),
    /// The gateway, no credentials.
    Gateway(SocketAddr),
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct(_) => "direct",
            Target::Gateway(_) => "gateway",
        }
    }

    async fn connect(self) -> Result<RawConn> {
        match self {
            Target::Direct(addr) => login(addr, CONNECT_DEADLINE).await,
            Target::Gateway(addr) => Ok(RawConn::handshake(addr, None, CONNECT_DEADLINE).await?.0),
        }
    }
}

/// One target's connections (a pool as large as the highest concurrency) and its counters.
struct Endpoint {
    target: Target,
    conns: Vec<RawConn>,
    size: usize,
    /// Operations issued so far: picks the `_id` of the next find.
    seq: Arc<AtomicU64>,
    docs: u64,
}

impl Endpoint {
    async fn open(target: Target, size: usize, docs: u64) -> Result<Endpoint> {
        let mut e = Endpoint {
            target,
            conns: Vec::with_capacity(size),
            size,
            seq: Arc::new(AtomicU64::new(0)),
            docs,
        };
        e.refill().await?;
        Ok(e)
    }

    /// Replace connections dropped after an I/O error, so every round starts with a full pool.
    async fn refill(&mut self) -> Result<()> {
        let missing = self.size - self.conns.len();
        let opened = futures::future::join_all((0..missing).map(|_| self.target.connect())).await;
        for c in opened {
            self.conns
                .push(c.with_context(|| format!("connect to {}", self.target.name()))?);
        }
        Ok(())
    }

    /// Run `total` operations on `conc` workers, each on its own connection, timing each one.
    async fn round(&mut self, op: Op, conc: u32, total: u64) -> Result<Round> {
        self.refill().await?;
        let next = Arc::new(AtomicU64::new(0));
        let abort = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let tasks: Vec<_> = self
            .conns
            .drain(..conc as usize)
            .map(|conn| {
                let w = Worker {
                    op,
                    target: self.target,
                    docs: self.docs,
                    seq: self.seq.clone(),
                    next: next.clone(),
                    abort: abort.clone(),
                    total,
                };
                tokio::spawn(w.run(conn))
            })
            .collect();
        let mut round = Round {
            hist: new_histogram(),
            errors: 0,
            first_error: None,
            timed_out: false,
            elapsed: Duration::ZERO,
        };
        for t in futures::future::join_all(tasks).await {
            let out = t.expect("latency worker panicked");
            round.hist.add(&out.hist).expect("same histogram bounds");
            round.errors += out.errors;
            round.first_error = round.first_error.or(out.first_error);
            round.timed_out |= out.timed_out;
            self.conns.extend(out.conn);
        }
        round.elapsed = start.elapsed();
        Ok(round)
    }
}

/// The outcome of one round.
struct Round {
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    timed_out: bool,
    elapsed: Duration,
}

/// One concurrent client of a round.
struct Worker {
    op: Op,
    target: Target,
    docs: u64,
    seq: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    abort: Arc<AtomicBool>,
    total: u64,
}

/// What a worker hands back: its connection unless it broke, and its measurements.
struct WorkerOut {
    conn: Option<RawConn>,
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    timed_out: bool,
}

impl Worker {
    async fn run(self, mut conn: RawConn) -> WorkerOut {
        let mut out = WorkerOut {
            conn: None,
            hist: new_histogram(),
            errors: 0,
            first_error: None,
            timed_out: false,
        };
        let mut healthy = true;
        while healthy
            && !self.abort.load(Ordering::Relaxed)
            && self.next.fetch_add(1, Ordering::Relaxed) < self.total
        {
            let (cmd, check) = self.command();
            let t0 = Instant::now();
            let result = conn.command(&cmd, OP_DEADLINE).await;
            let ns = t0.elapsed().as_nanos() as u64;
            let err = match result {
                Ok(reply) => check(&reply).err(),
                Err(e) => {
                    // The stream can no longer be trusted: drop this connection.
                    healthy = false;
                    if e.is::<tokio::time::error::Elapsed>() {
                        out.timed_out = true;
                        self.abort.store(true, Ordering::Relaxed);
                    }
                    Some(e)
                }
            };
            match err {
                None => out.hist.saturating_record(ns.max(1)),
                Some(e) => {
                    out.errors += 1;
                    let what = format!("{}: {e:#}", self.op.name());
                    out.first_error = out.first_error.or(Some(what));
                }
            }
        }
        if healthy {
            out.conn = Some(conn);
        }
        out
    }

    /// The next command and the check its reply must pass.
    fn command(&self) -> (Document, fn(&Document) -> Result<()>) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        match self.op {
            Op::Find => {
                // A fixed stride over the ids: every document is read, no two neighbours in a row.
                let id = doc_id(n.wrapping_mul(7919) % self.docs);
                let cmd = doc! {
                    "find": FIND_COLL, "filter": {"_id": id}, "limit": 1, "singleBatch": true,
                    "$db": DB,
                };
                (cmd, check_find)
            }
            Op::Insert => {
                let d = doc! {
                    "_id": ObjectId::new(), "n": n as i64, "target": self.target.name(),
                    "pad": "x".repeat(64),
                };
                (
                    doc! {"insert": INSERT_COLL, "documents": [d], "$db": DB},
                    check_insert,
                )
            }
        }
    }
}

/// The `_id` of the `i`th seeded document. A string: FerretDB's SQLite backend filters string
/// ids in SQL but integer ids in Go, which costs far more.
fn doc_id(i: u64) -> String {
    format!("doc-{i:06}")
}

fn check_find(reply: &Document) -> Result<()> {
    ensure!(is_ok(reply), "{reply}");
    let batch = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .with_context(|| format!("no firstBatch: {reply}"))?;
    ensure!(batch.len() == 1, "{} documents, expected 1", batch.len());
    Ok(())
}

fn check_insert(reply: &Document) -> Result<()> {
    ensure!(
        is_ok(reply) && !reply.contains_key("writeErrors"),
        "{reply}"
    );
    ensure!(reply.get_i32("n").ok() == Some(1), "not inserted: {reply}");
    Ok(())
}

/// Results of one (operation, level): a summary per target and the connection counts seen.
struct LevelResult {
    op: Op,
    conc: u32,
    direct: Summary,
    gateway: Summary,
    gw_upstream_max: u64,
    ferret_max: u64,
}

pub async fn run(args: LatencyArgs) -> Result<()> {
    let plan = args.plan()?;
    let common = &args.common;
    let ferret = Ferret::start(&common.ferretdb_bin()?).await?;
    let gw_opts = GatewayOpts {
        pool_size: common.pool_size,
        max_clients: None,
        log_level: common.gateway_log_level.clone(),
    };
    let mut gateway = Gateway::start(&common.gateway_bin()?, &ferret, &gw_opts)?;
    seed(&ferret, plan.docs).await?;
    let max_conc = *plan.levels.iter().max().expect("levels checked non-empty") as usize;
    let mut direct = Endpoint::open(Target::Direct(ferret.addr()), max_conc, plan.docs).await?;
    let mut through = Endpoint::open(Target::Gateway(gateway.addr), max_conc, plan.docs).await?;
    println!(
        "latency: FerretDB (SQLite, auth) direct vs through mongomux (pool {}); {} ops per \
         op/level/target in interleaved rounds of {}; one connection per worker{}",
        common.pool_size,
        plan.ops,
        plan.round_ops,
        if plan.smoke { " [smoke]" } else { "" }
    );

    let mut results = Vec::new();
    let mut first_errors = Vec::new();
    for &conc in &plan.levels {
        for &op in &plan.kinds {
            let mut watch = ConnWatch::new(&gateway, &ferret);
            let (d, g) = measure_level(
                &plan,
                op,
                conc,
                [&mut direct, &mut through],
                &mut watch,
                &mut first_errors,
            )
            .await
            .map_err(|e| e.context(format!("gateway log tail:\n{}", gateway.log_tail(30))))?;
            gateway.check_alive()?;
            results.push(LevelResult {
                op,
                conc,
                direct: d,
                gateway: g,
                gw_upstream_max: watch.gw_upstream_max,
                ferret_max: watch.ferret_max,
            });
            eprintln!("  done: {} at concurrency {conc}", op.name());
        }
    }
    print_results(&results, common.pool_size, &first_errors);
    let path = csv(&results, common.pool_size).write(&common.out_dir(), "latency.csv")?;
    println!("csv: {}", path.display());
    if !first_errors.is_empty() {
        println!("gateway log tail:\n{}", gateway.log_tail(20));
    }
    Ok(())
}

/// Seed the documents `find` reads (ids 0..docs), straight to FerretDB.
async fn seed(ferret: &Ferret, docs: u64) -> Result<()> {
    let mut conn = ferret.connect(CONNECT_DEADLINE).await?;
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

/// Counts connections to FerretDB between rounds, outside the timed sections: reading
/// `/proc/net/tcp` costs CPU the measured processes would otherwise have. Pooled connections live
/// far longer than a round, so one sample per round sees any the gateway holds beyond its pool.
struct ConnWatch {
    gw_pid: u32,
    ferret_port: u16,
    gw_upstream_max: u64,
    ferret_max: u64,
}

impl ConnWatch {
    fn new(gateway: &Gateway, ferret: &Ferret) -> ConnWatch {
        ConnWatch {
            gw_pid: gateway.pid,
            ferret_port: ferret.port,
            gw_upstream_max: 0,
            ferret_max: 0,
        }
    }

    fn sample(&mut self) -> Result<()> {
        let gw = established_from_pid(self.gw_pid, self.ferret_port)?;
        let all = established_to_port(self.ferret_port)?;
        self.gw_upstream_max = self.gw_upstream_max.max(gw as u64);
        self.ferret_max = self.ferret_max.max(all as u64);
        Ok(())
    }
}

/// Warm up both targets, then alternate measured rounds between them.
async fn measure_level(
    plan: &Plan,
    op: Op,
    conc: u32,
    [direct, through]: [&mut Endpoint; 2],
    watch: &mut ConnWatch,
    first_errors: &mut Vec<String>,
) -> Result<(Summary, Summary)> {
    let warm = if plan.smoke {
        u64::from(conc) * 5
    } else {
        (u64::from(conc) * 50).max(500)
    };
    for e in [&mut *direct, &mut *through] {
        let r = e.round(op, conc, warm).await?;
        note_errors(&r, e.target, "warm-up", first_errors)?;
    }
    let (mut td, mut tg) = (Tally::new(), Tally::new());
    let rounds = plan.ops.div_ceil(plan.round_ops);
    for i in 0..rounds {
        let n = plan.round_ops.min(plan.ops - i * plan.round_ops);
        // A B B A: each target goes first in half the rounds.
        let order = if i % 2 == 0 {
            [(&mut *direct, &mut td), (&mut *through, &mut tg)]
        } else {
            [(&mut *through, &mut tg), (&mut *direct, &mut td)]
        };
        for (e, tally) in order {
            let r = e.round(op, conc, n).await?;
            note_errors(&r, e.target, "round", first_errors)?;
            tally.hist.add(&r.hist).expect("same histogram bounds");
            tally.errors += r.errors;
            tally.busy += r.elapsed;
            watch.sample()?;
        }
    }
    Ok((td.summary(), tg.summary()))
}

/// What one target accumulated over the rounds of one level.
struct Tally {
    hist: Histogram<u64>,
    errors: u64,
    busy: Duration,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: new_histogram(),
            errors: 0,
            busy: Duration::ZERO,
        }
    }

    fn summary(&self) -> Summary {
        Summary::new(&self.hist, self.errors, self.busy.as_secs_f64())
    }
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
        for (name, s) in [("direct", &r.direct), ("gateway", &r.gateway)] {
            t.row(vec![
                r.op.name().into(),
                r.conc.to_string(),
                name.into(),
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
        let (d, g) = (&r.direct, &r.gateway);
        t.row(vec![
            r.op.name().into(),
            r.conc.to_string(),
            "gw-direct".into(),
            String::new(),
            String::new(),
            signed(g.p50_us - d.p50_us),
            signed(g.p99_us - d.p99_us),
            signed(g.p999_us - d.p999_us),
            signed(g.mean_us - d.mean_us),
            String::new(),
            format!("{:+.0}", g.ops_per_s - d.ops_per_s),
        ]);
    }
    println!("{}", t.render());
    println!();
    let mut c = Table::new(&["op", "conc", "gw_upstream_max", "ferret_conns_max"]);
    for r in results {
        c.row(vec![
            r.op.name().into(),
            r.conc.to_string(),
            r.gw_upstream_max.to_string(),
            r.ferret_max.to_string(),
        ]);
    }
    println!(
        "connections to FerretDB, counted after every round (gateway's own: must stay <= pool size {pool_size}; \
         FerretDB's total also counts the direct client's connections):"
    );
    println!("{}", c.render());
    if let Some(over) = results
        .iter()
        .find(|r| r.gw_upstream_max > u64::from(pool_size))
    {
        println!(
            "MISBEHAVIOUR: the gateway held {} upstream connections (pool size {pool_size}) during {} at concurrency {}",
            over.gw_upstream_max,
            over.op.name(),
            over.conc
        );
    }
    if !first_errors.is_empty() {
        println!("errors (first of each round that had any):");
        for e in first_errors {
            println!("  {e}");
        }
    }
}

fn csv(results: &[LevelResult], pool_size: u32) -> Csv {
    let mut csv = Csv::new(&[
        "run",
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
        "gw_upstream_max",
        "ferret_conns_max",
    ]);
    let run = unix_time().to_string();
    for r in results {
        let (d, g) = (&r.direct, &r.gateway);
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
        for (name, s) in [("direct", d), ("gateway", g), ("gateway-direct", &diff)] {
            csv.row(vec![
                run.clone(),
                r.op.name().into(),
                r.conc.to_string(),
                name.into(),
                pool_size.to_string(),
                s.ops.to_string(),
                s.errors.to_string(),
                format!("{:.1}", s.p50_us),
                format!("{:.1}", s.p99_us),
                format!("{:.1}", s.p999_us),
                format!("{:.1}", s.mean_us),
                format!("{:.1}", s.max_us),
                format!("{:.1}", s.ops_per_s),
                r.gw_upstream_max.to_string(),
                r.ferret_max.to_string(),
            ]);
        }
    }
    csv
}
