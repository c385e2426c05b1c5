//! The official Rust driver against a replica set: discovery, then writes across an election.
//!
//! Support for `tests/python/test_rs_harness.py`, which runs this against the replica-set
//! harness (`tests/python/rsharness/`) to prove that the harness looks like a real set to a
//! second, independent SDAM implementation, not only to pymongo. Later the same program can be
//! pointed at the gateway. It prints JSON lines on stdout and nothing else there:
//!
//! 1. `{"event":"discovered", ...}` once the driver has found a primary and heard from every
//!    member of the seed list it learnt (the caller may then trigger an election);
//! 2. `{"event":"done", ...}` after `--run-ms`: inserts that succeeded and failed, every primary
//!    the driver saw (in order), and the final topology.
//!
//! Usage: `rs_follow <uri> [--run-ms N] [--interval-ms N]`. Exit status 0 unless the driver
//! could not discover the set at all.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use mongodb::event::sdam::{SdamEvent, TopologyDescription};
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::Client;
use serde_json::{json, Value};

/// What the SDAM callback keeps: the newest description and each primary in the order seen.
#[derive(Default)]
struct Seen {
    latest: Option<TopologyDescription>,
    primaries: Vec<String>,
}

fn describe(t: &TopologyDescription) -> Value {
    let mut servers = serde_json::Map::new();
    let mut primary = Value::Null;
    let mut secondaries = Vec::new();
    for (addr, info) in t.servers() {
        let kind = format!("{:?}", info.server_type());
        match kind.as_str() {
            "RsPrimary" => primary = json!(addr.to_string()),
            "RsSecondary" => secondaries.push(addr.to_string()),
            _ => {}
        }
        servers.insert(addr.to_string(), json!(kind));
    }
    secondaries.sort();
    json!({
        "topology_type": format!("{:?}", t.topology_type()),
        "set_name": t.set_name(),
        "max_set_version": t.max_set_version(),
        "max_election_id": t.max_election_id().map(|o| o.to_hex()),
        "primary": primary,
        "secondaries": secondaries,
        "servers": servers,
    })
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let uri = args
        .get(1)
        .ok_or("usage: rs_follow <uri> [--run-ms N] [--interval-ms N]")?;
    let run = Duration::from_millis(arg(&args, "--run-ms", 4000));
    let interval = Duration::from_millis(arg(&args, "--interval-ms", 50));

    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut options = ClientOptions::parse(uri).await?;
    let sink = Arc::clone(&seen);
    options.sdam_event_handler = Some(EventHandler::callback(move |ev: SdamEvent| {
        if let SdamEvent::TopologyDescriptionChanged(ev) = ev {
            let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = describe(&ev.new_description)["primary"].as_str() {
                if s.primaries.last().map(String::as_str) != Some(p) {
                    s.primaries.push(p.to_string());
                }
            }
            s.latest = Some(ev.new_description.clone());
        }
    }));
    let client = Client::with_options(options)?;
    let coll = client.database("rs_follow").collection("probe");

    // Discovery: a write needs the primary; then wait (bounded) until no member is Unknown.
    coll.insert_one(doc! {"phase": "discovery"}).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let discovered = loop {
        let now = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .latest
            .as_ref()
            .map(describe);
        if let Some(d) = now {
            let all_known = d["servers"]
                .as_object()
                .is_some_and(|m| m.values().all(|k| k != "Unknown"));
            if all_known || Instant::now() > deadline {
                break d;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("{}", json!({"event": "discovered", "topology": discovered}));

    let (mut inserted, mut errors, mut samples) = (0u64, 0u64, Vec::new());
    let started = Instant::now();
    let mut i = 0u64;
    while started.elapsed() < run {
        i += 1;
        match coll.insert_one(doc! {"i": i as i64}).await {
            Ok(_) => inserted += 1,
            Err(e) => {
                errors += 1;
                if samples.len() < 5 {
                    samples.push(e.to_string());
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "{}",
        json!({
            "event": "done",
            "inserted": inserted,
            "errors": errors,
            "error_samples": samples,
            "primaries": s.primaries,
            "topology": s.latest.as_ref().map(describe),
        })
    );
    Ok(())
}
