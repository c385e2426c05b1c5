//! The `fleet` scenario: a simulated serverless fleet, to show what each way of holding a
//! driver client does to the upstream's connection count.
//!
//! The fleet models Lambda's execution-environment lifecycle ([`env`]): environments are
//! created on demand when no idle one exists (a cold start, which creates the driver client),
//! run one invocation at a time, are frozen between invocations (their driver gets no CPU: no
//! heartbeats, no idle reaping), are thawed for the next, and are destroyed after an idle
//! period. Each environment owns a real official Rust driver client with its own pool. A
//! dispatcher ([`dispatch`]) feeds it a traffic shape ([`shape`]): a steady rate, a burst of N
//! cold starts within one second followed by warm waves, or a ramp.
//!
//! Every shape runs in three modes, one after another, each against a fresh fleet and a freshly
//! seeded database: `per-invocation` (a new client in every invocation, the anti-pattern AWS's
//! guidance warns about), `direct` (one client per environment, straight to the upstream) and
//! `gateway` (one client per environment, through a freshly started mongomux with
//! `--pool-size`). Each invocation reads one document by `_id` and inserts one.
//!
//! The upstream's connections are counted from the kernel ([`timeline`], `mongomux_testkit::sockets`), never
//! from the gateway, and written as a timeline for plots. The figures per run are the peak and
//! average upstream connections, the success rate, and cold and warm p50/p99 latency (from the
//! invocation's scheduled arrival to its completion, so a cold start includes creating the
//! environment and its client).
//!
//! The upstream is FerretDB v1.24 *without authentication*, for all three modes so they are
//! comparable: the official Rust driver cannot log in to FerretDB v1.24 (FerretDB answers the
//! last SCRAM step with `done: false`; see [`crate::scram`]), so the direct modes could not
//! authenticate. The gateway therefore does no upstream login here either, which makes its
//! connections cheaper to open than in production; the connection counts are unaffected.
//!
//! Everything shares one machine, which real fleets do not: environment threads run at a lower
//! priority (`--env-nice`) so thousands of them do not starve the upstream, the gateway and the
//! measurement, and the threads for a burst's cold starts are started before it (a thread is
//! not what a cold start costs; see [`env::spawn`]). Latencies still include queueing for the
//! machine's few cores, so they compare the modes with each other, not with production.
//!
//! What it must never do: wait without a deadline, or leave environment threads or child
//! processes behind when a run fails.

mod dispatch;
mod env;
mod output;
mod shape;
mod timeline;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use bson::{doc, Document};
use clap::Args;
use mongodb::options::ClientOptions;
use mongodb::Client;

use crate::observe::{established_to_port, raise_nofile_limit};
use crate::procs::{Ferret, Gateway, GatewayOpts};
use crate::Common;
use env::{doc_id, EnvConfig, Mode, DB, FIND_COLL, INSERT_COLL};
use shape::{Shape, ShapeKind, BURST_SPAN};
use timeline::{Gauges, Sampler};

