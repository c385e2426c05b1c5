//! The round-trip time a member keeps across streaming checks: the regression in which every
//! awaitable `hello` reply overwrote the round-trip task's figure with the monitor's own
//! (stale) one, so a router that had become slow stayed in the latency window.

use std::sync::Arc;
use std::time::Duration;

use bson::{doc, oid::ObjectId};

use super::select::{suitable, Need};
use super::server::ServerDescription;
use super::*;
use crate::metrics::Metrics;
use crate::upstream::pool::PoolLimits;

const FAST: &str = "127.0.0.1:1";
const SLOW: &str = "127.0.0.1:2";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn topology(seeds: &[&str]) -> Arc<Topology> {
    let limits = PoolLimits {
        checkout_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
    };
    let shape = PoolShape {
        size: 1,
        total: None,
        max_pinned: 1,
        limits,
    };
    let seeds: Vec<String> = seeds.iter().map(|s| s.to_string()).collect();
    Topology::new(
        UpstreamConfig::single(FAST),
        seeds,
        None,
        shape,
        Arc::new(Metrics::default()),
    )
}

fn mongos(address: &str, process: ObjectId, rtt: Option<Duration>) -> ServerDescription {
    let reply = doc! {"ok": 1.0, "msg": "isdbgrid", "isWritablePrimary": true, "maxWireVersion": 21,
    "topologyVersion": {"processId": process, "counter": 0_i64}};
    ServerDescription::from_hello(address, &reply, rtt)
}

fn in_window(t: &Topology) -> Vec<String> {
    let desc = t.description();
    let found = suitable(&desc, Need::Write, ms(500), ms(15)).expect("sharded");
    found.iter().map(|s| s.address.clone()).collect()
}

// A current-thread runtime: the monitors the checks spawn never run, since the test never
// yields, so only the calls below change the description.
#[tokio::test]
async fn a_streamed_reply_keeps_the_measured_round_trip() {
    let t = topology(&[FAST, SLOW]);
    let (fast, slow) = (ObjectId::new(), ObjectId::new());
    // Polling checks of both routers, 1 ms each: both in the window.
    t.on_check(mongos(FAST, fast, Some(ms(1))));
    t.on_check(mongos(SLOW, slow, Some(ms(1))));
    assert_eq!(t.description().kind, TopologyType::Sharded);
    assert_eq!(in_window(&t), [FAST, SLOW]);
    // The round-trip task measures the second router at 250 ms: 0.8 * 1 + 0.2 * 250 = 50.8 ms.
    t.on_rtt(SLOW, ms(250));
    let measured = t.rtt_of(SLOW).expect("measured");
    assert_eq!(measured, ms(1).mul_f64(0.8) + ms(250).mul_f64(0.2));
    assert_eq!(in_window(&t), [FAST]);
    // Awaitable replies, whatever round trip they carry, keep it.
    t.on_streamed_check(mongos(SLOW, slow, Some(ms(1))));
    assert_eq!(t.rtt_of(SLOW), Some(measured));
    t.on_streamed_check(mongos(SLOW, slow, None));
    assert_eq!(t.rtt_of(SLOW), Some(measured));
    assert_eq!(in_window(&t), [FAST]);
    // A further sample moves the one average.
    t.on_rtt(SLOW, ms(250));
    assert_eq!(
        t.rtt_of(SLOW),
        Some(measured.mul_f64(0.8) + ms(250).mul_f64(0.2))
    );
    // A polling check's figure is taken as it is given (the monitor smooths it).
    t.on_check(mongos(SLOW, slow, Some(ms(2))));
    assert_eq!(t.rtt_of(SLOW), Some(ms(2)));
    assert_eq!(in_window(&t), [FAST, SLOW]);
}
