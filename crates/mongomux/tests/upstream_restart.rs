//! Upstream restart: FerretDB is killed (SIGKILL) while clients are busy, then started again on
//! the same port and data. Operations in flight or issued during the outage must fail with an
//! error the driver treats as retryable (the contract: code 6 HostUnreachable with
//! RetryableWriteError, or 262 from the checkout queue), never hang; once FerretDB is back,
//! operations succeed again through the same gateway process, and every write that was
//! acknowledged is in FerretDB.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::Client;

const WORKERS: usize = 8;
const OP_LIMIT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
struct Op {
    worker: usize,
    start: Instant,
    end: Instant,
    inserted: Vec<String>,
    outcome: Result<(), Failure>,
}

#[derive(Clone, Debug)]
#[allow(dead_code)] // `text` is read through Debug in assertion messages
struct Failure {
    class: String,
    retryable: bool,
    text: String,
}

fn classify(e: &mongodb::error::Error) -> Failure {
    let class = match e.kind.as_ref() {
        ErrorKind::Io(_) => "network error (connection closed/reset)".to_string(),
        ErrorKind::ServerSelection { .. } => "server selection timeout".to_string(),
        ErrorKind::ConnectionPoolCleared { .. } => "driver pool cleared".to_string(),
        _ => match error_code(e) {
            Some(c) => format!("server error code {c}"),
            None => format!("other: {:?}", e.kind).chars().take(60).collect(),
        },
    };
    Failure {
        class,
        retryable: is_retryable_failure(e),
        text: e.to_string(),
    }
}

