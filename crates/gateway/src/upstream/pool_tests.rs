//! Unit tests of the pool alone: an in-memory connector that counts the connections the
//! "upstream" sees, and tokio's paused clock, so timeouts are exact and instant.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{advance, sleep, Instant};

use super::*;
use crate::upstream::mem_connector::{Mem, Plan, Upstream};

const SECOND: Duration = Duration::from_secs(1);

fn limits() -> PoolLimits {
    PoolLimits {
        checkout_timeout: SECOND,
        connect_timeout: SECOND,
        idle_timeout: Duration::from_secs(60),
    }
}

fn pool(size: usize, max_pinned: usize) -> (Arc<Pool<Mem>>, Arc<Upstream>) {
    let mem = Mem::default();
    let upstream = mem.0.clone();
    let pool = Pool::with_connector(mem, size, max_pinned, limits(), Arc::default());
    (pool, upstream)
}

fn id(conn: &mut PooledConn<Mem>) -> u64 {
    conn.conn().meta().id
}

fn gauges(pool: &Pool<Mem>) -> [i64; 3] {
    let m = &pool.metrics;
    [
        m.upstream_connections.get(),
        m.upstream_in_use.get(),
        m.upstream_pinned.get(),
    ]
}

#[tokio::test(start_paused = true)]
async fn checkout_gives_up_at_the_deadline_read_live() {
    let (pool, _) = pool(1, 1);
    let held = pool.checkout().await.unwrap();
    let started = Instant::now();
    let err = pool.checkout().await.unwrap_err();
    assert!(matches!(err, UpstreamError::CheckoutTimeout(d) if d == SECOND));
    let waited = started.elapsed();
    assert!(waited >= SECOND && waited < SECOND + Duration::from_millis(5));
    assert_eq!(
        err.to_string(),
        "timed out after 1s waiting for an upstream connection; the pool is exhausted"
    );
    assert_eq!(pool.metrics.checkout_timeouts_total.get(), 1);

    pool.set_limits(PoolLimits {
        checkout_timeout: 5 * SECOND,
        ..limits()
    });
    let started = Instant::now();
    let err = pool.checkout().await.unwrap_err();
    assert!(matches!(err, UpstreamError::CheckoutTimeout(d) if d == 5 * SECOND));
    assert!(started.elapsed() >= 5 * SECOND);
    held.release();
    assert!(pool.checkout().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let (pool, _) = pool(1, 1);
    pool.set_limits(PoolLimits {
        checkout_timeout: 60 * SECOND,
        ..limits()
    });
    let held = pool.checkout().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for n in 0..5 {
        let (pool, order) = (pool.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let conn = pool.checkout().await.unwrap();
            order.lock().unwrap().push(n);
            sleep(Duration::from_millis(10)).await;
            conn.release();
        }));
        // Let this waiter queue up before the next one arrives.
        sleep(Duration::from_millis(1)).await;
    }
    held.release();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn the_upstream_never_sees_more_than_size_connections() {
    let (pool, upstream) = pool(3, 2);
    pool.set_limits(PoolLimits {
        checkout_timeout: 3600 * SECOND,
        ..limits()
    });
    let mut tasks = Vec::new();
    for n in 0..40u64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = if n % 5 == 0 {
                pool.checkout_pinned().await.unwrap()
            } else {
                pool.checkout().await.unwrap()
            };
            assert!(pool.open_count() <= 3);
            sleep(Duration::from_millis(n % 7)).await;
            match n % 4 {
                // An interrupted exchange, and a connection that dies while idle.
                0 => drop(conn),
                1 => {
                    conn.conn().healthy.store(false, Ordering::SeqCst);
                    conn.release();
                }
                _ => conn.release(),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(upstream.peak.load(Ordering::SeqCst) <= 3);
    assert!(
        upstream.opened.load(Ordering::SeqCst) > 3,
        "connections were replaced"
    );
    assert_eq!(pool.open_count(), upstream.live.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_reaped_after_the_idle_timeout() {
    let (pool, upstream) = pool(2, 1);
    pool.checkout().await.unwrap().release();
    advance(Duration::from_secs(59)).await;
    pool.reap_idle();
    assert_eq!(pool.idle_count(), 1);
    advance(2 * SECOND).await;
    pool.reap_idle();
    assert_eq!(pool.idle_count(), 0);
    assert_eq!(upstream.live.load(Ordering::SeqCst), 0);

    // The idle timeout is read when reaping.
    pool.checkout().await.unwrap().release();
    pool.set_limits(PoolLimits {
        idle_timeout: 5 * SECOND,
        ..limits()
    });
    advance(6 * SECOND).await;
    pool.reap_idle();
    assert_eq!(pool.open_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_connection_with_open_cursors_is_kept_for_the_cursor_keepalive() {
    let (pool, upstream) = pool(2, 1);
    let mut conn = pool.checkout().await.unwrap();
    let meta = conn.conn().meta().clone();
    meta.open_cursors.store(1, Ordering::SeqCst);
    conn.release();
    advance(Duration::from_secs(61)).await;
    pool.reap_idle();
    assert_eq!(pool.idle_count(), 1, "kept past the idle timeout");
    advance(CURSOR_KEEPALIVE - Duration::from_secs(60)).await;
    pool.reap_idle();
    assert_eq!(pool.idle_count(), 0, "closed after the keep-alive");
    assert_eq!(upstream.live.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dead_idle_connection_is_replaced_not_handed_out() {
    let (pool, upstream) = pool(1, 1);
    let mut conn = pool.checkout().await.unwrap();
    let first = id(&mut conn);
    conn.conn().healthy.store(false, Ordering::SeqCst);
    conn.release();
    assert_eq!(pool.idle_count(), 1);
    let mut conn = pool.checkout().await.unwrap();
    assert_ne!(id(&mut conn), first);
    assert_eq!(upstream.opened.load(Ordering::SeqCst), 2);
    assert_eq!(
        upstream.live.load(Ordering::SeqCst),
        1,
        "the dead one was closed"
    );
    assert_eq!(pool.metrics.upstream_discarded_total.get(), 1);
    conn.release();
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_exchange_closes_its_connection_and_frees_the_slot() {
    let (pool, upstream) = pool(1, 1);
    let mut conn = pool.checkout().await.unwrap();
    let first = id(&mut conn);
    // E.g. the client left mid-request: the session drops the connection without release.
    drop(conn);
    assert_eq!(upstream.live.load(Ordering::SeqCst), 0);
    assert_eq!((pool.open_count(), pool.idle_count()), (0, 0));
    let started = Instant::now();
    let mut conn = pool.checkout().await.unwrap();
    assert!(started.elapsed() < SECOND, "the slot was free");
    assert_ne!(id(&mut conn), first);

    // A cancelled task drops its connection the same way.
    let task = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let _conn = pool.checkout().await.unwrap();
            std::future::pending::<()>().await;
        })
    };
    conn.release();
    sleep(Duration::from_millis(10)).await;
    task.abort();
    let _ = task.await;
    assert_eq!(
        (pool.open_count(), upstream.live.load(Ordering::SeqCst)),
        (0, 0)
    );
    assert!(pool.checkout().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn pinned_connections_are_bounded() {
    let (pool, _) = pool(4, 2);
    let a = pool.checkout_pinned().await.unwrap();
    let b = pool.checkout_pinned().await.unwrap();
    assert!(a.is_pinned() && b.is_pinned());
    let started = Instant::now();
    let err = pool.checkout_pinned().await.unwrap_err();
    assert!(matches!(err, UpstreamError::PinTimeout(d) if d == SECOND));
    assert!(started.elapsed() >= SECOND);
    // Unpinned work still has the other slots.
    let c = pool.checkout().await.unwrap();
    assert!(!c.is_pinned());
    assert_eq!(gauges(&pool)[1..], [3, 2]);
    a.release();
    let d = pool.checkout_pinned().await.unwrap();
    assert!(d.is_pinned());
    for conn in [b, c, d] {
        conn.release();
    }
    assert_eq!(gauges(&pool)[1..], [0, 0]);
}

#[tokio::test(start_paused = true)]
async fn growing_serves_waiters_at_once() {
    let (pool, upstream) = pool(1, 1);
    let held = pool.checkout().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.checkout().await.map(PooledConn::release) })
    };
    sleep(Duration::from_millis(1)).await;
    let started = Instant::now();
    pool.resize(2, 2);
    waiter.await.unwrap().unwrap();
    assert!(started.elapsed() < SECOND);
    assert_eq!(upstream.peak.load(Ordering::SeqCst), 2);
    assert_eq!(pool.size(), 2);
    held.release();
    assert_eq!(pool.idle_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn shrinking_closes_idle_connections_at_once() {
    let (pool, upstream) = pool(3, 2);
    let conns = [
        pool.checkout().await.unwrap(),
        pool.checkout().await.unwrap(),
        pool.checkout().await.unwrap(),
    ];
    for conn in conns {
        conn.release();
    }
    assert_eq!(pool.idle_count(), 3);
    pool.resize(1, 1);
    assert_eq!((pool.idle_count(), pool.open_count()), (1, 1));
    assert_eq!(upstream.live.load(Ordering::SeqCst), 1);
    let held = pool.checkout().await.unwrap();
    assert!(matches!(
        pool.checkout().await,
        Err(UpstreamError::CheckoutTimeout(_))
    ));
    held.release();
}

#[tokio::test(start_paused = true)]
async fn shrinking_takes_back_busy_slots_as_they_return() {
    let (pool, upstream) = pool(3, 3);
    let [a, b, c] = [
        pool.checkout().await.unwrap(),
        pool.checkout().await.unwrap(),
        pool.checkout().await.unwrap(),
    ];
    pool.resize(1, 1);
    assert_eq!(pool.open_count(), 3, "busy connections are not interrupted");
    a.release();
    b.release();
    assert_eq!((pool.open_count(), pool.idle_count()), (1, 0));
    // `c` holds the only slot left.
    assert!(matches!(
        pool.checkout().await,
        Err(UpstreamError::CheckoutTimeout(_))
    ));
    c.release();
    assert_eq!((pool.open_count(), pool.idle_count()), (1, 1));
    let opened = upstream.opened.load(Ordering::SeqCst);
    let d = pool.checkout().await.unwrap();
    assert_eq!(upstream.opened.load(Ordering::SeqCst), opened, "reused");
    assert!(matches!(
        pool.checkout().await,
        Err(UpstreamError::CheckoutTimeout(_))
    ));
    d.release();
}

#[tokio::test(start_paused = true)]
async fn growing_during_a_shrink_cancels_what_is_still_owed_first() {
    let (pool, upstream) = pool(3, 1);
    let [a, b, c] = [
        pool.checkout().await.unwrap(),
        pool.checkout().await.unwrap(),
        pool.checkout().await.unwrap(),
    ];
    pool.resize(1, 1);
    pool.resize(2, 1);
    a.release();
    b.release();
    assert_eq!((pool.open_count(), pool.idle_count()), (2, 1));
    let d = pool.checkout().await.unwrap();
    assert_eq!(upstream.opened.load(Ordering::SeqCst), 3, "reused");
    assert!(matches!(
        pool.checkout().await,
        Err(UpstreamError::CheckoutTimeout(_))
    ));
    c.release();
    d.release();
    assert_eq!(
        (pool.open_count(), upstream.peak.load(Ordering::SeqCst)),
        (2, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_connect_is_reported_and_keeps_no_slot() {
    let (pool, upstream) = pool(1, 1);
    upstream.plans.lock().unwrap().push_back(Plan::Refuse);
    let err = pool.checkout().await.unwrap_err();
    let UpstreamError::Connect { address, source } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(address, "mem:27017");
    assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(pool.metrics.upstream_connect_failures_total.get(), 1);
    assert_eq!(gauges(&pool), [0, 0, 0]);
    pool.checkout().await.unwrap().release();
    assert_eq!(pool.open_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connect_that_hangs_times_out_and_keeps_no_slot() {
    let (pool, upstream) = pool(1, 1);
    pool.set_limits(PoolLimits {
        connect_timeout: 2 * SECOND,
        checkout_timeout: 10 * SECOND,
        ..limits()
    });
    upstream.plans.lock().unwrap().push_back(Plan::Hang);
    let started = Instant::now();
    let err = pool.checkout().await.unwrap_err();
    assert!(matches!(&err, UpstreamError::ConnectTimeout { address } if address == "mem:27017"));
    let waited = started.elapsed();
    assert!(waited >= 2 * SECOND && waited < 3 * SECOND);
    assert_eq!(
        err.to_string(),
        "upstream unavailable: connecting to mem:27017 timed out"
    );
    let started = Instant::now();
    pool.checkout().await.unwrap().release();
    assert!(started.elapsed() < SECOND);
}

#[tokio::test(start_paused = true)]
async fn gauges_return_to_zero_when_everything_is_released() {
    let (pool, upstream) = pool(4, 2);
    let pinned = pool.checkout_pinned().await.unwrap();
    let plain = pool.checkout().await.unwrap();
    let dropped = pool.checkout().await.unwrap();
    assert_eq!(gauges(&pool), [3, 3, 1]);
    pinned.release();
    plain.release();
    drop(dropped);
    assert_eq!(gauges(&pool), [2, 0, 0]);
    pool.close_idle();
    assert_eq!(gauges(&pool), [0, 0, 0]);
    assert_eq!(upstream.live.load(Ordering::SeqCst), 0);
    let m = &pool.metrics;
    assert_eq!(m.upstream_connects_total.get(), 3);
    assert_eq!(m.upstream_discarded_total.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_closed_pool_refuses_checkouts_and_closes_returning_connections() {
    let (pool, upstream) = pool(1, 1);
    let held = pool.checkout().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.checkout().await.map(|_| ()) })
    };
    sleep(Duration::from_millis(1)).await;
    pool.close();
    assert!(matches!(
        waiter.await.unwrap(),
        Err(UpstreamError::PoolClosed)
    ));
    assert!(matches!(
        pool.checkout_pinned().await,
        Err(UpstreamError::PoolClosed)
    ));
    held.release();
    assert_eq!((pool.open_count(), pool.idle_count()), (0, 0));
    assert_eq!(upstream.live.load(Ordering::SeqCst), 0);
    assert_eq!(gauges(&pool), [0, 0, 0]);
}
