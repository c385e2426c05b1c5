//! Whole client sessions through the gateway: several clients connect, say hello, log in (with
//! the right password or a wrong one), open and continue cursors, run transactions under a few
//! sessions, send arbitrary BSON and hand-made bytes, and disconnect, interleaved as the input
//! says, against the real gateway running in this process in front of a stand-in upstream
//! (`session/upstream.rs`, loopback TCP, no external process).
//!
//! The input is a list of steps in a small op language (derived with `arbitrary`). After every
//! step the target checks:
//! - no panic anywhere: libfuzzer-sys's panic hook aborts the process on a panic in any thread
//!   or task, the gateway's included, so a panicking gateway task fails the run;
//! - every reply a client reads answers that client's own request, in order, and a relayed
//!   upstream reply carries the mark of exactly that request (`session/client.rs`);
//! - a `getMore` only ever returns documents of a cursor its owner opened;
//! - the upstream connections open at once never exceed the pool bound (plus the monitor's);
//! - every wait is bounded: a reply owed for [`client::REPLY_DEADLINE`] or an iteration longer
//!   than [`ITERATION_DEADLINE`] is a failure (a hang).
//!
//! Each iteration starts a fresh stand-in and a fresh gateway on one tokio runtime kept for
//! the whole run, so an input replays the same way on its own (`cargo fuzz run session FILE`).
#![no_main]

#[path = "session/client.rs"]
mod client;
#[path = "session/commands.rs"]
mod commands;
#[path = "session/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mongomux_auth::{Mechanism, ScramCredential, Secret, MIN_ITERATIONS};
use mongomux_gateway::identity::users::{Role, UserConfig};
use mongomux_gateway::{Gateway, RawConfig, Settings};

use client::{Client, Request, World};
use commands::{Cmd, CursorPick};
use upstream::{Fault, Upstream};

const CLIENTS: usize = 4;
const MAX_STEPS: usize = 48;
/// The gateway's per-member pool size, and the monitoring connections it may hold beside it.
const POOL_SIZE: u64 = 2;
const MONITOR_CONNECTIONS: u64 = 2;
const ITERATION_DEADLINE: Duration = Duration::from_secs(8);
/// Failed logins per iteration, kept under the gateway's allowance so that its throttle never
/// delays a reply past the deadlines here.
const MAX_FAILED_LOGINS: u32 = 4;
/// (name, password, role, databases)
const USERS: [(&str, &str, Role, &[&str]); 2] = [
    ("alice", "alice-pw", Role::ReadWrite, &[]),
    ("bob", "bob-pw", Role::Read, &["app"]),
];

