//! Unit tests of the bound shared by member pools: two pools on one in-memory "deployment"
//! whose live-connection count is what the members together see; tokio's paused clock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{advance, Instant};

use super::*;
use crate::upstream::error::UpstreamError;
use crate::upstream::mem_connector::{Mem, Upstream};
use crate::upstream::pool::{Pool, PoolLimits};

const SECOND: Duration = Duration::from_secs(1);

fn limits() -> PoolLimits {
    PoolLimits {
        checkout_timeout: SECOND,
        connect_timeout: SECOND,
        idle_timeout: Duration::from_secs(60),
    }
}

/// Two member pools on one counted upstream, and the total they share.
struct Members {
    a: Arc<Pool<Mem>>,
    b: Arc<Pool<Mem>>,
    upstream: Arc<Upstream>,
    total: Arc<Total>,
}

/// Two member pools of `size` each under a total of `total`.
fn members(size: usize, total: usize) -> Members {
    let upstream = Arc::new(Upstream::default());
    let total = Total::new(Some(total));
    let pool = || {
        Pool::sharing(
            Mem(upstream.clone()),
            (size, size),
            limits(),
            Arc::default(),
            total.clone(),
        )
    };
    Members {
        a: pool(),
        b: pool(),
        upstream,
        total,
    }
}

fn live(upstream: &Upstream) -> usize {
    upstream.live.load(Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn a_checkout_beyond_the_total_waits_and_times_out_at_the_checkout_deadline() {
    let Members { a, b, upstream, .. } = members(2, 2);
    let _held = (a.checkout().await.unwrap(), a.checkout().await.unwrap());
    let started = Instant::now();
    let err = b.checkout().await.unwrap_err();
    assert!(
        matches!(err, UpstreamError::CheckoutTimeout(d) if d == SECOND),
        "{err}"
    );
    assert!(started.elapsed() >= SECOND);
    assert_eq!(live(&upstream), 2);
    assert_eq!(upstream.peak.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_returned_connection_closes_and_hands_its_permit_to_a_waiter_of_another_member() {
    let Members { a, b, upstream, .. } = members(2, 2);
    let first = a.checkout().await.unwrap();
    let _second = a.checkout().await.unwrap();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.checkout().await.map(|_| ()) }
    });
    advance(Duration::from_millis(100)).await;
    first.release();
    waiter.await.unwrap().unwrap();
    // The returned connection was closed rather than parked idle: B opened its own.
    assert_eq!(a.idle_count(), 0);
    assert_eq!(upstream.opened.load(Ordering::SeqCst), 3);
    assert_eq!(upstream.peak.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_of_one_member_never_starve_another() {
    let Members { a, b, upstream, .. } = members(3, 3);
    let held = [
        a.checkout().await.unwrap(),
        a.checkout().await.unwrap(),
        a.checkout().await.unwrap(),
    ];
    for c in held {
        c.release();
        advance(Duration::from_millis(10)).await;
    }
    assert_eq!(a.idle_count(), 3);
    let started = Instant::now();
    let _b1 = b.checkout().await.unwrap();
    let _b2 = b.checkout().await.unwrap();
    // At once (two connects of 3 ms each, no waiting for a permit): the oldest idle
    // connections of A were closed to make room.
    assert!(started.elapsed() < Duration::from_millis(10));
    assert_eq!(a.idle_count(), 1);
    assert_eq!(live(&upstream), 3);
    assert_eq!(upstream.peak.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn shrinking_the_total_closes_connections_as_they_come_back() {
    let Members {
        a,
        b,
        upstream,
        total,
    } = members(4, 8);
    let held: Vec<_> = [
        a.checkout().await.unwrap(),
        a.checkout().await.unwrap(),
        b.checkout().await.unwrap(),
        b.checkout().await.unwrap(),
    ]
    .into();
    total.resize(Some(2));
    assert_eq!(total.limit(), Some(2));
    for c in held {
        c.release();
    }
    // Two permits were owed: the first two connections back were closed.
    assert_eq!(live(&upstream), 2);
    assert_eq!(a.idle_count() + b.idle_count(), 2);
    let _c = a.checkout().await.unwrap();
    assert_eq!(live(&upstream), 2);
    total.resize(None);
    assert_eq!(total.limit(), None);
}

#[tokio::test(start_paused = true)]
async fn unset_the_total_adds_no_bound() {
    let upstream = Arc::new(Upstream::default());
    let total = Total::new(None);
    let pool = Pool::sharing(
        Mem(upstream.clone()),
        (50, 25),
        limits(),
        Arc::default(),
        total,
    );
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(pool.checkout().await.unwrap());
    }
    assert_eq!(live(&upstream), 50);
}
