//! The bounded pool of connections to one upstream member.
//!
//! Owns the guarantee users buy mongomux for: the member never sees more than `size`
//! connections from this gateway's pool, and all members together never more than the shared
//! [`Total`] allows. A checkout takes a slot from a fair (FIFO) bound with `size`
//! permits, waiting at most the checkout timeout; only a checkout holding a slot may open a
//! connection, and only when no idle one is left, so idle + in-use never exceeds the slots.
//! The waiting queue is bounded by the client limit, since a client connection has at most one
//! request in flight.
//!
//! The pool is generic over its [`Connector`], so it can be tested alone (pool_tests.rs).
//! The checkout, connect and idle timeouts are read on every use from [`PoolLimits`] the owner
//! can swap ([`Pool::set_limits`]); [`Pool::resize`] changes the size and the pin bound.
//!
//! # Concurrency note
//! A returned connection is pushed onto the idle list *before* its slot is released, so the
//! waiter woken by that release always finds it. A [`PooledConn`] dropped without
//! [`PooledConn::release`] closes its connection: that is how an interrupted exchange (client
//! gone, timeout, upstream error, cancelled task) keeps a dirty connection from being reused.
//! The idle list and the open-connection count share one lock, never held across an await.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::bound::{Bound, Permit};
use super::conn::UpstreamInfo;
use super::connector::{Connector, PoolConn, TcpConnector};
use super::error::UpstreamError;
use super::pool_limits::LiveLimits;
pub use super::pool_limits::PoolLimits;
use super::pool_stats::{ConnRecord, ConnReport, ConnState, PoolCounters, PoolReport, Waiting};
use super::total::{IdleSource, Total};
use crate::metrics::{Counter, Gauge, Metrics};

/// An idle connection with open cursors is kept this long at most (MongoDB's own idle-cursor
/// timeout), because on some servers closing it would kill those cursors.
pub const CURSOR_KEEPALIVE: Duration = Duration::from_secs(600);

/// The production pool.
pub type UpstreamPool = Pool<TcpConnector>;
/// A connection checked out of the production pool.
pub type Pooled = PooledConn<TcpConnector>;

/// The pool.
#[derive(Debug)]
pub struct Pool<C: Connector = TcpConnector> {
    connector: C,
    limits: LiveLimits,
    slots: Arc<Bound>,
    pins: Arc<Bound>,
    total: Arc<Total>,
    stock: Mutex<Stock<C::Conn>>,
    ids: AtomicU64,
    info: ArcSwap<Option<UpstreamInfo>>,
    metrics: Arc<Metrics>,
    counters: PoolCounters,
}

/// The connections the pool owns that nobody has checked out, and the count of all open ones.
#[derive(Debug)]
struct Stock<T> {
    /// Most recently returned last, so checkouts reuse warm connections and old ones age out.
    idle: Vec<Idle<T>>,
    /// Open connections: idle plus checked out.
    open: usize,
    closed: bool,
    /// Every open connection, by id (as many as `open`).
    conns: BTreeMap<u64, ConnRecord>,
}

/// An idle connection, when it went idle, and its permit of the shared [`Total`].
#[derive(Debug)]
struct Idle<T> {
    conn: T,
    since: Instant,
    total: Permit,
}

/// A checked-out connection. Dropping it closes the connection; [`PooledConn::release`]
/// returns it for reuse.
#[derive(Debug)]
pub struct PooledConn<C: Connector = TcpConnector> {
    conn: Option<C::Conn>,
    pool: Arc<Pool<C>>,
    // Declared after `conn` and `pool`: the slot is released only once the connection is back.
    _slot: Permit,
    pin: Option<Permit>,
    /// The connection's permit of the shared [`Total`]; goes with it to the idle list.
    total: Option<Permit>,
}

impl<C: Connector> Pool<C> {
    /// A pool of at most `size` connections (at most `max_pinned` of them pinned) opened by
    /// `connector`, with no connections yet and no bound shared with other pools.
    pub fn with_connector(
        connector: C,
        size: usize,
        max_pinned: usize,
        limits: PoolLimits,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Self::sharing(
            connector,
            (size, max_pinned),
            limits,
            metrics,
            Total::new(None),
        )
    }