#[derive(Arbitrary, Debug)]
struct Input {
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Connect(u8),
    Hello {
        client: u8,
        legacy: bool,
    },
    Login {
        client: u8,
        user: u8,
        wrong: bool,
        sha1: bool,
    },
    Send {
        client: u8,
        cmd: Cmd,
        wait: bool,
    },
    Receive(u8),
    HandFramed {
        client: u8,
        op_code: HandOp,
        body: Vec<u8>,
    },
    Garbage {
        client: u8,
        bytes: Vec<u8>,
    },
    Disconnect(u8),
    UpstreamFault(FaultPick),
    Pause(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HandOp {
    Msg,
    Query,
    Compressed,
    Other(i32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum FaultPick {
    Drop,
    WrongResponseTo,
    ShutdownInProgress,
    NotWritablePrimary,
    CursorNotFound,
    NoSuchTransaction,
    Code(i32),
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// The users' stored SCRAM keys, derived once (PBKDF2 is slow on purpose).
fn users() -> &'static Vec<UserConfig> {
    static USERS_CFG: OnceLock<Vec<UserConfig>> = OnceLock::new();
    USERS_CFG.get_or_init(|| {
        USERS
            .iter()
            .map(|(name, pw, role, dbs)| UserConfig {
                name: name.to_string(),
                db: "admin".into(),
                role: *role,
                databases: dbs.iter().map(|d| d.to_string()).collect(),
                scram: [Mechanism::ScramSha1, Mechanism::ScramSha256]
                    .into_iter()
                    .map(|m| ScramCredential::derive(m, name, &Secret::new(*pw), MIN_ITERATIONS))
                    .collect(),
                aws: false,
            })
            .collect()
    })
}

/// Short timeouts everywhere, so that anything the gateway waits for ends well inside the
/// client's deadline; a small pool, so that clients contend for it.
fn settings(upstream: SocketAddr) -> Settings {
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n\
         upstream = \"mongodb://{upstream}/?heartbeatFrequencyMS=500&serverSelectionTimeoutMS=1000\"\n\
         pool_size = {POOL_SIZE}\ncheckout_timeout = \"300ms\"\nconnect_timeout = \"500ms\"\n\
         handshake_timeout = \"2s\"\ndrain_timeout = \"200ms\"\n\
         max_cursors_per_client = 3\nmax_sessions_per_client = 3\n"
    );
    let mut raw = RawConfig::from_toml(&toml).expect("fuzz gateway config");
    raw.users = users().clone();
    Settings::from_raw(raw).expect("fuzz gateway settings")
}

fn fault(pick: FaultPick) -> Fault {
    match pick {
        FaultPick::Drop => Fault::Drop,
        FaultPick::WrongResponseTo => Fault::WrongResponseTo,
        FaultPick::ShutdownInProgress => Fault::Error(91),
        FaultPick::NotWritablePrimary => Fault::Error(10107),
        FaultPick::CursorNotFound => Fault::Error(43),
        FaultPick::NoSuchTransaction => Fault::Error(251),
        FaultPick::Code(c) => Fault::Error(c),
    }
}

fn hand_op(op: HandOp) -> i32 {
    match op {
        HandOp::Msg => 2013,
        HandOp::Query => 2004,
        HandOp::Compressed => 2012,
        HandOp::Other(c) => c,
    }
}

/// The cursor id a command names.
fn cursor_id(pick: &CursorPick, mine: &[i64], world: &World) -> i64 {
    let from = |ids: &[i64], i: u8| {
        ids.get(usize::from(i) % ids.len().max(1))
            .copied()
            .unwrap_or(1)
    };
    match pick {
        CursorPick::Mine(i) => from(mine, *i),
        CursorPick::Anyones(i) => from(&world.cursors, *i),
        CursorPick::Number(n) => *n,
    }
}

/// Checks the pool bound as the stand-in saw it, now and at every connection it accepted.
fn check_pool(up: &Upstream) {
    let (pooled, total) = up.peaks();
    assert!(
        pooled <= POOL_SIZE,
        "{pooled} pooled upstream connections open at once (bound {POOL_SIZE})"
    );
    assert!(
        total <= POOL_SIZE + MONITOR_CONNECTIONS,
        "{total} upstream connections open at once (bound {POOL_SIZE} + {MONITOR_CONNECTIONS} monitoring)"
    );
}

async fn step(
    s: &Step,
    addr: SocketAddr,
    clients: &mut [Option<Client>],
    world: &mut World,
    up: &Upstream,
) {
    let slot = |k: u8| usize::from(k) % CLIENTS;
    match s {
        Step::Connect(k) => {
            let k = slot(*k);
            if clients[k].is_none() {
                clients[k] = Client::connect(addr, k, world).await;
            }
        }
        Step::Disconnect(k) => clients[slot(*k)] = None,
        Step::UpstreamFault(f) => up.arm(fault(*f)),
        Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(u64::from(*ms % 50))).await,
        Step::Hello { client, legacy } => {
            let Some(c) = clients[slot(*client)].as_mut() else {
                return;
            };
            if *legacy {
                c.send_legacy_hello().await;
            } else {
                let body = bson::doc! { "hello": 1, "helloOk": true, "$db": "admin",
                "client": { "driver": { "name": "fuzz", "version": "0" } } };
                c.send(
                    world,
                    Request {
                        body,
                        opens_cursor: false,
                        continues_cursor: false,
                    },
                )
                .await;
            }
            c.receive(world).await;
        }
        Step::Login {
            client,
            user,
            wrong,
            sha1,
        } => {
            let Some(c) = clients[slot(*client)].as_mut() else {
                return;
            };
            if *wrong && world.failed_logins >= MAX_FAILED_LOGINS {
                return;
            }
            let index = usize::from(*user) % USERS.len();
            let (name, pw, ..) = USERS[index];
            let m = if *sha1 {
                Mechanism::ScramSha1
            } else {
                Mechanism::ScramSha256
            };
            let ok = c
                .authenticate(world, (index, name, if *wrong { "wrong" } else { pw }), m)
                .await;
            assert!(!(ok && *wrong), "the gateway accepted a wrong password");
            world.failed_logins += u32::from(!ok);
        }
        Step::Send { client, cmd, wait } => {
            let Some(c) = clients[slot(*client)].as_mut() else {
                return;
            };
            let id = cursor_id(&cmd.cursor, &c.cursors, world);
            let mark = c.next_mark();
            let req = Request {
                body: cmd.body(id, &mark),
                opens_cursor: cmd.opens_cursor(),
                continues_cursor: cmd.continues_cursor(),
            };
            c.send(world, req).await;
            if *wait {
                c.receive(world).await;
            }
        }
        Step::Receive(k) => {
            if let Some(c) = clients[slot(*k)].as_mut() {
                c.receive(world).await;
            }
        }
        Step::HandFramed {
            client,
            op_code,
            body,
        } => {
            if let Some(c) = clients[slot(*client)].as_mut() {
                c.send_hand_framed(hand_op(*op_code), body).await;
            }
        }
        Step::Garbage { client, bytes } => {
            if let Some(c) = clients[slot(*client)].as_mut() {
                c.send_garbage(bytes).await;
            }
        }
    }
}

async fn session(input: Input) {
    let up = Upstream::start().await;
    let gw = Gateway::bind(settings(up.addr()))
        .await
        .expect("bind the gateway");
    let addr = gw.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(gw.run(async {
        let _ = stopped.await;
    }));
    let mut clients: Vec<Option<Client>> = (0..CLIENTS).map(|_| None).collect();
    let mut world = World::default();
    for s in input.steps.iter().take(MAX_STEPS) {
        step(s, addr, &mut clients, &mut world, &up).await;
        check_pool(&up);
    }
    // Every reply still owed is read and checked before the clients leave.
    for c in clients.iter_mut().flatten() {
        c.drain(&mut world).await;
        check_pool(&up);
    }
    let t = std::time::Instant::now();
    drop(clients);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .expect("the gateway did not finish draining")
        .expect("the gateway task panicked");
    if client::tracing() {
        eprintln!("teardown took {:?}", t.elapsed());
    }
    check_pool(&up);
    up.stop();
}

fuzz_target!(|input: Input| {
    runtime().block_on(async {
        tokio::time::timeout(ITERATION_DEADLINE, session(input))
            .await
            .expect("iteration deadline: something waited without a bound");
    });
});
