//! The reports operators read, built from the gateway's parts: the gateway as a whole, its
//! pools per member, its upstream connections, its clients and per-command figures. One set of
//! serializable values feeds the admin commands (as BSON) and the metrics listener (as JSON),
//! so the two can never disagree on a field.

use serde::Serialize;

use super::clients::{ClientFilter, ClientReport};
use super::Admin;
use crate::metrics::latency::CommandRow;
use crate::metrics::Metrics;
use crate::route::Routes;
use crate::settings::Settings;
use crate::upstream::pool_stats::{ConnReport, PoolReport};
use crate::upstream::topology::Topology;

/// The parts a report reads (borrowed from the gateway's shared state).
pub struct Parts<'a> {
    /// The upstream deployment.
    pub topology: &'a Topology,
    /// Cursors and sessions.
    pub routes: &'a Routes,
    /// Counters.
    pub metrics: &'a Metrics,
    /// Clients and the pause gate.
    pub admin: &'a Admin,
    /// The settings in force.
    pub settings: &'a Settings,
    /// Whether the gateway is draining.
    pub draining: bool,
    /// Reloads applied since start.
    pub reloads: u64,
}

/// The gateway as a whole.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayReport {
    /// mongomux's version.
    pub version: &'static str,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// Seconds since.
    pub uptime_secs: u64,
    /// Clients connected now.
    pub clients: usize,
    /// Most clients served at once.
    pub max_clients: usize,
    /// Whether it is draining (SIGTERM).
    pub draining: bool,
    /// The pause in force, if any.
    pub paused: Option<PauseReport>,
    /// Reloads applied since start.
    pub reloads: u64,
    /// The upstream's shape (`Single`, `ReplicaSetWithPrimary`, `Sharded`, ...).
    pub topology: &'static str,
    /// Logical sessions the gateway tracks now.
    pub sessions: usize,
    /// Cursors open now.
    pub cursors: usize,
}

/// A pause in force.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseReport {
    /// When it started (RFC 3339, UTC).
    pub since: String,
    /// How long each request waits at most, in milliseconds.
    #[serde(rename = "maxWaitMS")]
    pub max_wait_ms: u64,
    /// Requests waiting now.
    pub waiting: usize,
}

/// One member's pool, with what monitoring says of the member.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberPool {
    /// The pool's figures.
    #[serde(flatten)]
    pub pool: PoolReport,
    /// The member's state as last seen, named as in `mongomux_upstream_member_state`
    /// (`primary`, `secondary`, `standalone`, `mongos`, `unknown`, ...).
    pub server_type: &'static str,
    /// Its smoothed round-trip time, in microseconds, once measured.
    pub rtt_micros: Option<u64>,
}

/// Clients, at most as many as asked for.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientsReport {
    /// How many matched.
    pub total: usize,
    /// Whether `clients` stops short of `total`.
    pub truncated: bool,
    /// The clients, oldest connection first.
    pub clients: Vec<ClientReport>,
}

/// Everything at once: what `GET /admin/status` and `mongomux status` show.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The gateway as a whole.
    pub gateway: GatewayReport,
    /// Pools per member.
    pub pools: Vec<MemberPool>,
    /// Upstream connections.
    pub servers: Vec<ConnReport>,
    /// Clients.
    pub clients: ClientsReport,
    /// Per-command figures.
    pub commands: Vec<CommandRow>,
}

/// The gateway as a whole.
pub fn gateway(p: &Parts<'_>) -> GatewayReport {
    let started = p.admin.started;
    let (sessions, cursors) = p.routes.counts();
    GatewayReport {
        version: env!("CARGO_PKG_VERSION"),
        started_at: humantime::format_rfc3339_seconds(started).to_string(),
        uptime_secs: started.elapsed().map_or(0, |d| d.as_secs()),
        clients: p.admin.clients.len(),
        max_clients: p.settings.max_clients,
        draining: p.draining,
        paused: p.admin.pause.current().map(|pause| PauseReport {
            since: humantime::format_rfc3339_seconds(pause.since).to_string(),
            max_wait_ms: u64::try_from(pause.max_wait.as_millis()).unwrap_or(u64::MAX),
            waiting: p.admin.pause.waiting(),
        }),
        reloads: p.reloads,
        topology: p.topology.description().kind.name(),
        sessions,
        cursors,
    }
}

/// Pools per member, in address order.
pub fn pools(p: &Parts<'_>) -> Vec<MemberPool> {
    let desc = p.topology.description();
    p.topology
        .member_pools()
        .into_iter()
        .map(|(address, pool)| {
            let member = desc.servers.get(&address);
            MemberPool {
                pool: pool.report(&address),
                server_type: member.map_or("unknown", |m| m.server_type.name()),
                rtt_micros: member
                    .and_then(|m| m.rtt)
                    .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            }
        })
        .collect()
}

/// Every upstream connection, by member.
pub fn servers(p: &Parts<'_>) -> Vec<ConnReport> {
    p.topology
        .member_pools()
        .into_iter()
        .flat_map(|(_, pool)| pool.connections())
        .collect()
}

/// The clients `filter` matches, at most `limit`.
pub fn clients(p: &Parts<'_>, filter: &ClientFilter, limit: usize) -> ClientsReport {
    let (clients, total) = p
        .admin
        .clients
        .list(filter, limit, |id| p.routes.cursors_opened_by(id));
    ClientsReport {
        total,
        truncated: clients.len() < total,
        clients,
    }
}

/// Per-command figures, most frequent first.
pub fn commands(p: &Parts<'_>) -> Vec<CommandRow> {
    p.metrics.commands.rows()
}

/// Everything, with at most `client_limit` clients.
pub fn status(p: &Parts<'_>, client_limit: usize) -> Status {
    Status {
        gateway: gateway(p),
        pools: pools(p),
        servers: servers(p),
        clients: clients(p, &ClientFilter::default(), client_limit),
        commands: commands(p),
    }
}
