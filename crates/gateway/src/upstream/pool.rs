//! The bounded pool of upstream connections.
//!
//! Owns the guarantee users buy mongomux for: the upstream never sees more than `pool_size`
//! connections from this gateway. A checkout takes a slot from a fair (FIFO) semaphore with
//! `pool_size` permits, waiting at most the checkout timeout; only a checkout holding a slot may
//! open a connection, and only when no idle one is left, so idle + in-use never exceeds the
//! slots. The waiting queue is bounded by the client limit, since a client connection has at
//! most one request in flight.
//!
//! # Concurrency note
//! A returned connection is pushed onto the idle list *before* its slot is released, so the
//! waiter woken by that release always finds it. A [`PooledConn`] dropped without
//! [`PooledConn::release`] closes its socket: that is how an interrupted exchange (client gone,
//! timeout, upstream error, cancelled task) keeps a dirty connection from being reused.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::{ConnIds, UpstreamConn, UpstreamInfo};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::settings::UpstreamConfig;

/// An idle connection with open cursors is kept this long at most (MongoDB's own idle-cursor
/// timeout), because on some servers closing it would kill those cursors.
const CURSOR_KEEPALIVE: Duration = Duration::from_secs(600);

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Where and as whom to connect.
    pub upstream: UpstreamConfig,
    /// TLS settings when the upstream URI asks for TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Most connections.
    pub size: usize,
    /// Most connections pinned by transactions.
    pub max_pinned: usize,
    /// Longest wait for a slot.
    pub checkout_timeout: Duration,
    /// Longest time to open and authenticate a connection.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

/// The pool.
#[derive(Debug)]
pub struct Pool {
    settings: PoolSettings,
    slots: Arc<Semaphore>,
    pins: Arc<Semaphore>,
    idle: Mutex<Vec<UpstreamConn>>,
    ids: ConnIds,
    info: ArcSwap<Option<UpstreamInfo>>,
    metrics: Arc<Metrics>,
}

/// A checked-out connection. Dropping it closes the connection; [`PooledConn::release`]
/// returns it for reuse.
#[derive(Debug)]
pub struct PooledConn {
    conn: Option<UpstreamConn>,
    pool: Arc<Pool>,
    _slot: OwnedSemaphorePermit,
    pin: Option<OwnedSemaphorePermit>,
}

impl Pool {
    /// A pool with no connections yet.
    pub fn new(settings: PoolSettings, metrics: Arc<Metrics>) -> Arc<Pool> {
        Arc::new(Pool {
            slots: Arc::new(Semaphore::new(settings.size)),
            pins: Arc::new(Semaphore::new(settings.max_pinned)),
            settings,
            idle: Mutex::new(Vec::new()),
            ids: ConnIds::default(),
            info: ArcSwap::from_pointee(None),
            metrics,
        })
    }

    /// What the upstream last said about itself, if any connection succeeded yet.
    pub fn upstream_info(&self) -> Option<UpstreamInfo> {
        **self.info.load()
    }