/// Time between starting the sampler and the first arrival, so the timeline shows the baseline.
const LEAD: Duration = Duration::from_millis(300);
/// Environment thread stacks: small, so thousands of environments cost little address space;
/// optimised driver code runs in 128 KiB, unoptimised code overflows 256 KiB.
const DEFAULT_STACK_KIB: usize = if cfg!(debug_assertions) { 1024 } else { 256 };
/// Longest the seeding of the database may take.
const SEED_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct FleetArgs {
    #[command(flatten)]
    pub common: Common,
    /// Traffic shapes, each run in every mode [default: burst,steady].
    #[arg(long, value_delimiter = ',')]
    shapes: Option<Vec<ShapeKind>>,
    /// Connection strategies to compare.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "per-invocation,direct,gateway"
    )]
    modes: Vec<Mode>,
    /// Burst: invocations arriving within one second on an empty fleet [default: 2000; 20 with
    /// --smoke].
    #[arg(long)]
    burst: Option<u32>,
    /// Burst: waves; the first is all cold starts, later ones thaw the frozen fleet [default: 2].
    #[arg(long)]
    burst_waves: Option<u32>,
    /// Burst: how long the fleet stays frozen between a wave's completion and the next wave
    /// (e.g. 5s, 500ms) [default: 2s; 200ms with --smoke]. Together with the wave's own second
    /// it must stay below --idle-timeout, or the environments expire before the next wave.
    #[arg(long, value_parser = parse_duration)]
    wave_gap: Option<Duration>,
    /// Time each invocation spends on work other than the database (calling another service,
    /// say), after its two operations [default: 0s]. Real handlers take longer than two
    /// operations on loopback, so steady and ramp traffic need more environments at once.
    #[arg(long, value_parser = parse_duration)]
    handler_work: Option<Duration>,
    /// Steady: invocations per second; ramp: the final rate [default: 100; 20 with --smoke].
    #[arg(long)]
    rate: Option<f64>,
    /// Steady and ramp: how long arrivals go on [default: 30s; 1s with --smoke].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// An environment idle this long is destroyed [default: 15s; 1.5s with --smoke]. Lambda
    /// keeps idle environments for minutes; a shorter time keeps runs short and changes nothing
    /// but the length of the plateau of frozen connections.
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// Most environments at once; arrivals beyond are throttled (counted as failures).
    #[arg(long, default_value_t = 2500)]
    max_envs: usize,
    /// `maxPoolSize` of each environment's client (the mongomux Lambda kit's default).
    #[arg(long, default_value_t = 2)]
    driver_pool_size: u32,
    /// Longest one invocation may take before it counts as failed.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    invocation_timeout: Duration,
    /// Driver `serverSelectionTimeoutMS` (the mongomux Lambda kit's default).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    server_selection_timeout: Duration,
    /// Interval between samples of the upstream's connections [default: 100ms; 50ms with --smoke].
    #[arg(long, value_parser = parse_duration)]
    sample_every: Option<Duration>,
    /// Documents seeded for the `find` [default: 100; 20 with --smoke].
    #[arg(long)]
    docs: Option<u64>,
    /// Stack size of each environment's thread, in KiB [default: 256 in release builds, 1024 in
    /// debug builds, whose unoptimised driver futures need more].
    #[arg(long, default_value_t = DEFAULT_STACK_KIB)]
    stack_kib: usize,
    /// Nice value of the environment threads, so thousands of them do not starve the upstream,
    /// the gateway and the measurement of CPU on a small machine (0 leaves them at normal
    /// priority).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    env_nice: i32,
    /// Longest wait for the upstream's connections to return to zero between runs.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    settle_timeout: Duration,
}

/// The settings of a whole invocation of the scenario, after smoke defaults are applied.
pub struct Plan {
    shapes: Vec<Shape>,
    modes: Vec<Mode>,
    limits: dispatch::Limits,
    driver_pool_size: u32,
    server_selection_timeout: Duration,
    sample_every: Duration,
    docs: u64,
    handler_work: Duration,
    stack_bytes: usize,
    env_nice: i32,
    settle_timeout: Duration,
    smoke: bool,
}

impl FleetArgs {
    fn plan(&self) -> Result<Plan> {
        let smoke = self.common.smoke;
        let pick = |v: Option<Duration>, full: u64, small: u64| {
            v.unwrap_or(Duration::from_millis(if smoke { small } else { full }))
        };
        let kinds = self
            .shapes
            .clone()
            .unwrap_or_else(|| vec![ShapeKind::Burst, ShapeKind::Steady]);
        let template = Shape {
            kind: ShapeKind::Burst,
            burst: self.burst.unwrap_or(if smoke { 20 } else { 2000 }),
            waves: self.burst_waves.unwrap_or(2),
            gap: pick(self.wave_gap, 2_000, 200),
            rate: self.rate.unwrap_or(if smoke { 20.0 } else { 100.0 }),
            duration: pick(self.duration, 30_000, 1_000),
        };
        let plan = Plan {
            shapes: kinds
                .iter()
                .map(|&kind| Shape { kind, ..template })
                .collect(),
            modes: self.modes.clone(),
            limits: dispatch::Limits {
                max_envs: self.max_envs,
                idle_timeout: pick(self.idle_timeout, 15_000, 1_500),
                wave_gap: template.gap,
                invocation_timeout: self.invocation_timeout,
            },
            driver_pool_size: self.driver_pool_size,
            server_selection_timeout: self.server_selection_timeout,
            sample_every: pick(self.sample_every, 100, 50),
            docs: self.docs.unwrap_or(if smoke { 20 } else { 100 }),
            handler_work: self.handler_work.unwrap_or(Duration::ZERO),
            stack_bytes: self.stack_kib * 1024,
            env_nice: self.env_nice,
            settle_timeout: self.settle_timeout,
            smoke,
        };
        ensure!(
            !plan.shapes.is_empty() && !plan.modes.is_empty(),
            "--shapes and --modes must not be empty"
        );
        ensure!(
            template.burst > 0 && template.waves > 0,
            "--burst and --burst-waves must be at least 1"
        );
        ensure!(
            template.rate > 0.0 && !template.duration.is_zero(),
            "--rate and --duration must be positive"
        );
        ensure!(
            template.waves < 2 || plan.limits.wave_gap + BURST_SPAN < plan.limits.idle_timeout,
            "--wave-gap ({:?}) plus the burst's second must be below --idle-timeout ({:?}), or \
             later waves find no frozen environment to thaw",
            plan.limits.wave_gap,
            plan.limits.idle_timeout
        );
        ensure!(
            plan.limits.max_envs > 0 && plan.driver_pool_size > 0 && plan.docs > 0,
            "--max-envs, --driver-pool-size and --docs must be at least 1"
        );
        ensure!(
            plan.stack_bytes >= 64 * 1024,
            "--stack-kib must be at least 64"
        );
        ensure!(
            !plan.sample_every.is_zero(),
            "--sample-every must be positive"
        );
        Ok(plan)
    }
}