    /// [`Pool::with_connector`], its connections also counted in `total` (shared by the pools
    /// of all members); `bounds` is (size, max_pinned).
    pub fn sharing(
        connector: C,
        bounds: (usize, usize),
        limits: PoolLimits,
        metrics: Arc<Metrics>,
        total: Arc<Total>,
    ) -> Arc<Self> {
        let pool = Arc::new(Pool {
            connector,
            limits: LiveLimits::new(limits),
            slots: Bound::new(bounds.0),
            pins: Bound::new(bounds.1),
            total: total.clone(),
            stock: Mutex::new(Stock {
                idle: Vec::new(),
                open: 0,
                closed: false,
                conns: BTreeMap::new(),
            }),
            ids: AtomicU64::new(0),
            info: ArcSwap::from_pointee(None),
            metrics,
            counters: PoolCounters::default(),
        });
        let weak: std::sync::Weak<dyn IdleSource> = Arc::downgrade(&pool) as _;
        total.register(weak);
        pool
    }

    /// What the upstream last said about itself, if any connection succeeded yet.
    pub fn upstream_info(&self) -> Option<UpstreamInfo> {
        **self.info.load()
    }

    /// The timeouts in force.
    pub fn limits(&self) -> PoolLimits {
        PoolLimits {
            checkout_timeout: self.limits.checkout(),
            connect_timeout: self.limits.connect(),
            idle_timeout: self.limits.idle(),
        }
    }

    /// Replaces the timeouts; each checkout, connect and reap reads the value current then.
    pub fn set_limits(&self, limits: PoolLimits) {
        self.limits.set(limits);
    }

    /// The most connections the pool may hold once any shrink has been paid.
    pub fn size(&self) -> usize {
        self.slots.capacity()
    }

    /// Changes the pool size and the pin bound (both at least 1, `max_pinned <= size`: the
    /// caller passes validated settings).
    ///
    /// Growing takes effect at once: waiting checkouts are served from the new slots.
    /// Shrinking closes idle connections beyond the new size at once, and takes back free slots
    /// at once; slots and connections checked out at the time are taken back as they return
    /// (a returning connection is closed while more than `size` are open). So the upstream sees
    /// at most the old size until those checkouts return, and at most the new size after.
    pub fn resize(&self, size: usize, max_pinned: usize) {
        debug_assert!(size >= 1 && (1..=size).contains(&max_pinned));
        self.slots.resize(size);
        self.pins.resize(max_pinned);
        let mut stock = self.lock();
        let excess = stock.open.saturating_sub(size).min(stock.idle.len());
        // The oldest are at the front.
        let doomed: Vec<_> = stock.idle.drain(..excess).collect();
        for idle in doomed {
            self.discard(&mut stock, idle.conn);
        }
    }

    /// Closes the pool: waiting and later checkouts fail with [`UpstreamError::PoolClosed`],
    /// idle connections close now and checked-out ones when they come back.
    pub fn close(&self) {
        self.slots.close();
        self.pins.close();
        self.lock().closed = true;
        self.close_idle();
    }

