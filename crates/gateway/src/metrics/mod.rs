//! Prometheus metrics: every metric the gateway exposes, and (in [`http`]) the small endpoint
//! that serves them.
//!
//! The values are kept and rendered by the `prometheus` crate (the TiKV client), not by hand.
//! It was chosen over `prometheus-client` because it writes the classic text format 0.0.4 with
//! every name exactly as registered. The documented names, which dashboards depend on, include
//! a gauge `mongomux_client_connections` beside a counter `mongomux_client_connections_total`;
//! `prometheus-client` appends `_total` to counter names and writes OpenMetrics, where those two
//! fall into one family with two `# TYPE` lines, which Prometheus's text parser rejects. Its
//! default protobuf feature is off: only the text encoder is used.
//!
//! All metrics live in a [`Registry`] owned by [`Metrics`], never the crate's global default
//! registry, so two gateways in one process (tests, benchmarks) do not share counters.
//!
//! Recording on the hot path is a relaxed atomic add on a handle resolved at start-up. Labelled
//! families get all their children once, here, from closed label sets (a fixed command list plus
//! `other`, the error codes the gateway generates, the STS results): a client cannot grow memory
//! by inventing command names, and no map lookup or lock is taken per request. The README's
//! Metrics table lists every metric; a unit test keeps the two in step.

pub mod bounded;
pub mod http;
pub mod latency;
mod register;
#[cfg(test)]
mod tests;

use std::time::Duration;

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use bounded::BoundedCounters;
pub use http::serve;
use register::Register;

/// A counter: only goes up (`inc`).
pub type Counter = prometheus::IntCounter;
/// A gauge: goes up and down (`inc`, `dec`).
pub type Gauge = prometheus::IntGauge;

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

/// STS call results, the `result` label of `mongomux_sts_requests_total`; `refused` counts
/// signed requests the gateway refused itself (malformed, injected, replayed), with no call.
const STS_RESULTS: &[&str] = &["ok", "denied", "throttled", "timeout", "error", "refused"];

/// Error codes the gateway generates itself, the `code` label of
/// `mongomux_gateway_errors_total`. Other codes are not counted, so the label set stays closed.
const ERROR_CODES: &[i32] = &[2, 6, 9, 13, 18, 22, 43, 91, 115, 133, 251, 262, 352, 10334];

/// HTTP statuses of the Data API, the `status` label of `mongomux_data_api_requests_total`.
pub const DATA_API_STATUSES: &[&str] = &[
    "200", "201", "400", "401", "403", "404", "405", "406", "408", "413", "415", "500", "503",
];

/// Why the gateway closed a client connection, the `reason` label of
/// `mongomux_client_connections_cut_total`.
pub const CUT_REASONS: &[&str] = &["message_too_large", "message_timeout", "write_timeout"];

/// Why an admitted client lost its right to stay connected, the `reason` label of
/// `mongomux_client_connections_revoked_total`: its address is no longer in the access list
/// (entry expired or removed), or its user was removed or changed by a reload.
pub const REVOKE_REASONS: &[&str] = &["access", "user"];

