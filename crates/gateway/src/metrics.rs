//! Prometheus metrics: the counters themselves and the tiny HTTP endpoint that serves them.
//!
//! Every metric is a fixed set of atomics owned by the [`Metrics`] value inside the shared
//! context, so recording on the hot path is a relaxed atomic add and never a lock. Label sets are
//! closed (a fixed command list plus `other`) so a client cannot grow memory by inventing
//! command names. The README lists every metric this module exposes.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Commands counted by name; anything else is counted as `other`.
const COMMANDS: &[&str] = &[
    "find",
    "insert",
    "update",
    "delete",
    "getMore",
    "killCursors",
    "aggregate",
    "count",
    "distinct",
    "findAndModify",
    "createIndexes",
    "dropIndexes",
    "listIndexes",
    "create",
    "drop",
    "dropDatabase",
    "listCollections",
    "listDatabases",
    "hello",
    "isMaster",
    "ping",
    "buildInfo",
    "endSessions",
    "commitTransaction",
    "abortTransaction",
    "saslStart",
    "saslContinue",
    "serverStatus",
    "collStats",
    "dbStats",
    "explain",
    "bulkWrite",
];
const OTHER: usize = COMMANDS.len();

/// Upper bounds, in seconds, of the latency histogram buckets.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// All of the gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Client connections open now.
    pub client_connections: AtomicI64,
    /// Client connections accepted since start.
    pub client_connections_total: AtomicU64,
    /// Client connections refused (max-clients reached, descriptor limit, draining).
    pub client_connections_rejected: AtomicU64,
    /// Client connections refused by the access list.
    pub client_connections_denied: AtomicU64,
    /// Upstream connections open now (idle or in use).
    pub upstream_connections: AtomicI64,
    /// Upstream connections checked out now.
    pub upstream_in_use: AtomicI64,
    /// Upstream connections pinned by open transactions now.
    pub upstream_pinned: AtomicI64,
    /// Upstream connections opened since start.
    pub upstream_connects_total: AtomicU64,
    /// Upstream connection attempts that failed.
    pub upstream_connect_failures_total: AtomicU64,
    /// Upstream connections closed because they were broken, dirty or idle too long.
    pub upstream_discarded_total: AtomicU64,
    /// Time requests waited for an upstream connection.
    pub checkout_wait: Histogram,
    /// Checkouts that timed out.
    pub checkout_timeouts_total: AtomicU64,
    /// Time from receiving a forwarded request to having its reply, upstream included.
    pub upstream_latency: Histogram,
    /// Cursors open now that clients own.
    pub open_cursors: AtomicI64,
    /// STS calls running now.
    pub sts_in_flight: AtomicI64,
    /// Time an IAM login spent on STS, queueing included.
    pub sts_latency: Histogram,
    /// Time an IAM login waited for an STS slot.
    pub sts_queue_wait: Histogram,
    /// Time of the STS call itself.
    pub sts_call: Histogram,
    /// STS calls by result.
    sts_results: Vec<(&'static str, AtomicU64)>,
    /// Operations by command name.
    ops: Vec<AtomicU64>,
    /// Error replies the gateway itself generated, by code.
    gateway_errors: Vec<(i32, AtomicU64)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            client_connections: AtomicI64::new(0),
            client_connections_total: AtomicU64::new(0),
            client_connections_rejected: AtomicU64::new(0),
            client_connections_denied: AtomicU64::new(0),
            upstream_connections: AtomicI64::new(0),
            upstream_in_use: AtomicI64::new(0),
            upstream_pinned: AtomicI64::new(0),
            upstream_connects_total: AtomicU64::new(0),
            upstream_connect_failures_total: AtomicU64::new(0),
            upstream_discarded_total: AtomicU64::new(0),
            checkout_wait: Histogram::default(),
            checkout_timeouts_total: AtomicU64::new(0),
            upstream_latency: Histogram::default(),
            open_cursors: AtomicI64::new(0),
            sts_in_flight: AtomicI64::new(0),
            sts_latency: Histogram::default(),
            sts_queue_wait: Histogram::default(),
            sts_call: Histogram::default(),
            sts_results: ["ok", "denied", "throttled", "timeout", "error"]
                .into_iter()
                .map(|r| (r, AtomicU64::new(0)))
                .collect(),
            ops: (0..=OTHER).map(|_| AtomicU64::new(0)).collect(),
            gateway_errors: [2, 6, 9, 13, 18, 22, 43, 91, 115, 262, 352]
                .into_iter()
                .map(|c| (c, AtomicU64::new(0)))
                .collect(),
        }
    }
}

