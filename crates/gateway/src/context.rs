//! The shared state every task receives as an `Arc<Context>`: configuration (behind an
//! `ArcSwap` so a reload swaps it atomically), the upstream pool, metrics, the drain signal and
//! the id counters. There is no other shared state: no globals.

use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bson::oid::ObjectId;
use tokio::sync::watch;

use crate::access::AccessList;
use crate::config::Config;
use crate::limits::{AuthLimiter, SourceCounts};
use crate::metrics::Metrics;
use crate::routing::Routing;
use crate::upstream::{Pool, PoolSettings};
use crate::users::UserStore;

/// Shared state of one running gateway.
#[derive(Debug)]
pub struct Context {
    /// The configuration in force.
    pub config: ArcSwap<Config>,
    /// The listener's TLS settings, when TLS is on; swapped on reload.
    pub tls: ArcSwap<Option<Arc<rustls::ServerConfig>>>,
    /// Who may connect; swapped on reload.
    pub access: ArcSwap<AccessList>,
    /// Gateway users; swapped on reload.
    pub users: ArcSwap<UserStore>,
    /// Open connections per source.
    pub sources: Arc<SourceCounts>,
    /// Authentication failures per source.
    pub auth_limiter: AuthLimiter,
    /// Cursor ownership, session users, pinned transactions.
    pub routing: Routing,
    /// STS client for MONGODB-AWS logins.
    pub sts: crate::sts::Sts,
    /// Upstream connections.
    pub pool: Arc<Pool>,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// Turns true when the gateway starts draining.
    pub draining: watch::Receiver<bool>,
    /// Bumped on every configuration reload; sessions re-check their identity.
    pub reloads: watch::Receiver<u64>,
    reload_tx: watch::Sender<u64>,
    /// Identifies this gateway process to load-balanced drivers (`serviceId`).
    pub service_id: ObjectId,
    connection_ids: AtomicI64,
    reply_ids: AtomicI32,
}

impl Context {
    /// Builds the context for a validated configuration.
    pub fn new(
        config: Config,
        draining: watch::Receiver<bool>,
    ) -> Result<Arc<Context>, crate::GatewayError> {
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
        let access = config.access_list()?;
        let tls = config.tls_server()?;
        let users = UserStore::from_config(&config.users)?;
        let (reload_tx, reloads) = watch::channel(0);
        let sts = crate::sts::Sts::new(
            config.sts_endpoint()?,
            config.sts_max_concurrency,
            config.sts_timeout,
            metrics.clone(),
        )?;
        Ok(Arc::new(Context {
            sts,
            tls: ArcSwap::from_pointee(tls),
            reloads,
            reload_tx,
            users: ArcSwap::from_pointee(users),
            auth_limiter: AuthLimiter::default(),
            sources: Arc::default(),
            routing: Routing::default(),
            access: ArcSwap::from_pointee(access),
            pool: Pool::new(settings, metrics.clone()),
            config: ArcSwap::from_pointee(config),
            metrics,
            draining,
            service_id: ObjectId::new(),
            connection_ids: AtomicI64::new(0),
            reply_ids: AtomicI32::new(0),
        }))
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

    /// Tells every session that the configuration changed.
    pub fn signal_reload(&self) {
        self.reload_tx.send_modify(|n| *n += 1);
    }

    /// Whether the gateway is draining.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }
}
