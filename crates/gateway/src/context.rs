//! The parts of a running gateway that client sessions share, each small and with one job:
//! the reloadable settings ([`Live`]), the upstream pool, the routing tables, the metrics, the
//! edge-authentication services ([`Edge`]) and the id counters ([`Ids`]). They are built once at
//! start-up by [`Shared::new`] and never replaced; what changes at run time lives behind the
//! `ArcSwap`s of [`Live`]. No part points back at its owner, and there are no globals.

use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bson::oid::ObjectId;
use tokio::sync::watch;

use crate::access::AccessList;
use crate::config::Config;
use crate::limits::{AuthLimiter, SourceCounts};
use crate::metrics::Metrics;
use crate::route::Routes;
use crate::sts::Sts;
use crate::upstream::{Pool, PoolSettings};
use crate::users::UserStore;

/// The settings in force, swapped whole on reload, and the signal that tells sessions so.
#[derive(Debug)]
pub struct Live {
    /// The configuration in force.
    pub config: ArcSwap<Config>,
    /// The listener's TLS settings, when TLS is on.
    pub tls: ArcSwap<Option<Arc<rustls::ServerConfig>>>,
    /// Who may connect.
    pub access: ArcSwap<AccessList>,
    /// Gateway users.
    pub users: ArcSwap<UserStore>,
    reload_tx: watch::Sender<u64>,
}

impl Live {
    /// A receiver that changes on every reload; sessions re-check their identity then.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reload_tx.subscribe()
    }

    /// Tells every session that the configuration changed.
    pub fn signal_reload(&self) {
        self.reload_tx.send_modify(|n| *n += 1);
    }
}

/// Services of edge authentication shared by all sessions.
#[derive(Debug)]
pub struct Edge {
    /// STS client for MONGODB-AWS logins.
    pub sts: Sts,
    /// Authentication failures per source.
    pub limiter: AuthLimiter,
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
    /// Upstream connections.
    pub pool: Arc<Pool>,
    /// Cursor ownership, sessions, pinned transactions.
    pub routes: Arc<Routes>,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// STS and the failed-login throttle.
    pub edge: Arc<Edge>,
    /// Id counters.
    pub ids: Arc<Ids>,
    /// Open connections per source (the listener's).
    pub sources: Arc<SourceCounts>,
    /// Turns true when the gateway starts draining.
    pub draining: watch::Receiver<bool>,
}

impl Shared {
    /// Builds the parts for a validated configuration.
    pub fn new(
        config: Config,
        draining: watch::Receiver<bool>,
    ) -> Result<Shared, crate::GatewayError> {
        let metrics = Arc::new(Metrics::default());
        let upstream_tls = match config.upstream().tls {
            true => Some(crate::tls::client_config(
                config.upstream().tls_ca_file.as_ref(),
            )?),
            false => None,
        };
        let settings = PoolSettings {
            tls: upstream_tls,
            upstream: config.upstream().clone(),
            size: config.pool_size,
            max_pinned: config.pinned_limit(),
            checkout_timeout: config.checkout_timeout,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
        };
        let edge = Edge {
            sts: Sts::new(
                config.sts_endpoint()?,
                config.sts_max_concurrency,
                config.sts_timeout,
                metrics.clone(),
            )?,
            limiter: AuthLimiter::default(),
        };
        let live = Live {
            tls: ArcSwap::from_pointee(config.tls_server()?),
            access: ArcSwap::from_pointee(config.access_list()?),
            users: ArcSwap::from_pointee(UserStore::from_config(&config.users)?),
            config: ArcSwap::from_pointee(config),
            reload_tx: watch::channel(0).0,
        };
        Ok(Shared {
            live: Arc::new(live),
            pool: Pool::new(settings, metrics.clone()),
            routes: Arc::new(Routes::new(metrics.clone())),
            edge: Arc::new(edge),
            ids: Arc::new(Ids::new()),
            sources: Arc::default(),
            metrics,
            draining,
        })
    }

    /// Whether the gateway is draining.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }
}
