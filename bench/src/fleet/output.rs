//! The fleet scenario's figures: the header that says what was run, the table per run, the
//! errors seen, and the two CSV files (`fleet.csv`, one row per run; `fleet-timeline.csv`, one
//! row per sample, for the plots of upstream connections over time per mode).
//!
//! What it owns: formats and units only (latencies in milliseconds: cold starts are far longer
//! than a single operation). It never measures anything.

use hdrhistogram::Histogram;

use super::timeline::Sample;
use super::{Plan, RunResult};
use crate::report::{Csv, Table};

/// A quantile of a nanosecond histogram in milliseconds; empty for an empty histogram.
fn ms(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        String::new()
    } else {
        format!("{:.1}", h.value_at_quantile(q) as f64 / 1e6)
    }
}

fn success_pct(r: &RunResult) -> f64 {
    let o = &r.outcome;
    if o.invocations == 0 {
        0.0
    } else {
        100.0 * o.ok as f64 / o.invocations as f64
    }
}

pub fn print_header(plan: &Plan, pool_size: u32, nofile: u64) {
    println!(
        "fleet: simulated serverless fleet (one OS thread + current-thread runtime + official Rust \
         driver client per environment; frozen between invocations){}",
        if plan.smoke { " [smoke]" } else { "" }
    );
    println!(
        "  upstream: FerretDB v1.24 (SQLite) WITHOUT authentication, for all modes alike: the Rust \
         driver cannot log in to FerretDB v1.24 directly"
    );
    println!(
        "  modes: {}; gateway pool size {pool_size}; driver maxPoolSize {}, \
         serverMonitoringMode=poll, serverSelectionTimeout {:?}",
        plan.modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", "),
        plan.driver_pool_size,
        plan.server_selection_timeout
    );
    for s in &plan.shapes {
        println!("  shape {}", s.describe());
    }
    println!(
        "  environments: at most {}, destroyed after {:?} idle; invocation timeout {:?}; \
         nice {}; handler: find_one by _id + insert_one; connections sampled every {:?}; \
         RLIMIT_NOFILE {nofile}",
        plan.limits.max_envs,
        plan.limits.idle_timeout,
        plan.limits.invocation_timeout,
        plan.env_nice,
        plan.sample_every
    );
}

pub fn print_results(results: &[RunResult], pool_size: u32) {
    let mut t = Table::new(&[
        "shape",
        "mode",
        "invocations",
        "ok%",
        "upstream_peak",
        "upstream_avg",
        "cold",
        "cold_p50_ms",
        "cold_p99_ms",
        "warm",
        "warm_p50_ms",
        "warm_p99_ms",
        "envs",
    ]);
    for r in results {
        let o = &r.outcome;
        t.row(vec![
            r.shape.into(),
            r.mode.name().into(),
            o.invocations.to_string(),
            format!("{:.2}", success_pct(r)),
            r.peak.to_string(),
            format!("{:.0}", r.avg),
            o.cold_n.to_string(),
            ms(&o.cold, 0.5),
            ms(&o.cold, 0.99),
            o.warm_n.to_string(),
            ms(&o.warm, 0.5),
            ms(&o.warm, 0.99),
            o.envs_created.to_string(),
        ]);
    }
    println!();
    println!("{}", t.render());
    println!(
        "upstream_* = established connections to FerretDB's port, counted by the kernel \
         (sock_diag), not the gateway: peak over all samples, average from the first arrival to \
         the last completion."
    );
    for r in results {
        let o = &r.outcome;
        if let Some(g) = r.gateway_peak {
            let verdict = if g > pool_size as usize {
                "MISBEHAVIOUR: above the pool size"
            } else {
                "within the pool size"
            };
            println!(
                "{} gateway: the gateway process held at most {g} upstream connections \
                 (pool size {pool_size}): {verdict}",
                r.shape
            );
        }
        if o.max_dispatch_lag.as_millis() >= 100 {
            println!(
                "{} {}: the dispatcher fell up to {} ms behind the schedule (counted in latency)",
                r.shape,
                r.mode.name(),
                o.max_dispatch_lag.as_millis()
            );
        }
        if r.baseline != 0 {
            println!(
                "{} {}: {} connection(s) to the upstream were left from before the run",
                r.shape,
                r.mode.name(),
                r.baseline
            );
        }
        if o.failed + o.throttled > 0 {
            println!(
                "{} {}: {} failed, {} throttled; errors:",
                r.shape,
                r.mode.name(),
                o.failed,
                o.throttled
            );
            let mut errs: Vec<(&String, &u64)> = o.errors.iter().collect();
            errs.sort_by(|a, b| b.1.cmp(a.1));
            for (msg, n) in errs.iter().take(5) {
                println!("  {n} x {msg}");
            }
            if errs.len() > 5 || o.errors_unlisted > 0 {
                println!(
                    "  ... and {} more distinct message(s)",
                    errs.len().saturating_sub(5) as u64 + o.errors_unlisted
                );
            }
        }
    }
}

pub fn summary_csv(run: &str, results: &[RunResult], pool_size: u32, driver_pool: u32) -> Csv {
    let mut csv = Csv::new(&[
        "run",
        "shape",
        "mode",
        "gateway_pool_size",
        "driver_pool_size",
        "invocations",
        "ok",
        "failed",
        "throttled",
        "success_pct",
        "upstream_baseline",
        "upstream_peak",
        "upstream_avg",
        "gateway_upstream_peak",
        "cold_n",
        "cold_p50_ms",
        "cold_p99_ms",
        "warm_n",
        "warm_p50_ms",
        "warm_p99_ms",
        "envs_created",
        "max_dispatch_lag_ms",
        "wall_s",
    ]);
    for r in results {
        let o = &r.outcome;
        csv.row(vec![
            run.into(),
            r.shape.into(),
            r.mode.name().into(),
            pool_size.to_string(),
            driver_pool.to_string(),
            o.invocations.to_string(),
            o.ok.to_string(),
            o.failed.to_string(),
            o.throttled.to_string(),
            format!("{:.2}", success_pct(r)),
            r.baseline.to_string(),
            r.peak.to_string(),
            format!("{:.1}", r.avg),
            r.gateway_peak.map(|g| g.to_string()).unwrap_or_default(),
            o.cold_n.to_string(),
            ms(&o.cold, 0.5),
            ms(&o.cold, 0.99),
            o.warm_n.to_string(),
            ms(&o.warm, 0.5),
            ms(&o.warm, 0.99),
            o.envs_created.to_string(),
            o.max_dispatch_lag.as_millis().to_string(),
            format!("{:.1}", r.wall_secs),
        ]);
    }
    csv
}

pub fn timeline_csv() -> Csv {
    Csv::new(&[
        "run",
        "shape",
        "mode",
        "t_ms",
        "upstream_conns",
        "gateway_upstream_conns",
        "envs_alive",
        "envs_busy",
        "completed",
    ])
}

/// Append one run's samples; `t_ms` counts from the run's first arrival.
pub fn add_timeline(csv: &mut Csv, run: &str, r: &RunResult, samples: &[Sample]) {
    for s in samples {
        csv.row(vec![
            run.into(),
            r.shape.into(),
            r.mode.name().into(),
            s.t_ms.to_string(),
            s.upstream.to_string(),
            s.gateway_upstream
                .map(|g| g.to_string())
                .unwrap_or_default(),
            s.alive.to_string(),
            s.busy.to_string(),
            s.completed.to_string(),
        ]);
    }
}