/// Upper bounds, in seconds, of the latency histogram buckets (`+Inf` is implied).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram with the gateway's fixed buckets, fed with durations.
#[derive(Debug, Clone)]
pub struct Histogram(prometheus::Histogram);

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// All of the gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Client connections open now.
    pub client_connections: Gauge,
    /// Client connections accepted since start.
    pub client_connections_total: Counter,
    /// Client connections refused (max-clients reached, descriptor limit, draining).
    pub client_connections_rejected: Counter,
    /// Client connections refused by the access list.
    pub client_connections_denied: Counter,
    /// Client connections refused at the PROXY protocol step, in
    /// [`crate::proxy::REFUSAL_LABELS`] order.
    proxy_refused: Vec<Counter>,
    /// Upstream connections open now (idle or in use).
    pub upstream_connections: Gauge,
    /// Upstream connections checked out now.
    pub upstream_in_use: Gauge,
    /// Upstream connections pinned by open transactions now.
    pub upstream_pinned: Gauge,
    /// Upstream connections opened since start.
    pub upstream_connects_total: Counter,
    /// Upstream connection attempts that failed.
    pub upstream_connect_failures_total: Counter,
    /// Upstream connections closed because they were broken, dirty or idle too long.
    pub upstream_discarded_total: Counter,
    /// Time requests waited for an upstream connection.
    pub checkout_wait: Histogram,
    /// Checkouts that timed out.
    pub checkout_timeouts_total: Counter,
    /// Time from receiving a forwarded request to having its reply, upstream included.
    pub upstream_latency: Histogram,
    /// Cursors open now that clients own.
    pub open_cursors: Gauge,
    /// Cursors another gateway opened that this one continued and took into its table.
    pub cursors_adopted_total: Counter,
    /// Cursors forgotten when their session's last client connection left, left open upstream.
    pub cursors_handed_off_total: Counter,
    /// Bytes of large client messages and replies held in the in-flight budget now.
    pub inflight_bytes: Gauge,
    /// Client connections the gateway closed for holding resources too long, in
    /// [`CUT_REASONS`] order.
    clients_cut: Vec<Counter>,
    /// Client connections closed because their access or user was revoked, in
    /// [`REVOKE_REASONS`] order.
    clients_revoked: Vec<Counter>,
    /// Transactions aborted by the gateway after `transaction_idle_timeout`.
    pub transactions_reaped_total: Counter,
    /// 1 while the gateway drains (after SIGTERM), else 0.
    pub draining: Gauge,
    /// Operations by the client's `appName`, bounded ([`bounded`]).
    pub app_ops: BoundedCounters,
    /// Operations by gateway user, bounded ([`bounded`]).
    pub user_ops: BoundedCounters,
    /// STS calls running now.
    pub sts_in_flight: Gauge,
    /// Time an IAM login spent on STS, queueing included.
    pub sts_latency: Histogram,
    /// Time an IAM login waited for an STS slot.
    pub sts_queue_wait: Histogram,
    /// Time of the STS call itself.
    pub sts_call: Histogram,
    /// STS calls by result, in [`STS_RESULTS`] order.
    sts_results: Vec<Counter>,
    /// Operations by command name, in [`COMMANDS`] order, then `other`.
    ops: Vec<Counter>,
    /// Per-command times and failures for the admin surface (not exported to Prometheus).
    pub commands: latency::CommandStats,
    /// Data API requests by action and HTTP status.
    data_api: IntCounterVec,
    /// Time of a Data API request, from its head to its answer.
    pub data_api_latency: Histogram,
    /// Error replies the gateway itself generated, in [`ERROR_CODES`] order.
    gateway_errors: Vec<Counter>,
    /// Upstream members by address and state (1 for the current state). Members are bounded
    /// by the topology (at most 64), and a member that leaves is removed.
    member_state: IntGaugeVec,
    /// Pooled connections open per member.
    member_connections: IntGaugeVec,
    /// The state each member is shown in now, so a change removes the old series.
    member_shown: Mutex<HashMap<String, &'static str>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Register(Registry::new());
        Metrics {
            client_connections: r.gauge(
                "mongomux_client_connections",
                "Client connections open now.",
            ),
            client_connections_total: r.counter(
                "mongomux_client_connections_total",
                "Client connections accepted.",
            ),
            client_connections_rejected: r.counter(
                "mongomux_client_connections_rejected_total",
                "Client connections refused (limits, draining).",
            ),
            client_connections_denied: r.counter(
                "mongomux_client_connections_denied_total",
                "Client connections refused by the IP access list.",
            ),
            proxy_refused: r.counter_family(
                "mongomux_client_connections_proxy_refused_total",
                "Client connections refused at the PROXY protocol step, by reason.",
                "reason",
                crate::proxy::REFUSAL_LABELS.iter().copied(),
            ),
            upstream_connections: r.gauge(
                "mongomux_upstream_connections",
                "Upstream connections open now, idle or in use.",
            ),
            upstream_in_use: r.gauge(
                "mongomux_upstream_connections_in_use",
                "Upstream connections checked out now.",
            ),
            upstream_pinned: r.gauge(
                "mongomux_upstream_connections_pinned",
                "Upstream connections pinned by open transactions.",
            ),
            upstream_connects_total: r.counter(
                "mongomux_upstream_connects_total",
                "Upstream connections opened.",
            ),
            upstream_connect_failures_total: r.counter(
                "mongomux_upstream_connect_failures_total",
                "Failed upstream connection attempts.",
            ),
            upstream_discarded_total: r.counter(
                "mongomux_upstream_discarded_total",
                "Upstream connections closed as broken, dirty or idle.",
            ),
            checkout_wait: r.histogram(
                "mongomux_checkout_wait_seconds",
                "Time a request waited for an upstream connection.",
            ),
            checkout_timeouts_total: r.counter(
                "mongomux_checkout_timeouts_total",
                "Checkouts that hit --checkout-timeout.",
            ),
            upstream_latency: r.histogram(
                "mongomux_upstream_request_seconds",
                "Time from forwarding a request to receiving its reply.",
            ),
            open_cursors: r.gauge(
                "mongomux_open_cursors",
                "Cursors owned by connected clients.",
            ),
            cursors_adopted_total: r.counter(
                "mongomux_cursors_adopted_total",
                "Cursors another gateway opened that a getMore continued here (shared session_key).",
            ),
            cursors_handed_off_total: r.counter(
                "mongomux_cursors_handed_off_total",
                "Cursors forgotten here when their session's last client connection left, left open for other gateways (shared session_key).",
            ),
            inflight_bytes: r.gauge(
                "mongomux_inflight_bytes",
                "Bytes of large client messages and replies held in the in-flight budget.",
            ),
            clients_cut: r.counter_family(
                "mongomux_client_connections_cut_total",
                "Client connections closed by the gateway: a message too large before authentication, a message not received within message_timeout, a reply not read within client_write_timeout.",
                "reason",
                CUT_REASONS.iter().copied(),
            ),
            clients_revoked: r.counter_family(
                "mongomux_client_connections_revoked_total",
                "Client connections closed after their in-flight operation because the access list no longer admits their address (access) or their user was removed or changed by a reload (user).",
                "reason",
                REVOKE_REASONS.iter().copied(),
            ),
            transactions_reaped_total: r.counter(
                "mongomux_transactions_reaped_total",
                "Idle transactions aborted after transaction_idle_timeout, their pinned connection returned.",
            ),
            draining: r.gauge(
                "mongomux_draining",
                "1 while the gateway drains after SIGTERM/SIGINT (it takes no new clients), else 0.",
            ),
            app_ops: BoundedCounters::new(r.add(
                IntCounterVec::new(
                    Opts::new(
                        "mongomux_app_operations_total",
                        "Operations by the client's appName (the first 100 values; later ones as _other; none: no appName).",
                    ),
                    &["app"],
                )
                .expect("family"),
            )),
            user_ops: BoundedCounters::new(r.add(
                IntCounterVec::new(
                    Opts::new(
                        "mongomux_user_operations_total",
                        "Operations by gateway user (the first 100 users; later ones as _other).",
                    ),
                    &["user"],
                )
                .expect("family"),
            )),
            commands: latency::CommandStats::new(COMMANDS),
            data_api: r.add(
                IntCounterVec::new(
                    Opts::new(
                        "mongomux_data_api_requests_total",
                        "HTTP Data API requests by action (unknown: no such action) and HTTP status.",
                    ),
                    &["action", "status"],
                )
                .expect("family"),
            ),
            data_api_latency: r.histogram(
                "mongomux_data_api_request_seconds",
                "Time of an HTTP Data API request, from its head to its answer.",
            ),
            ops: r.counter_family(
                "mongomux_operations_total",
                "Operations received, by command.",
                "command",
                COMMANDS.iter().copied().chain(["other"]),
            ),
            sts_in_flight: r.gauge(
                "mongomux_sts_in_flight",
                "STS GetCallerIdentity calls running now.",
            ),
            sts_latency: r.histogram(
                "mongomux_sts_request_seconds",
                "Time an IAM login spent on STS, queueing included.",
            ),
            sts_queue_wait: r.histogram(
                "mongomux_sts_queue_wait_seconds",
                "Time an IAM login waited for an STS slot.",
            ),
            sts_call: r.histogram(
                "mongomux_sts_call_seconds",
                "Time of the STS GetCallerIdentity call itself.",
            ),
            sts_results: r.counter_family(
                "mongomux_sts_requests_total",
                "STS GetCallerIdentity calls by result (ok, denied, throttled, timeout, error), and requests refused before any call (refused).",
                "result",
                STS_RESULTS.iter().copied(),
            ),
            gateway_errors: r.counter_family(
                "mongomux_gateway_errors_total",
                "Error replies generated by the gateway itself, by code.",
                "code",
                ERROR_CODES.iter().map(|c| c.to_string()),
            ),
            member_state: r.add(
                IntGaugeVec::new(
                    Opts::new(
                        "mongomux_upstream_member_state",
                        "Upstream members by address and state (1 = the member's current state).",
                    ),
                    &["address", "state"],
                )
                .expect("family"),
            ),
            member_connections: r.add(
                IntGaugeVec::new(
                    Opts::new(
                        "mongomux_upstream_member_connections",
                        "Pooled upstream connections open per member.",
                    ),
                    &["address"],
                )
                .expect("family"),
            ),
            member_shown: Mutex::new(HashMap::new()),
            registry: r.0,
        }
    }
}