    /// Checks out a connection, waiting at most the checkout timeout for a slot.
    pub async fn checkout(self: &Arc<Self>) -> Result<PooledConn<C>, UpstreamError> {
        let started = Instant::now();
        let timeout = self.limits.checkout();
        let waiting = Waiting::new(&self.counters.waiting);
        let slot = tokio::time::timeout(timeout, self.slots.acquire()).await;
        drop(waiting);
        let slot = match slot {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(UpstreamError::PoolClosed),
            Err(_) => {
                self.note_checkout_timeout(started.elapsed());
                return Err(UpstreamError::CheckoutTimeout(timeout));
            }
        };
        self.metrics.checkout_wait.observe(started.elapsed());
        self.counters.waits.observe(started.elapsed());
        // On error `slot` drops here, so a failed connect never keeps a slot.
        let (conn, total) = self.take_idle_or_connect(started + timeout).await?;
        gauge_add(&self.metrics.upstream_in_use, 1);
        self.counters.in_use.fetch_add(1, Ordering::Relaxed);
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            _slot: slot,
            pin: None,
            total: Some(total),
        })
    }

    /// Checks out a connection to pin for a transaction: first a pin permit (bounded, so slow
    /// transactions cannot hold the whole pool), then a slot.
    pub async fn checkout_pinned(self: &Arc<Self>) -> Result<PooledConn<C>, UpstreamError> {
        let timeout = self.limits.checkout();
        let pin = match tokio::time::timeout(timeout, self.pins.acquire()).await {
            Ok(Ok(pin)) => pin,
            Ok(Err(_)) => return Err(UpstreamError::PoolClosed),
            Err(_) => return Err(UpstreamError::PinTimeout(timeout)),
        };
        let mut conn = self.checkout().await?;
        conn.pin = Some(pin);
        gauge_add(&self.metrics.upstream_pinned, 1);
        self.counters.pinned.fetch_add(1, Ordering::Relaxed);
        let id = conn.conn().meta().id;
        if let Some(record) = self.lock().conns.get_mut(&id) {
            record.set(ConnState::Pinned);
        }
        Ok(conn)
    }

    /// An idle connection, or a new one once the shared [`Total`] grants a permit for it
    /// (waiting until `deadline`, the checkout's); with the connection's permit.
    async fn take_idle_or_connect(
        &self,
        deadline: Instant,
    ) -> Result<(C::Conn, Permit), UpstreamError> {
        if let Some(idle) = self.take_idle() {
            return Ok(idle);
        }
        let Some(permit) = self.total.acquire(deadline).await else {
            let timeout = self.limits.checkout();
            self.note_checkout_timeout(timeout);
            return Err(UpstreamError::CheckoutTimeout(timeout));
        };
        let id = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = self.limits.connect();
        let result = match tokio::time::timeout(limit, self.connector.connect(id)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::ConnectTimeout {
                address: self.connector.address().to_string(),
            }),
        };
        match result {
            Ok((conn, info)) => {
                self.info.store(Arc::new(Some(info)));
                let mut stock = self.lock();
                stock.open += 1;
                stock
                    .conns
                    .insert(id, ConnRecord::in_use(conn.meta().clone()));
                drop(stock);
                self.note_opened();
                tracing::debug!(conn = id, "opened upstream connection");
                Ok((conn, permit))
            }
            Err(e) => {
                count(&self.metrics.upstream_connect_failures_total);
                let error: &(dyn std::error::Error + 'static) = &e;
                tracing::warn!(error, "upstream connection failed");
                Err(e)
            }
        }
    }

    /// The most recently returned healthy idle connection; broken ones met on the way close.
    fn take_idle(&self) -> Option<(C::Conn, Permit)> {
        let mut stock = self.lock();
        while let Some(idle) = stock.idle.pop() {
            if idle.conn.is_healthy() {
                if let Some(record) = stock.conns.get_mut(&idle.conn.meta().id) {
                    record.set(ConnState::InUse);
                }
                return Some((idle.conn, idle.total));
            }
            self.discard(&mut stock, idle.conn);
        }
        None
    }

    /// Takes a connection that came back cleanly: kept idle unless the pool is closed or has
    /// shrunk below the connections open, or another checkout (of any member) waits for the
    /// shared total's permit this connection holds.
    fn put_back(&self, conn: C::Conn, total: Permit) {
        let mut stock = self.lock();
        if stock.closed || stock.open > self.slots.capacity() || self.total.wants_permits() {
            self.discard(&mut stock, conn);
        } else {
            if let Some(record) = stock.conns.get_mut(&conn.meta().id) {
                record.set(ConnState::Idle);
            }
            stock.idle.push(Idle {
                conn,
                since: Instant::now(),
                total,
            });
        }
    }

    /// Closes a connection the pool counted as open.
    fn discard(&self, stock: &mut Stock<C::Conn>, conn: C::Conn) {
        tracing::debug!(conn = conn.meta().id, "closing upstream connection");
        stock.open -= 1;
        stock.conns.remove(&conn.meta().id);
        self.note_discarded();
        drop(conn);
    }

    /// Closes idle connections past the idle timeout (or, with open cursors, past the cursor
    /// keep-alive), and any that broke while idle.
    pub fn reap_idle(&self) {
        let now = Instant::now();
        let idle_timeout = self.limits.idle();
        let mut stock = self.lock();
        let (keep, expired): (Vec<_>, Vec<_>) = stock.idle.drain(..).partition(|idle| {
            let limit = if idle.conn.meta().may_carry_cursors(CURSOR_KEEPALIVE) {
                CURSOR_KEEPALIVE.max(idle_timeout)
            } else {
                idle_timeout
            };
            now.duration_since(idle.since) < limit && idle.conn.is_healthy()
        });
        stock.idle = keep;
        for idle in expired {
            self.discard(&mut stock, idle.conn);
        }
    }

    /// Closes every idle connection (drain).
    pub fn close_idle(&self) {
        let mut stock = self.lock();
        let all: Vec<_> = stock.idle.drain(..).collect();
        for idle in all {
            self.discard(&mut stock, idle.conn);
        }
    }

    /// Idle connections that may carry cursors clients still use ([`ConnMeta::may_carry_cursors`](super::conn_meta::ConnMeta::may_carry_cursors)).
    pub fn carrying_cursors(&self) -> usize {
        let stock = self.lock();
        let carrying = |i: &&Idle<C::Conn>| i.conn.meta().may_carry_cursors(CURSOR_KEEPALIVE);
        stock.idle.iter().filter(carrying).count()
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.lock().idle.len()
    }

    /// Open connections now, idle and checked out.
    pub fn open_count(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> MutexGuard<'_, Stock<C::Conn>> {
        self.stock.lock().expect("pool lock")
    }

    fn note_checkout_timeout(&self, waited: Duration) {
        count(&self.metrics.checkout_timeouts_total);
        self.metrics.checkout_wait.observe(waited);
        self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        self.counters.waits.observe(waited);
    }

    /// The pool's figures now, for operators.
    pub fn report(&self, member: &str) -> PoolReport {
        let (open, idle) = {
            let stock = self.lock();
            (stock.open, stock.idle.len())
        };
        let c = &self.counters;
        PoolReport {
            member: member.to_string(),
            size: self.slots.capacity(),
            open,
            in_use: c.in_use.load(Ordering::Relaxed),
            idle,
            pinned: c.pinned.load(Ordering::Relaxed),
            max_pinned: self.pins.capacity(),
            waiting: c.waiting.load(Ordering::Relaxed),
            checkout_timeouts: c.timeouts.load(Ordering::Relaxed),
            checkout_wait: c.waits.snapshot(),
        }
    }

    /// Every open connection, oldest id first.
    pub fn connections(&self) -> Vec<ConnReport> {
        let now = Instant::now();
        let stock = self.lock();
        stock.conns.values().map(|r| r.report(now)).collect()
    }

    fn note_opened(&self) {
        gauge_add(&self.metrics.upstream_connections, 1);
        count(&self.metrics.upstream_connects_total);
    }

    fn note_discarded(&self) {
        gauge_add(&self.metrics.upstream_connections, -1);
        count(&self.metrics.upstream_discarded_total);
    }
}