    /// The settings in force.
    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Checks out a connection, waiting at most the checkout timeout for a slot.
    pub async fn checkout(self: &Arc<Self>) -> Result<PooledConn, GatewayError> {
        let started = Instant::now();
        let timeout = self.settings.checkout_timeout;
        let slot = match tokio::time::timeout(timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(GatewayError::Draining),
            Err(_) => {
                self.metrics
                    .checkout_timeouts_total
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics.checkout_wait.observe(started.elapsed());
                return Err(GatewayError::CheckoutTimeout(timeout));
            }
        };
        self.metrics.checkout_wait.observe(started.elapsed());
        let conn = self.take_idle_or_connect().await?;
        self.metrics.upstream_in_use.fetch_add(1, Ordering::Relaxed);
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            _slot: slot,
            pin: None,
        })
    }

    /// Checks out a connection to pin for a transaction: first a pin permit (bounded, so slow
    /// transactions cannot hold the whole pool), then a slot.
    pub async fn checkout_pinned(self: &Arc<Self>) -> Result<PooledConn, GatewayError> {
        let timeout = self.settings.checkout_timeout;
        let pin = match tokio::time::timeout(timeout, self.pins.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(GatewayError::Draining),
            Err(_) => return Err(GatewayError::PinTimeout(timeout)),
        };
        let mut conn = self.checkout().await?;
        conn.pin = Some(pin);
        self.metrics.upstream_pinned.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    async fn take_idle_or_connect(&self) -> Result<UpstreamConn, GatewayError> {
        loop {
            let candidate = self.idle.lock().expect("pool lock").pop();
            match candidate {
                Some(conn) if conn.is_healthy() => return Ok(conn),
                Some(conn) => self.discard(conn),
                None => break,
            }
        }
        let id = self.ids.next();
        let attempt =
            UpstreamConn::connect(&self.settings.upstream, self.settings.tls.as_ref(), id);
        match tokio::time::timeout(self.settings.connect_timeout, attempt).await {
            Ok(Ok((conn, info))) => {
                self.info.store(Arc::new(Some(info)));
                self.metrics
                    .upstream_connections
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .upstream_connects_total
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(conn = id, "opened upstream connection");
                Ok(conn)
            }
            Ok(Err(e)) => {
                self.metrics
                    .upstream_connect_failures_total
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "upstream connection failed");
                Err(e)
            }
            Err(_) => {
                self.metrics
                    .upstream_connect_failures_total
                    .fetch_add(1, Ordering::Relaxed);
                Err(GatewayError::Upstream(format!(
                    "connecting to {} timed out",
                    self.settings.upstream.address
                )))
            }
        }
    }

    fn discard(&self, conn: UpstreamConn) {
        tracing::debug!(conn = conn.meta.id, "closing upstream connection");
        self.metrics
            .upstream_connections
            .fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .upstream_discarded_total
            .fetch_add(1, Ordering::Relaxed);
        drop(conn);
    }

    /// Closes idle connections past the idle timeout (or, with open cursors, past the cursor
    /// keep-alive), and any that broke while idle.
    pub fn reap_idle(&self) {
        let now = Instant::now();
        let expired: Vec<UpstreamConn> = {
            let mut idle = self.idle.lock().expect("pool lock");
            let (keep, expired): (Vec<_>, Vec<_>) = idle.drain(..).partition(|c| {
                let age = now.duration_since(c.last_used);
                let limit = if c.meta.open_cursors.load(Ordering::Relaxed) > 0 {
                    CURSOR_KEEPALIVE.max(self.settings.idle_timeout)
                } else {
                    self.settings.idle_timeout
                };
                age < limit && c.is_healthy()
            });
            *idle = keep;
            expired
        };
        for conn in expired {
            self.discard(conn);
        }
    }

    /// Closes every idle connection (drain).
    pub fn close_idle(&self) {
        let all: Vec<UpstreamConn> = self.idle.lock().expect("pool lock").drain(..).collect();
        for conn in all {
            self.discard(conn);
        }
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }
}

impl PooledConn {
    /// The connection.
    pub fn conn(&mut self) -> &mut UpstreamConn {
        self.conn.as_mut().expect("present until release or drop")
    }

    /// Whether the connection holds a transaction pin permit.
    pub fn is_pinned(&self) -> bool {
        self.pin.is_some()
    }

    /// Returns a connection whose last exchange completed cleanly to the pool.
    pub fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.last_used = Instant::now();
            self.pool.idle.lock().expect("pool lock").push(conn);
        }
        // The slot is released when `self` drops, after the push above.
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        self.pool
            .metrics
            .upstream_in_use
            .fetch_sub(1, Ordering::Relaxed);
        if self.pin.take().is_some() {
            self.pool
                .metrics
                .upstream_pinned
                .fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(conn) = self.conn.take() {
            self.pool.discard(conn);
        }
    }
}