impl Metrics {
    /// Counts a client connection closed for `reason`, one of [`CUT_REASONS`].
    pub fn count_cut(&self, reason: &str) {
        if let Some(i) = CUT_REASONS.iter().position(|r| *r == reason) {
            self.clients_cut[i].inc();
        }
    }

    /// Counts a client connection closed for `reason`, one of [`REVOKE_REASONS`].
    pub fn count_revoked(&self, reason: &str) {
        if let Some(i) = REVOKE_REASONS.iter().position(|r| *r == reason) {
            self.clients_revoked[i].inc();
        }
    }

    /// Counts a Data API request. `action` is one of the API's action names or `unknown`
    /// (the caller's closed set); statuses outside [`DATA_API_STATUSES`] count as `other`.
    pub fn count_data_api(&self, action: &'static str, status: u16) {
        let status = DATA_API_STATUSES
            .iter()
            .find(|s| s.parse() == Ok(status))
            .copied()
            .unwrap_or("other");
        self.data_api.with_label_values(&[action, status]).inc();
    }

    /// Counts one operation; returns the command's index, which is also its row in
    /// [`Metrics::commands`] (both follow [`COMMANDS`]), so the name is looked up once.
    pub fn count_op(&self, command: &str) -> usize {
        let i = COMMANDS
            .iter()
            .position(|c| c.eq_ignore_ascii_case(command))
            .unwrap_or(OTHER);
        self.ops[i].inc();
        i
    }

