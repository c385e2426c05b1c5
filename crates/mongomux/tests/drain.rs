//! Graceful drain: 200 clients are inserting documents with unique ids when the gateway gets
//! SIGTERM. The gateway must finish what was in flight, exit 0 within its drain timeout, and lose
//! nothing: every insert the driver saw acknowledged is in FerretDB, and every insert that failed
//! cleanly is not.
//!
//! How each operation is judged (from the driver's own command events, which say when each
//! attempt, including the driver's automatic retry, was written to the socket and how it ended):
//! - succeeded: all its documents must be in FerretDB;
//! - failed, with every attempt either answered by an error reply or never sent (the driver could
//!   not connect once the gateway stopped accepting): none of its documents may be in FerretDB;
//! - failed with the connection cut under an attempt: the client cannot know whether the write
//!   happened, so either is accepted, but only for attempts sent at about the moment of SIGTERM
//!   (less than `RACE` before it, or after). An attempt sent earlier was in flight and must have
//!   been completed: having it cut is a failure of the test, as is any failure before SIGTERM and
//!   any operation that hangs.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::event::command::CommandEvent;
use mongodb::Client;

const CLIENTS: usize = 200;
/// Clients 0..BATCH_CLIENTS insert batches of BATCH documents (slow operations, so that some are
/// surely in flight at SIGTERM); the others insert one document at a time.
const BATCH_CLIENTS: usize = 20;
const BATCH: usize = 300;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const RACE: Duration = Duration::from_millis(250);
const OP_LIMIT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
#[allow(dead_code)] // the payloads are read through Debug in assertion messages
enum AttemptEnd {
    Ok,
    /// An error reply from the server: (code, codeName or message).
    Reply(Option<i32>, String),
    /// The connection failed under the attempt.
    Cut(String),
    /// No Succeeded/Failed event was seen.
    Unknown,
}

#[derive(Clone, Debug)]
struct Attempt {
    sent: Instant,
    end: AttemptEnd,
}

#[derive(Clone, Debug)]
struct Op {
    client: usize,
    start: Instant,
    end: Instant,
    ids: Vec<String>,
    result: Result<(), String>,
    hung: bool,
    attempts: Vec<Attempt>,
}

fn attempts_from(events: Vec<(Instant, CommandEvent)>) -> Vec<Attempt> {
    let mut by_request: Vec<(i32, Attempt)> = Vec::new();
    let mut index: HashMap<i32, usize> = HashMap::new();
    for (at, ev) in events {
        match ev {
            CommandEvent::Started(s) => {
                index.insert(s.request_id, by_request.len());
                by_request.push((
                    s.request_id,
                    Attempt {
                        sent: at,
                        end: AttemptEnd::Unknown,
                    },
                ));
            }
            CommandEvent::Succeeded(s) => {
                if let Some(&i) = index.get(&s.request_id) {
                    by_request[i].1.end = AttemptEnd::Ok;
                }
            }
            CommandEvent::Failed(f) => {
                if let Some(&i) = index.get(&f.request_id) {
                    by_request[i].1.end = match f.failure.kind.as_ref() {
                        ErrorKind::Io(e) => AttemptEnd::Cut(e.to_string()),
                        ErrorKind::Command(c) => {
                            AttemptEnd::Reply(Some(c.code), c.code_name.clone())
                        }
                        _ if error_code(&f.failure).is_some() => {
                            AttemptEnd::Reply(error_code(&f.failure), f.failure.to_string())
                        }
                        _ => AttemptEnd::Cut(f.failure.to_string()),
                    };
                }
            }
            _ => {}
        }
    }
    by_request.into_iter().map(|(_, a)| a).collect()
}