pub async fn run(args: FleetArgs) -> Result<()> {
    let plan = args.plan()?;
    let common = &args.common;
    // Before starting the children: they inherit the raised limit, and FerretDB needs one
    // descriptor per connection of a direct-mode fleet.
    let nofile = raise_nofile_limit()?;
    let ferret = Ferret::start_without_auth(&common.ferretdb_bin()?).await?;
    let gateway_bin = if plan.modes.contains(&Mode::Gateway) {
        Some(common.gateway_bin()?)
    } else {
        None
    };
    output::print_header(&plan, common.pool_size, nofile);
    let started = Instant::now();
    let run_id = crate::report::unix_time().to_string();
    let mut results = Vec::new();
    let mut timeline = output::timeline_csv();
    for shape in &plan.shapes {
        for &mode in &plan.modes {
            eprintln!("  {}: {} ...", shape.name(), mode.name());
            let ctx = RunCtx {
                plan: &plan,
                common,
                ferret: &ferret,
                gateway_bin: gateway_bin.as_deref(),
            };
            let (result, samples) = ctx.run_one(shape, mode).await?;
            output::add_timeline(&mut timeline, &run_id, &result, &samples);
            eprintln!(
                "    {}/{} ok, upstream peak {}, {:.1} s",
                result.outcome.ok, result.outcome.invocations, result.peak, result.wall_secs
            );
            results.push(result);
        }
    }
    output::print_results(&results, common.pool_size);
    let dir = common.out_dir();
    let summary = output::summary_csv(&run_id, &results, common.pool_size, plan.driver_pool_size);
    println!("csv: {}", summary.write(&dir, "fleet.csv")?.display());
    println!(
        "csv: {}",
        timeline.write(&dir, "fleet-timeline.csv")?.display()
    );
    println!("total time: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What one (shape, mode) run produced.
pub struct RunResult {
    pub shape: &'static str,
    pub mode: Mode,
    pub outcome: dispatch::Outcome,
    /// Upstream connections before the first arrival.
    pub baseline: usize,
    pub peak: usize,
    /// Average over the traffic window (first arrival to last completion).
    pub avg: f64,
    /// Upstream connections the gateway process held, at most (gateway mode).
    pub gateway_peak: Option<usize>,
    pub wall_secs: f64,
}

/// What every run of the scenario shares.
struct RunCtx<'a> {
    plan: &'a Plan,
    common: &'a Common,
    ferret: &'a Ferret,
    gateway_bin: Option<&'a std::path::Path>,
}

impl RunCtx<'_> {
    async fn run_one(
        &self,
        shape: &Shape,
        mode: Mode,
    ) -> Result<(RunResult, Vec<timeline::Sample>)> {
        let plan = self.plan;
        seed(self.ferret.addr(), plan.docs).await?;
        let baseline = settle(self.ferret.port, plan.settle_timeout).await?;
        let mut gateway = match (mode, self.gateway_bin) {
            (Mode::Gateway, Some(bin)) => Some(Gateway::start(
                bin,
                &self.ferret.spec(),
                &GatewayOpts {
                    pool_size: self.common.pool_size,
                    max_clients: None,
                    log_level: self.common.gateway_log_level.clone(),
                },
            )?),
            _ => None,
        };
        let target = gateway.as_ref().map_or(self.ferret.addr(), |g| g.addr);
        let gauges = Arc::new(Gauges::default());
        let (done_tx, done_rx) = tokio::sync::mpsc::channel(plan.limits.max_envs);
        let cfg = Arc::new(EnvConfig {
            mode,
            client_options: client_options(target, plan).await?,
            invocation_timeout: plan.limits.invocation_timeout,
            docs: plan.docs,
            handler_work: plan.handler_work,
            stack_bytes: plan.stack_bytes,
            nice: plan.env_nice,
            done: done_tx,
            gauges: gauges.clone(),
        });
        let waves = shape.waves();
        let fleet = dispatch::Fleet::new(cfg, plan.limits, &waves)?;
        let began = Instant::now();
        let origin = began + LEAD;
        let sampler = Sampler::start(
            plan.sample_every,
            origin,
            self.ferret.port,
            gateway.as_ref().map(|g| g.pid),
            gauges,
        );
        let outcome = fleet.run(done_rx, &waves, origin).await;
        // A short tail, so the timeline shows the connections of the destroyed fleet closing.
        tokio::time::sleep(plan.sample_every * 3).await;
        let samples = sampler.finish();
        if let Some(g) = gateway.as_mut() {
            g.check_alive()?;
        }
        let outcome = outcome.map_err(|e| match &gateway {
            Some(g) => e.context(format!("gateway log tail:\n{}", g.log_tail(30))),
            None => e,
        })?;
        drop(gateway);
        let stats = timeline::conn_stats(&samples, 0, outcome.last_done_ms);
        let result = RunResult {
            shape: shape.name(),
            mode,
            outcome,
            baseline,
            peak: stats.peak,
            avg: stats.avg,
            gateway_peak: stats.gateway_peak,
            wall_secs: began.elapsed().as_secs_f64(),
        };
        Ok((result, samples))
    }
}