    /// Counts an STS call by result; results outside the documented set are not counted.
    pub fn count_sts(&self, result: &str) {
        if let Some(i) = STS_RESULTS.iter().position(|r| *r == result) {
            self.sts_results[i].inc();
        }
    }

    /// Counts a connection refused at the PROXY protocol step; reasons outside
    /// [`crate::proxy::REFUSAL_LABELS`] are not counted.
    pub fn count_proxy_refused(&self, reason: &str) {
        let labels = crate::proxy::REFUSAL_LABELS;
        if let Some(i) = labels.iter().position(|r| *r == reason) {
            self.proxy_refused[i].inc();
        }
    }

    /// Counts an error reply the gateway generated; codes outside the fixed set are not counted.
    pub fn count_error(&self, code: i32) {
        if let Some(i) = ERROR_CODES.iter().position(|c| *c == code) {
            self.gateway_errors[i].inc();
        }
    }

    /// Shows `address` in `state` with `connections` pooled connections open.
    pub fn set_member(&self, address: &str, state: &'static str, connections: usize) {
        let mut shown = self.member_shown.lock().expect("metrics lock");
        match shown.insert(address.to_string(), state) {
            Some(old) if old == state => {}
            Some(old) => {
                let _ = self.member_state.remove_label_values(&[address, old]);
                self.member_state
                    .with_label_values(&[address, state])
                    .set(1);
            }
            None => self
                .member_state
                .with_label_values(&[address, state])
                .set(1),
        }
        let n = i64::try_from(connections).unwrap_or(i64::MAX);
        self.member_connections.with_label_values(&[address]).set(n);
    }

    /// Removes the series of a member that left the topology.
    pub fn forget_member(&self, address: &str) {
        let mut shown = self.member_shown.lock().expect("metrics lock");
        if let Some(old) = shown.remove(address) {
            let _ = self.member_state.remove_label_values(&[address, old]);
            let _ = self.member_connections.remove_label_values(&[address]);
        }
    }

    /// The members shown now (for the topology to forget those that left).
    pub fn shown_members(&self) -> Vec<String> {
        let shown = self.member_shown.lock().expect("metrics lock");
        shown.keys().cloned().collect()
    }

    /// Reads an operation count (for tests and benchmarks).
    pub fn op_count(&self, command: &str) -> u64 {
        let i = COMMANDS.iter().position(|c| *c == command).unwrap_or(OTHER);
        self.ops[i].get()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // The encoder only fails on a family without samples, which fixed definitions never
        // produce; a scrape still gets whatever was written.
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "rendering metrics failed");
        }
        out
    }
}