impl<C: Connector> PooledConn<C> {
    /// The connection.
    pub fn conn(&mut self) -> &mut C::Conn {
        self.conn.as_mut().expect("present until release or drop")
    }

    /// Whether the connection holds a transaction pin permit.
    pub fn is_pinned(&self) -> bool {
        self.pin.is_some()
    }

    /// Returns a connection whose last exchange completed cleanly to the pool.
    pub fn release(mut self) {
        if let (Some(conn), Some(total)) = (self.conn.take(), self.total.take()) {
            self.pool.put_back(conn, total);
        }
        // The slot is released when `self` drops, after the push above.
    }
}

impl<C: Connector> Drop for PooledConn<C> {
    fn drop(&mut self) {
        gauge_add(&self.pool.metrics.upstream_in_use, -1);
        self.pool.counters.in_use.fetch_sub(1, Ordering::Relaxed);
        if self.pin.take().is_some() {
            gauge_add(&self.pool.metrics.upstream_pinned, -1);
            self.pool.counters.pinned.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(conn) = self.conn.take() {
            let mut stock = self.pool.lock();
            self.pool.discard(&mut stock, conn);
        }
    }
}

impl<C: Connector> IdleSource for Pool<C> {
    fn oldest_idle(&self) -> Option<Instant> {
        self.lock().idle.first().map(|idle| idle.since)
    }

    fn close_oldest_idle(&self) -> bool {
        let mut stock = self.lock();
        if stock.idle.is_empty() {
            return false;
        }
        let idle = stock.idle.remove(0);
        self.discard(&mut stock, idle.conn);
        true
    }
}

// The pool's only metric writes; kept here so the metrics backend can change in one place.
fn gauge_add(gauge: &Gauge, delta: i64) {
    gauge.add(delta);
}

fn count(counter: &Counter) {
    counter.inc();
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