impl Metrics {
    /// Counts one operation.
    pub fn count_op(&self, command: &str) {
        let i = COMMANDS
            .iter()
            .position(|c| c.eq_ignore_ascii_case(command))
            .unwrap_or(OTHER);
        self.ops[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an STS call by result.
    pub fn count_sts(&self, result: &str) {
        if let Some((_, n)) = self.sts_results.iter().find(|(r, _)| *r == result) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an error reply the gateway generated.
    pub fn count_error(&self, code: i32) {
        if let Some((_, n)) = self.gateway_errors.iter().find(|(c, _)| *c == code) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads an operation count (for tests and benchmarks).
    pub fn op_count(&self, command: &str) -> u64 {
        let i = COMMANDS.iter().position(|c| *c == command).unwrap_or(OTHER);
        self.ops[i].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let l = |a: &AtomicI64| a.load(Ordering::Relaxed);
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "mongomux_client_connections",
            "Client connections open now.",
            l(&self.client_connections),
        );
        counter(
            &mut out,
            "mongomux_client_connections_total",
            "Client connections accepted.",
            c(&self.client_connections_total),
        );
        counter(
            &mut out,
            "mongomux_client_connections_rejected_total",
            "Client connections refused (limits, draining).",
            c(&self.client_connections_rejected),
        );
        counter(
            &mut out,
            "mongomux_client_connections_denied_total",
            "Client connections refused by the IP access list.",
            c(&self.client_connections_denied),
        );
        gauge(
            &mut out,
            "mongomux_upstream_connections",
            "Upstream connections open now, idle or in use.",
            l(&self.upstream_connections),
        );
        gauge(
            &mut out,
            "mongomux_upstream_connections_in_use",
            "Upstream connections checked out now.",
            l(&self.upstream_in_use),
        );
        gauge(
            &mut out,
            "mongomux_upstream_connections_pinned",
            "Upstream connections pinned by open transactions.",
            l(&self.upstream_pinned),
        );
        counter(
            &mut out,
            "mongomux_upstream_connects_total",
            "Upstream connections opened.",
            c(&self.upstream_connects_total),
        );
        counter(
            &mut out,
            "mongomux_upstream_connect_failures_total",
            "Failed upstream connection attempts.",
            c(&self.upstream_connect_failures_total),
        );
        counter(
            &mut out,
            "mongomux_upstream_discarded_total",
            "Upstream connections closed as broken, dirty or idle.",
            c(&self.upstream_discarded_total),
        );
        self.checkout_wait.render(
            &mut out,
            "mongomux_checkout_wait_seconds",
            "Time a request waited for an upstream connection.",
        );
        counter(
            &mut out,
            "mongomux_checkout_timeouts_total",
            "Checkouts that hit --checkout-timeout.",
            c(&self.checkout_timeouts_total),
        );
        self.upstream_latency.render(
            &mut out,
            "mongomux_upstream_request_seconds",
            "Time from forwarding a request to receiving its reply.",
        );
        gauge(
            &mut out,
            "mongomux_open_cursors",
            "Cursors owned by connected clients.",
            l(&self.open_cursors),
        );
        let _ = writeln!(out, "# HELP mongomux_operations_total Operations received, by command.\n# TYPE mongomux_operations_total counter");
        for (i, n) in self.ops.iter().enumerate() {
            let name = COMMANDS.get(i).copied().unwrap_or("other");
            let _ = writeln!(
                out,
                "mongomux_operations_total{{command=\"{name}\"}} {}",
                c(n)
            );
        }
        gauge(
            &mut out,
            "mongomux_sts_in_flight",
            "STS GetCallerIdentity calls running now.",
            l(&self.sts_in_flight),
        );
        self.sts_latency.render(
            &mut out,
            "mongomux_sts_request_seconds",
            "Time an IAM login spent on STS, queueing included.",
        );
        self.sts_queue_wait.render(
            &mut out,
            "mongomux_sts_queue_wait_seconds",
            "Time an IAM login waited for an STS slot.",
        );
        self.sts_call.render(
            &mut out,
            "mongomux_sts_call_seconds",
            "Time of the STS GetCallerIdentity call itself.",
        );
        let _ = writeln!(out, "# HELP mongomux_sts_requests_total STS GetCallerIdentity calls by result (ok, denied, throttled, timeout, error).\n# TYPE mongomux_sts_requests_total counter");
        for (r, n) in &self.sts_results {
            let _ = writeln!(
                out,
                "mongomux_sts_requests_total{{result=\"{r}\"}} {}",
                c(n)
            );
        }
        let _ = writeln!(out, "# HELP mongomux_gateway_errors_total Error replies generated by the gateway itself, by code.\n# TYPE mongomux_gateway_errors_total counter");
        for (code, n) in &self.gateway_errors {
            let _ = writeln!(
                out,
                "mongomux_gateway_errors_total{{code=\"{code}\"}} {}",
                c(n)
            );
        }
        out
    }
}

/// Serves `GET /metrics` until `shutdown` turns true. Each scrape is one short-lived task with
/// a deadline and a bounded request size.
pub async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((mut sock, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics") {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "not found; try /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_documented_names() {
        let m = Metrics::default();
        m.count_op("find");
        m.count_op("weirdCommand");
        m.checkout_wait.observe(Duration::from_micros(300));
        m.count_error(262);
        let text = m.render();
        for name in [
            "mongomux_client_connections ",
            "mongomux_client_connections_denied_total ",
            "mongomux_upstream_connections ",
            "mongomux_checkout_wait_seconds_bucket",
            "mongomux_operations_total{command=\"find\"} 1",
            "mongomux_operations_total{command=\"other\"} 1",
            "mongomux_gateway_errors_total{code=\"262\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