/// The options a function's client would have: the mongomux Lambda kit's defaults
/// (`crates/lambda`), including `serverMonitoringMode=poll`, which a FaaS driver uses because a
/// streamed `hello` left pending across a freeze can neither be answered nor cancelled. Poll
/// mode also means no separate RTT-monitor connection: a client holds its monitor's
/// connection plus what its pool opened.
async fn client_options(target: SocketAddr, plan: &Plan) -> Result<ClientOptions> {
    let uri = format!(
        "mongodb://{target}/?appName=mongomux-bench-fleet&maxPoolSize={}&minPoolSize=0\
         &serverSelectionTimeoutMS={}&connectTimeoutMS=3000&maxIdleTimeMS=240000\
         &serverMonitoringMode=poll&retryWrites=true&retryReads=true",
        plan.driver_pool_size,
        plan.server_selection_timeout.as_millis()
    );
    ClientOptions::parse(&uri)
        .await
        .with_context(|| format!("parse {uri}"))
}

/// Drop the database and seed [`FIND_COLL`] with `docs` documents; create [`INSERT_COLL`] up
/// front so the fleet's first inserts do not race to create it. The client is shut down before
/// returning, so its connections do not count in the run.
async fn seed(addr: SocketAddr, docs: u64) -> Result<()> {
    let opts = ClientOptions::parse(format!(
        "mongodb://{addr}/?maxPoolSize=1&serverMonitoringMode=poll&appName=mongomux-bench-seed"
    ))
    .await?;
    let client = Client::with_options(opts)?;
    let work = async {
        let db = client.database(DB);
        db.drop().await.context("drop the fleet database")?;
        let batch: Vec<Document> = (0..docs)
            .map(|i| doc! {"_id": doc_id(i), "n": i as i64, "pad": "y".repeat(64)})
            .collect();
        db.collection::<Document>(FIND_COLL)
            .insert_many(batch)
            .await
            .context("seed documents")?;
        db.create_collection(INSERT_COLL)
            .await
            .context("create the events collection")?;
        anyhow::Ok(())
    };
    let r = tokio::time::timeout(SEED_DEADLINE, work).await;
    client.shutdown().await;
    r.with_context(|| format!("seeding took over {SEED_DEADLINE:?}"))?
}

/// Wait until nothing is connected to the upstream (the previous run's fleet, gateway and the
/// seeding client are gone); returns the count then, 0 unless the deadline passed first.
async fn settle(port: u16, limit: Duration) -> Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        let n = established_to_port(port)?;
        if n == 0 {
            return Ok(0);
        }
        if Instant::now() > deadline {
            eprintln!("    warning: {n} connection(s) to the upstream still open after {limit:?}");
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A duration such as `500ms`, `5s`, `2m`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad duration {s:?}"))?;
    if !v.is_finite() || v < 0.0 {
        bail!("bad duration {s:?}");
    }
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => bail!("bad duration unit in {s:?} (use ms, s or m)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
