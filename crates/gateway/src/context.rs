//! The parts of a running gateway that client sessions share, each small and with one job:
//! the reloadable settings ([`Live`]), the upstream pool, the routing tables, the metrics, the
//! edge-authentication services ([`Edge`]), the id counters ([`Ids`]) and the operators' state
//! ([`Admin`]). They are built once at
//! start-up by [`Shared::new`] and never replaced; what changes at run time lives behind the
//! `ArcSwap`s of [`Live`]. No part points back at its owner, and there are no globals.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bson::oid::ObjectId;
use tokio::sync::watch;

use crate::admin::report::Parts;
use crate::admin::Admin;
use crate::identity::session_key::SessionKey;
use crate::identity::sts::Sts;
use crate::limits::client_limit::ClientLimit;
use crate::limits::inflight::InflightBudget;
use crate::limits::{AuthLimiter, SourceCounts};
use crate::metrics::Metrics;
use crate::route::Routes;
use crate::settings::Settings;
use crate::upstream::topology::{PoolShape, Topology};
use crate::upstream::PoolLimits;

/// The settings in force, swapped whole on reload, and the signal that tells sessions so.
#[derive(Debug)]
pub struct Live {
    /// The settings in force (users, access list and TLS included).
    pub settings: ArcSwap<Settings>,
    /// Bumped whenever who may stay connected can have changed: on every reload, and when an
    /// access-list entry expires. One channel for both, so an idle session waits on one
    /// receiver, not one timer of its own.
    recheck_tx: watch::Sender<u64>,
    reloads: AtomicU64,
}

impl Live {
    /// A receiver that changes on every reload and every access-list expiry; sessions re-check
    /// their address and identity then.
    pub fn rechecks(&self) -> watch::Receiver<u64> {
        self.recheck_tx.subscribe()
    }

    /// How many reloads were applied since start.
    pub fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Tells every session that the configuration changed.
    pub fn signal_reload(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        self.signal_recheck();
    }

    /// Tells every session to judge its address and identity again (an access-list entry
    /// expired).
    pub fn signal_recheck(&self) {
        self.recheck_tx.send_modify(|n| *n += 1);
    }
}

/// Services of edge authentication shared by all sessions.
#[derive(Debug)]
pub struct Edge {
    /// STS client for MONGODB-AWS logins.
    pub sts: Sts,
    /// Authentication failures per source.
    pub limiter: AuthLimiter,
    /// The key of session namespacing in force (configured or generated; restart-only).
    pub session_key: SessionKey,
}

/// Identifiers the gateway hands out.
#[derive(Debug)]
pub struct Ids {
    /// Identifies this gateway process to load-balanced drivers (`serviceId`).
    pub service_id: ObjectId,
    connection_ids: AtomicI64,
    reply_ids: AtomicI32,
}

impl Ids {
    fn new() -> Ids {
        Ids {
            service_id: ObjectId::new(),
            connection_ids: AtomicI64::new(0),
            reply_ids: AtomicI32::new(0),
        }
    }

    /// A fresh `connectionId` for the handshake reply.
    pub fn next_connection_id(&self) -> i64 {
        self.connection_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A requestID for a reply the gateway sends to a client.
    pub fn next_reply_id(&self) -> i32 {
        self.reply_ids
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
    }
}

/// Everything a client session is handed: cheap clones of the shared parts.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Settings in force.
    pub live: Arc<Live>,
    /// The upstream deployment: members, their monitors and pools.
    pub upstream: Arc<Topology>,
    /// Cursor ownership, sessions, pinned transactions.
    pub routes: Arc<Routes>,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// STS and the failed-login throttle.
    pub edge: Arc<Edge>,
    /// Id counters.
    pub ids: Arc<Ids>,
    /// How many clients may be served at once (the listener's; resized on reload).
    pub clients: Arc<ClientLimit>,
    /// Open connections per source (the listener's).
    pub sources: Arc<SourceCounts>,
    /// Bytes of large messages and replies held now, over all clients.
    pub inflight: InflightBudget,
    /// Turns true when the gateway starts draining.
    pub draining: watch::Receiver<bool>,
    /// Connected clients, the pause gate, the reload hook.
    pub admin: Arc<Admin>,
}

impl Shared {
    /// Builds the parts for validated settings whose upstream names its hosts (for
    /// `mongodb+srv`, see [`Shared::with_seeds`]).
    pub fn new(settings: Settings, draining: watch::Receiver<bool>) -> Shared {
        let upstream = settings.upstream.clone();
        let seeds = Topology::seeds_of(&upstream);
        Shared::with_seeds(settings, upstream, seeds, draining)
    }

    /// Builds the parts, the upstream (`upstream`, its TXT options folded in) starting from
    /// `seeds`.
    pub fn with_seeds(
        settings: Settings,
        upstream: crate::upstream::UpstreamConfig,
        seeds: Vec<String>,
        draining: watch::Receiver<bool>,
    ) -> Shared {
        let mut upstream = upstream;
        if let Some(address) = settings.upstream_resolver {
            match crate::upstream::srv::SrvResolver::new(Some(address)) {
                Ok(r) => upstream.resolver = Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "the upstream resolver cannot be used; member names go to the system resolver")
                }
            }
        }
        let metrics = Arc::new(Metrics::default());
        let edge = Edge {
            sts: Sts::new(
                settings.sts_endpoint.clone(),
                settings.sts_tls.clone(),
                settings.sts_max_concurrency,
                settings.sts_timeout,
                metrics.clone(),
            ),
            limiter: AuthLimiter::default(),
            session_key: SessionKey::effective(settings.session_key.as_ref()),
        };
        Shared {
            upstream: Topology::new(
                upstream,
                seeds,
                settings.upstream_tls.clone(),
                pool_shape(&settings),
                metrics.clone(),
            ),
            clients: Arc::new(ClientLimit::new(settings.max_clients)),
            inflight: InflightBudget::new(
                settings.max_inflight_bytes,
                metrics.inflight_bytes.clone(),
            ),
            live: Arc::new(Live {
                settings: ArcSwap::from_pointee(settings),
                recheck_tx: watch::channel(0).0,
                reloads: AtomicU64::new(0),
            }),
            routes: Arc::new(if edge.session_key.is_configured() {
                Routes::with_shared_sessions(metrics.clone())
            } else {
                Routes::new(metrics.clone())
            }),
            edge: Arc::new(edge),
            ids: Arc::new(Ids::new()),
            sources: Arc::default(),
            metrics,
            draining,
            admin: Arc::default(),
        }
    }

    /// Whether the gateway is draining.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Runs `f` on the parts the operators' reports read.
    pub fn with_report_parts<T>(&self, f: impl FnOnce(&Parts<'_>) -> T) -> T {
        let settings = self.live.settings.load();
        f(&Parts {
            topology: &self.upstream,
            routes: &self.routes,
            metrics: &self.metrics,
            admin: &self.admin,
            settings: &settings,
            draining: self.is_draining(),
            reloads: self.live.reload_count(),
        })
    }
}

/// How each member's pool is shaped.
pub fn pool_shape(settings: &Settings) -> PoolShape {
    PoolShape {
        size: settings.pool_size,
        total: settings.max_upstream_connections,
        max_pinned: settings.max_pinned,
        limits: PoolLimits {
            checkout_timeout: settings.checkout_timeout,
            connect_timeout: settings.connect_timeout,
            idle_timeout: settings.idle_timeout,
        },
    }
}