async fn run_client(
    c: usize,
    client: Client,
    log: CommandLog,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<Op>>>,
) {
    let coll = client.database("drain").collection::<Document>("docs");
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let ids: Vec<String> = if c < BATCH_CLIENTS {
            (0..BATCH).map(|k| format!("c{c}-{seq}-{k}")).collect()
        } else {
            vec![format!("c{c}-{seq}")]
        };
        log.take();
        let start = Instant::now();
        let fut = async {
            if ids.len() > 1 {
                coll.insert_many(
                    ids.iter()
                        .map(|id| doc! {"_id": id, "pad": "d".repeat(100)}),
                )
                .await
                .map(|_| ())
            } else {
                coll.insert_one(doc! {"_id": &ids[0]}).await.map(|_| ())
            }
        };
        let (result, hung) = match tokio::time::timeout(OP_LIMIT, fut).await {
            Ok(r) => (r.map_err(|e| e.to_string()), false),
            Err(_) => (Err(format!("no answer within {OP_LIMIT:?}")), true),
        };
        let end = Instant::now();
        // Let a late Failed/Succeeded event land before collecting.
        tokio::task::yield_now().await;
        let attempts = attempts_from(log.take());
        let failed = result.is_err();
        out.lock().unwrap().push(Op {
            client: c,
            start,
            end,
            ids,
            result,
            hung,
            attempts,
        });
        if failed {
            // The gateway is going away; do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_loses_no_in_flight_operation() {
    raise_nofile_limit();
    bounded(Duration::from_secs(120), "drain", scenario()).await;
}

async fn scenario() {
    let (ferret, mut gw) = ferret_stack(|c| {
        c.pool_size = 10;
        c.drain_timeout = Some("10s");
        c.checkout_timeout = "15s";
    })
    .await;
    assert!(
        !gw.is_direct(),
        "the drain test needs the real gateway (unset MONGOMUX_TEST_DIRECT)"
    );

    let clients: Vec<(Client, CommandLog)> = (0..CLIENTS)
        .map(|_| {
            gw.recorded_client(|o| {
                o.max_pool_size = Some(1);
                // Short, so that operations fail fast once the gateway has gone.
                o.server_selection_timeout = Some(Duration::from_secs(3));
                o.connect_timeout = Some(Duration::from_secs(5));
            })
        })
        .collect();
    let t_connect = Instant::now();
    for (c, (client, _)) in clients.iter().enumerate() {
        let ping = client.database("admin").run_command(doc! {"ping": 1}).await;
        if let Err(e) = ping {
            let after = t_connect.elapsed();
            panic!(
                "client {c}: ping before the run, {after:?} after the clients were created: {e}"
            );
        }
    }
    eprintln!("{CLIENTS} clients connected in {:?}", t_connect.elapsed());

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(Mutex::new(Vec::<Op>::new()));
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(c, (client, log))| {
            let (client, log, stop, ops) = (client.clone(), log.clone(), stop.clone(), ops.clone());
            tokio::spawn(run_client(c, client, log, stop, ops))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let done_before = ops.lock().unwrap().len();
    assert!(done_before > 0, "no operation finished before SIGTERM");
    let t_sig = Instant::now();
    gw.sigterm();
    let exit_limit = DRAIN_TIMEOUT + Duration::from_secs(5);
    let status = gw.wait_exit(exit_limit).await;
    let drain_time = t_sig.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        bounded(OP_LIMIT + Duration::from_secs(5), "client task to stop", t)
            .await
            .unwrap();
    }
    let status = status
        .unwrap_or_else(|| panic!("the gateway did not exit within {exit_limit:?} of SIGTERM"));
    eprintln!("gateway exited with {status} {drain_time:?} after SIGTERM");

    let present: HashSet<String> = ferret
        .direct()
        .await
        .find_all("drain", "docs", doc! {})
        .await
        .into_iter()
        .map(|d| d.get_str("_id").unwrap().to_string())
        .collect();
    let ops = ops.lock().unwrap().clone();
    let verdict = judge(&ops, &present, t_sig);
    eprintln!(
        "{} operations; {} in flight at SIGTERM (sent >= {RACE:?} before it); outcomes {:?}; \
         error replies {:?}",
        ops.len(),
        verdict.in_flight,
        verdict.tally,
        verdict.reply_codes
    );
    let mut problems = verdict.problems;
    let n = problems.len();
    problems.truncate(10);
    assert!(
        problems.is_empty(),
        "{n} operations were lost or mis-reported:\n{}",
        problems.join("\n")
    );
    assert!(
        verdict.in_flight >= 1,
        "no operation was in flight at SIGTERM; the test proved nothing"
    );
    assert!(
        status.success(),
        "the gateway must exit 0 after a drain, got {status}"
    );
    assert!(
        drain_time <= DRAIN_TIMEOUT + Duration::from_secs(2),
        "the gateway took {drain_time:?} to exit; --drain-timeout is {DRAIN_TIMEOUT:?}"
    );
}

struct Verdict {
    problems: Vec<String>,
    tally: BTreeMap<&'static str, usize>,
    reply_codes: BTreeMap<String, usize>,
    in_flight: usize,
}

/// Judge every operation by the rules in the module docs.
fn judge(ops: &[Op], present: &HashSet<String>, t_sig: Instant) -> Verdict {
    let mut v = Verdict {
        problems: Vec::new(),
        tally: BTreeMap::new(),
        reply_codes: BTreeMap::new(),
        in_flight: 0,
    };
    for op in ops {
        let n_present = op.ids.iter().filter(|id| present.contains(*id)).count();
        let sent_early = op.attempts.iter().any(|a| a.sent + RACE <= t_sig);
        if sent_early && op.end > t_sig {
            v.in_flight += 1;
        }
        for a in &op.attempts {
            if let AttemptEnd::Reply(code, name) = &a.end {
                *v.reply_codes.entry(format!("{code:?} {name}")).or_default() += 1;
            }
        }
        let what = format!(
            "client {} op {:?} (started {:?} before SIGTERM)",
            op.client,
            op.ids.first(),
            t_sig.saturating_duration_since(op.start)
        );
        if op.hung {
            v.problems.push(format!("{what}: hung"));
            *v.tally.entry("hung").or_default() += 1;
            continue;
        }
        let e = match &op.result {
            Ok(()) => {
                *v.tally.entry("acknowledged").or_default() += 1;
                if n_present != op.ids.len() {
                    let n = op.ids.len();
                    v.problems.push(format!(
                        "{what}: acknowledged but only {n_present}/{n} documents are in FerretDB"
                    ));
                }
                continue;
            }
            Err(e) => e,
        };
        if op.end < t_sig {
            v.problems
                .push(format!("{what}: failed before SIGTERM: {e}"));
            continue;
        }
        let cut: Vec<&Attempt> = op
            .attempts
            .iter()
            .filter(|a| matches!(a.end, AttemptEnd::Cut(_) | AttemptEnd::Unknown))
            .collect();
        if cut.is_empty() {
            *v.tally.entry("failed cleanly").or_default() += 1;
            if n_present != 0 {
                v.problems.push(format!(
                    "{what}: failed cleanly ({e}) yet {n_present} of its documents are in FerretDB"
                ));
            }
        } else if let Some(a) = cut.iter().find(|a| a.sent + RACE <= t_sig) {
            *v.tally.entry("cut while in flight").or_default() += 1;
            v.problems.push(format!(
                "{what}: an attempt sent {:?} before SIGTERM had its connection cut ({:?}); \
                 final error: {e}",
                t_sig - a.sent,
                a.end
            ));
        } else {
            // Accepted either way, but count the writes that did happen although the client was
            // told the connection failed.
            let key = if n_present == 0 {
                "cut at SIGTERM, not applied (accepted)"
            } else {
                "cut at SIGTERM, applied anyway (accepted)"
            };
            *v.tally.entry(key).or_default() += 1;
        }
    }
    v
}
