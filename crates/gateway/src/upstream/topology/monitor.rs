//! One member's monitor: a task with its own connection (never authenticated, never pooled)
//! that keeps the member's description current, as the Server Discovery and Monitoring
//! specification's monitoring section describes.
//!
//! When the member reports a `topologyVersion` the monitor long-polls it with the awaitable
//! `hello` (`topologyVersion` + `maxAwaitTimeMS`): the member answers at once when its state
//! changes (an election, a step-down), otherwise after one heartbeat. A separate round-trip
//! task with a second connection then measures latency, since an awaitable reply's delay is not
//! a round trip: such a reply keeps the round-trip time the topology holds for the member, and
//! must never replace it. Members without `topologyVersion` are polled every heartbeat on the
//! first connection, which also gives the round trip. Both kinds of sample feed one average per
//! member, kept in the topology description ([`Topology::on_rtt`], [`Topology::rtt_of`]). A check requested after an operation failed
//! (not primary, network error) abandons a pending awaitable `hello` (closing that connection)
//! and checks at once, at most once per [`MIN_HEARTBEAT`].
//!
//! So each member costs the gateway two monitoring connections (one while polling), on top of
//! its pooled operation connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bson::{doc, Document};
use tokio::sync::Notify;
use tokio::time::{sleep, timeout, Instant};

use super::server::{smooth_rtt, ServerDescription, TopologyVersion};
use super::Topology;
use crate::upstream::conn::UpstreamConn;
use crate::upstream::error::UpstreamError;

/// The shortest time between two checks of one member (`minHeartbeatFrequencyMS`).
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(500);

/// What a monitor shares with the rest of the topology.
#[derive(Debug, Default)]
pub struct MonitorHandle {
    /// Wakes the monitor for an immediate check.
    pub check_now: Notify,
    /// Whether the member streams (then the round-trip task measures latency).
    streaming: AtomicBool,
}

impl MonitorHandle {
    /// Whether the member streams its state (then checks need not be requested).
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }
}

/// The first `hello` on a monitoring connection carries the client metadata; later ones
/// do not (the handshake specification).
fn hello(first: bool, version: Option<TopologyVersion>, heartbeat: Duration) -> Document {
    let mut hello = doc! { "hello": 1, "$db": "admin" };
    if first {
        hello.insert(
            "client",
            doc! {
                "driver": { "name": "mongomux", "version": env!("CARGO_PKG_VERSION") },
                "os": { "type": std::env::consts::OS },
                "application": { "name": "mongomux-monitor" },
            },
        );
    }
    if let Some(v) = version {
        hello.insert("topologyVersion", v.to_document());
        let ms = i64::try_from(heartbeat.as_millis()).unwrap_or(i64::MAX);
        hello.insert("maxAwaitTimeMS", ms);
    }
    hello
}

/// Runs until the topology is gone or the task is aborted (the member was removed).
pub async fn run(topology: Weak<Topology>, address: String, handle: Arc<MonitorHandle>) {
    let mut conn: Option<UpstreamConn> = None;
    let mut version: Option<TopologyVersion> = None;
    let mut last_check: Option<Instant> = None;
    let mut was_known = false;
    loop {
        let Some(t) = topology.upgrade() else { return };
        let (heartbeat, connect_timeout) = (t.heartbeat(), t.connect_timeout());
        let tls = t.tls();
        let resolver = t.config().resolver.clone();
        drop(t);
        if let Some(last) = last_check {
            let since = last.elapsed();
            if since < MIN_HEARTBEAT {
                sleep(MIN_HEARTBEAT - since).await;
            }
        }
        last_check = Some(Instant::now());
        let first = conn.is_none();
        if first {
            version = None;
            match timeout(
                connect_timeout,
                UpstreamConn::open(&address, tls.as_ref(), resolver.as_ref(), 0),
            )
            .await
            {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => {
                    report_failure(&topology, &address, &e.to_string());
                    was_known = false;
                    wait(&handle, heartbeat).await;
                    continue;
                }
                Err(_) => {
                    report_failure(&topology, &address, "connect timed out");
                    was_known = false;
                    wait(&handle, heartbeat).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let awaitable = version.is_some();
        let request = hello(first, version, heartbeat);
        let started = Instant::now();
        let limit = if awaitable {
            connect_timeout + heartbeat
        } else {
            connect_timeout
        };
        let outcome = tokio::select! {
            r = timeout(limit, c.command(&request)) => r,
            _ = handle.check_now.notified(), if awaitable => {
                // Checking now means a fresh, non-awaitable hello on a new connection.
                conn = None;
                continue;
            }
        };
        match outcome {
            Ok(Ok(reply)) => {
                let elapsed = started.elapsed();
                let Some(t) = topology.upgrade() else { return };
                let mut sd = ServerDescription::from_hello(&address, &reply, None);
                version = sd.topology_version;
                handle.streaming.store(version.is_some(), Ordering::Relaxed);
                was_known = true;
                if awaitable {
                    // The reply came when the member's state changed or the wait ran out: its
                    // delay says nothing about latency. The round-trip task's figure stands.
                    t.on_streamed_check(sd);
                } else {
                    sd.rtt = Some(smooth_rtt(t.rtt_of(&address), elapsed));
                    t.on_check(sd);
                }
                drop(t);
                if version.is_none() {
                    wait(&handle, heartbeat).await;
                }
            }
            failed => {
                conn = None;
                handle.streaming.store(false, Ordering::Relaxed);
                let why = match failed {
                    Ok(Err(e)) => describe(&e),
                    _ => "hello timed out".to_string(),
                };
                report_failure(&topology, &address, &why);
                // A member that was fine gets one immediate retry (the specification's rule
                // for a network error on a known server); otherwise wait for the next beat.
                if !std::mem::replace(&mut was_known, false) {
                    wait(&handle, heartbeat).await;
                }
            }
        }
    }
}

/// Measures round trips on a connection of its own while the monitor streams.
pub async fn measure_rtt(topology: Weak<Topology>, address: String, handle: Arc<MonitorHandle>) {
    let mut conn: Option<UpstreamConn> = None;
    let mut first = true;
    loop {
        let Some(t) = topology.upgrade() else { return };
        let (heartbeat, connect_timeout, tls) = (t.heartbeat(), t.connect_timeout(), t.tls());
        let resolver = t.config().resolver.clone();
        drop(t);
        sleep(heartbeat).await;
        if !handle.streaming.load(Ordering::Relaxed) {
            conn = None;
            continue;
        }
        if conn.is_none() {
            let opened = timeout(
                connect_timeout,
                UpstreamConn::open(&address, tls.as_ref(), resolver.as_ref(), 0),
            );
            conn = opened.await.ok().and_then(Result::ok);
        }
        let Some(c) = conn.as_mut() else { continue };
        let started = Instant::now();
        match timeout(connect_timeout, c.command(&hello(first, None, heartbeat))).await {
            Ok(Ok(_)) => {
                first = false;
                if let Some(t) = topology.upgrade() {
                    t.on_rtt(&address, started.elapsed());
                }
            }
            _ => conn = None,
        }
    }
}

/// Waits one heartbeat, or less when an immediate check is requested.
async fn wait(handle: &MonitorHandle, heartbeat: Duration) {
    tokio::select! {
        _ = sleep(heartbeat) => {}
        _ = handle.check_now.notified() => {}
    }
}

fn report_failure(topology: &Weak<Topology>, address: &str, why: &str) {
    if let Some(t) = topology.upgrade() {
        t.on_check(ServerDescription::unknown(address, Some(why.to_string())));
    }
}

fn describe(e: &UpstreamError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
