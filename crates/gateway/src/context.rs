//! The shared state every task receives as an `Arc<Context>`: the validated settings (behind an
//! `ArcSwap` so a reload swaps them atomically), the client limit, the upstream pool, metrics,
//! the drain signal and the id counters. There is no other shared state: no globals.

use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bson::oid::ObjectId;
use tokio::sync::watch;

use crate::client_limit::ClientLimit;
use crate::limits::{AuthLimiter, SourceCounts};
use crate::metrics::Metrics;
use crate::routing::Routing;
use crate::settings::Settings;
use crate::upstream::Pool;

/// Shared state of one running gateway.
#[derive(Debug)]
pub struct Context {
    /// The settings in force (users, access list and TLS included); swapped whole on reload.
    pub settings: ArcSwap<Settings>,
    /// How many clients may be served at once; resized on reload.
    pub clients: ClientLimit,
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
    /// Builds the context for validated settings.
    pub fn new(settings: Settings, draining: watch::Receiver<bool>) -> Arc<Context> {
        let metrics = Arc::new(Metrics::default());
        let (reload_tx, reloads) = watch::channel(0);
        let sts = crate::sts::Sts::new(
            settings.sts_endpoint.clone(),
            settings.sts_tls.clone(),
            settings.sts_max_concurrency,
            settings.sts_timeout,
            metrics.clone(),
        );
        Arc::new(Context {
            sts,
            reloads,
            reload_tx,
            auth_limiter: AuthLimiter::default(),
            sources: Arc::default(),
            routing: Routing::default(),
            pool: Pool::new(settings.pool_settings(), metrics.clone()),
            clients: ClientLimit::new(settings.max_clients),
            settings: ArcSwap::from_pointee(settings),
            metrics,
            draining,
            service_id: ObjectId::new(),
            connection_ids: AtomicI64::new(0),
            reply_ids: AtomicI32::new(0),
        })
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
