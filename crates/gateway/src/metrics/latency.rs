//! Latency recorders that can answer percentiles, for the admin surface (checkout waits per
//! pool, per-command times). Prometheus histograms have a dozen wide buckets chosen for
//! dashboards, where the server side computes quantiles; an operator asking one gateway "what
//! is the p99 checkout wait on this member now" needs an answer from the gateway itself, so
//! these keep finer buckets: four per power of two of microseconds (a reported percentile is
//! the upper edge of its bucket, at most 19% above the true value).
//!
//! Recording is a few relaxed atomic adds, no lock and no allocation. The set of recorders is
//! closed: one per pool, and one per command of the metrics' fixed command list (plus
//! `other`), so a client cannot grow them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets: four per doubling, from 1 µs to about 2^40 µs (12 days).
const BUCKETS: usize = 160;

/// Counts of durations by bucket, with their count, sum and maximum.
#[derive(Debug)]
pub struct LatencyRecorder {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_micros: AtomicU64,
    max_micros: AtomicU64,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            max_micros: AtomicU64::new(0),
        }
    }
}

/// A snapshot: how many, and the times that matter, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Percentiles {
    /// Observations.
    pub count: u64,
    /// Median.
    pub p50_micros: u64,
    /// 95th percentile.
    pub p95_micros: u64,
    /// 99th percentile.
    pub p99_micros: u64,
    /// Longest.
    pub max_micros: u64,
    /// Sum of all observations.
    pub total_micros: u64,
}

fn bucket_of(micros: u64) -> usize {
    // log2(µs + 1) in quarter steps: 0 µs is bucket 0, each doubling four buckets further.
    let quarters = ((micros as f64) + 1.0).log2() * 4.0;
    (quarters as usize).min(BUCKETS - 1)
}

/// The largest duration (µs) bucket `i` holds.
fn upper_edge(i: usize) -> u64 {
    ((((i + 1) as f64) / 4.0).exp2() - 1.0).ceil() as u64
}

impl LatencyRecorder {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.max_micros.fetch_max(micros, Ordering::Relaxed);
    }

    /// The percentiles of everything recorded so far. Concurrent recording may make the count
    /// and the buckets disagree by the few observations in flight; the ranks use the buckets.
    pub fn snapshot(&self) -> Percentiles {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let max = self.max_micros.load(Ordering::Relaxed);
        let at = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let rank = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return upper_edge(i).min(max);
                }
            }
            max
        };
        Percentiles {
            count: self.count.load(Ordering::Relaxed),
            p50_micros: at(0.50),
            p95_micros: at(0.95),
            p99_micros: at(0.99),
            max_micros: max,
            total_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// Per-command times and failures, indexed like the metrics' command list (then `other`).
#[derive(Debug)]
pub struct CommandStats {
    names: &'static [&'static str],
    times: Vec<LatencyRecorder>,
    failures: Vec<AtomicU64>,
}

/// One command's figures.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandRow {
    /// Command name (`other`: every command not in the fixed list).
    pub command: &'static str,
    /// Replies with `ok: 0`, from the gateway or the upstream.
    pub errors: u64,
    /// Times from the request's arrival to its reply.
    #[serde(flatten)]
    pub time: Percentiles,
}

impl CommandStats {
    /// Recorders for `names` and `other`.
    pub fn new(names: &'static [&'static str]) -> CommandStats {
        CommandStats {
            names,
            times: (0..=names.len())
                .map(|_| LatencyRecorder::default())
                .collect(),
            failures: (0..=names.len()).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The index of `name` (case-insensitive, as the operation counter), `other` if unknown.
    pub fn index_of(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .unwrap_or(self.names.len())
    }

    /// Records a command (by [`CommandStats::index_of`]) that took `took`.
    pub fn observe(&self, index: usize, took: Duration, failed: bool) {
        let i = index.min(self.names.len());
        self.times[i].observe(took);
        if failed {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The commands seen at least once, most frequent first.
    pub fn rows(&self) -> Vec<CommandRow> {
        let mut rows: Vec<CommandRow> = (0..=self.names.len())
            .map(|i| CommandRow {
                command: self.names.get(i).copied().unwrap_or("other"),
                errors: self.failures[i].load(Ordering::Relaxed),
                time: self.times[i].snapshot(),
            })
            .filter(|r| r.time.count > 0)
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.time.count));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_edges_hold_their_values() {
        let mut last = 0;
        for micros in [0u64, 1, 2, 3, 5, 10, 100, 999, 1_000, 65_536, 10_000_000] {
            let b = bucket_of(micros);
            assert!(b >= last, "{micros}");
            last = b;
            assert!(upper_edge(b) >= micros, "{micros} above its bucket's edge");
            // Within 19% (plus rounding for the smallest buckets).
            assert!(
                upper_edge(b) as f64 <= micros as f64 * 1.19 + 2.0,
                "{micros}"
            );
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_come_from_the_recorded_distribution() {
        let r = LatencyRecorder::default();
        assert_eq!(r.snapshot(), Percentiles::default());
        for _ in 0..90 {
            r.observe(Duration::from_micros(100));
        }
        for _ in 0..9 {
            r.observe(Duration::from_millis(10));
        }
        r.observe(Duration::from_secs(1));
        let s = r.snapshot();
        assert_eq!(s.count, 100);
        assert!((100..=119).contains(&s.p50_micros), "{s:?}");
        assert!((10_000..=11_900).contains(&s.p95_micros), "{s:?}");
        assert!((10_000..=11_900).contains(&s.p99_micros), "{s:?}");
        assert_eq!(s.max_micros, 1_000_000);
        assert_eq!(s.total_micros, 90 * 100 + 9 * 10_000 + 1_000_000);
    }

    #[test]
    fn command_rows_are_closed_and_sorted() {
        let stats = CommandStats::new(&["find", "insert"]);
        stats.observe(stats.index_of("FIND"), Duration::from_micros(5), false);
        stats.observe(stats.index_of("find"), Duration::from_micros(5), true);
        stats.observe(stats.index_of("made-up"), Duration::from_micros(5), false);
        let rows = stats.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].command, rows[0].time.count, rows[0].errors),
            ("find", 2, 1)
        );
        assert_eq!((rows[1].command, rows[1].time.count), ("other", 1));
    }
}