async fn worker(w: usize, client: Client, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Op>>>) {
    let coll = client.database("restart").collection::<Document>("ops");
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let start = Instant::now();
        // Worker 0 writes big batches so that something is surely in flight at the kill.
        let ids: Vec<String> = if w == 0 {
            (0..2000).map(|k| format!("w{w}-{seq}-{k}")).collect()
        } else {
            vec![format!("w{w}-{seq}")]
        };
        let fut = async {
            if ids.len() > 1 {
                coll.insert_many(
                    ids.iter()
                        .map(|id| doc! {"_id": id, "pad": "p".repeat(200)}),
                )
                .await
                .map(|_| ())
            } else if seq % 2 == 1 {
                coll.insert_one(doc! {"_id": &ids[0]}).await.map(|_| ())
            } else {
                coll.find_one(doc! {"_id": format!("w{w}-{}", seq - 1)})
                    .await
                    .map(|_| ())
            }
        };
        let outcome = match tokio::time::timeout(OP_LIMIT, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(Failure {
                class: "HUNG".into(),
                retryable: false,
                text: format!("no answer within {OP_LIMIT:?}"),
            }),
        };
        let inserted = if ids.len() > 1 || seq % 2 == 1 {
            ids
        } else {
            Vec::new()
        };
        log.lock().unwrap().push(Op {
            worker: w,
            start,
            end: Instant::now(),
            inserted,
            outcome,
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_survives_upstream_restart() {
    bounded(Duration::from_secs(120), "upstream_restart", async {
        let (mut ferret, mut gw) = ferret_stack(|c| {
            c.pool_size = 4;
            c.checkout_timeout = "2s";
        })
        .await;
        let gw_pid = gw.pid();
        // The driver does not retry: FerretDB 1.x ignores txnNumber, so an insert it applied
        // just before the kill would come back as a duplicate key on the driver's retry, an
        // outcome of the upstream, not of the gateway. This test judges the error the gateway
        // gives the first time.
        let client = gw.client_with(|o| {
            o.server_selection_timeout = Some(Duration::from_secs(5));
            o.max_pool_size = Some(16);
            o.retry_writes = Some(false);
        });
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::<Op>::new()));
        let tasks: Vec<_> = (0..WORKERS)
            .map(|w| tokio::spawn(worker(w, client.clone(), stop.clone(), log.clone())))
            .collect();

        // Let work get going, and make sure a big batch is in flight when FerretDB dies.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let ok_before = log
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.outcome.is_ok())
            .count();
        assert!(ok_before > 0, "no operation succeeded before the kill");
        let t_kill = Instant::now();
        ferret.kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let t_restart = Instant::now();
        ferret.restart().await;
        let t_ready = Instant::now();
        eprintln!(
            "FerretDB down for {:?}; back up {:?} after restart began",
            t_restart - t_kill,
            t_ready - t_restart
        );

        // Bounded wait: every worker succeeds 5 times in a row after FerretDB is back.
        let recovered = wait_for(
            Duration::from_secs(40),
            "operations to succeed again after the restart",
            || {
                let log = log.clone();
                async move {
                    let log = log.lock().unwrap();
                    let mut first_ok = None::<Instant>;
                    for w in 0..WORKERS {
                        let after: Vec<&Op> = log
                            .iter()
                            .filter(|o| o.worker == w && o.start >= t_ready)
                            .collect();
                        let tail_ok = after.len() >= 5
                            && after[after.len() - 5..].iter().all(|o| o.outcome.is_ok());
                        if !tail_ok {
                            return None;
                        }
                        let f = after.iter().find(|o| o.outcome.is_ok()).unwrap().end;
                        first_ok = Some(first_ok.map_or(f, |x| x.max(f)));
                    }
                    first_ok
                }
            },
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            bounded(OP_LIMIT + Duration::from_secs(5), "worker to stop", t)
                .await
                .unwrap();
        }
        eprintln!(
            "all workers succeeding again {:?} after FerretDB was ready",
            recovered.saturating_duration_since(t_ready)
        );
        assert!(
            gw.is_running() && gw.pid() == gw_pid,
            "the gateway process must survive the restart"
        );

        let ops = log.lock().unwrap().clone();
        let mut classes: BTreeMap<String, usize> = BTreeMap::new();
        for o in &ops {
            if let Err(f) = &o.outcome {
                *classes.entry(f.class.clone()).or_default() += 1;
            }
        }
        let in_flight = ops
            .iter()
            .filter(|o| o.start < t_kill && o.end > t_kill)
            .count();
        eprintln!(
            "{} operations, {in_flight} in flight at the kill; failures by kind: {classes:?}",
            ops.len()
        );

        // No failure before the kill, and none that is not retryable.
        let early: Vec<&Op> = ops
            .iter()
            .filter(|o| o.outcome.is_err() && o.end < t_kill)
            .collect();
        assert!(
            early.is_empty(),
            "failures before FerretDB was killed: {early:#?}"
        );
        let bad: Vec<&Op> = ops
            .iter()
            .filter(|o| matches!(&o.outcome, Err(f) if !f.retryable))
            .collect();
        assert!(
            bad.is_empty(),
            "{} failures were not retryable (or hung), e.g. {:#?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        assert!(
            in_flight >= 1,
            "nothing was in flight when FerretDB was killed; the test proved nothing"
        );
        let failed_during_outage = ops
            .iter()
            .filter(|o| o.outcome.is_err() && o.end >= t_kill)
            .count();
        assert!(
            failed_during_outage >= 1,
            "no operation failed while FerretDB was down?"
        );
        // The contract answers an upstream failure with an error reply (code 6) rather than by
        // hanging up on the client.
        let hangups: Vec<&Op> = ops
            .iter()
            .filter(|o| matches!(&o.outcome, Err(f) if f.class.starts_with("network error")))
            .collect();
        assert!(
            hangups.is_empty(),
            "{} operations saw the gateway close the client connection instead of an error reply \
                (contract: code 6 HostUnreachable), e.g. {:#?}",
            hangups.len(),
            &hangups[..hangups.len().min(3)]
        );

        // Every acknowledged insert is in FerretDB (which kept its SQLite files across the kill).
        let present: HashSet<String> = ferret
            .direct()
            .await
            .find_all("restart", "ops", doc! {})
            .await
            .into_iter()
            .map(|d| d.get_str("_id").unwrap().to_string())
            .collect();
        let missing: Vec<&String> = ops
            .iter()
            .filter(|o| o.outcome.is_ok())
            .flat_map(|o| o.inserted.iter())
            .filter(|id| !present.contains(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged inserts are missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );

        // A brand-new client works too.
        gw.client()
            .database("restart")
            .run_command(doc! {"ping": 1})
            .await
            .expect("new client after restart");
        let _ = gw.wait_exit(Duration::ZERO).await;
    })
    .await;
}
