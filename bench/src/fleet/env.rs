//! One execution environment of the simulated fleet, modelled on Lambda's lifecycle.
//!
//! An environment is an OS thread with its own current-thread tokio runtime, and (in the
//! `direct` and `gateway` modes) its own official driver client created inside that runtime at
//! its cold start, so the driver's monitor and pool workers are tasks of that runtime alone.
//! The thread may be started ahead and parked; the runtime and client are made on arrival.
//!
//! - **Invoke**: the thread runs one invocation inside `block_on`; the driver's background
//!   tasks run only while it does.
//! - **Freeze**: between invocations the thread blocks on a channel *outside* `block_on`, so
//!   nothing of its driver runs: no heartbeats, no idle-connection reaping, no reading of
//!   sockets the server closed, exactly as Lambda stops a function's process between
//!   invocations. Its sockets stay open in the kernel.
//! - **Thaw**: the next invocation arrives on the channel; overdue timers fire at once.
//! - **Destroy**: the dispatcher drops the channel's sender after the idle timeout; the thread
//!   drops its client and runtime without a goodbye (no `endSessions`, no graceful shutdown),
//!   as Lambda ends an environment, and the kernel closes its sockets.
//!
//! What it must never do: run driver code outside an invocation, or run more than one
//! invocation at a time. Every invocation has a deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use bson::{doc, Document};
use clap::ValueEnum;
use mongodb::options::ClientOptions;
use mongodb::Client;

use super::timeline::Gauges;

pub const DB: &str = "fleet";
/// The seeded collection each invocation reads one document of.
pub const FIND_COLL: &str = "items";
/// The collection each invocation inserts one document into.
pub const INSERT_COLL: &str = "events";

/// How an environment gets its driver client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// A new client in every invocation, straight to the upstream, dropped at the handler's
    /// end: the anti-pattern AWS's guidance warns about.
    PerInvocation,
    /// One client per environment, created at cold start, straight to the upstream.
    Direct,
    /// One client per environment, created at cold start, through mongomux.
    Gateway,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::PerInvocation => "per-invocation",
            Mode::Direct => "direct",
            Mode::Gateway => "gateway",
        }
    }
}

/// One invocation handed to an environment.
#[derive(Clone, Copy, Debug)]
pub struct Invocation {
    pub seq: u64,
    /// When it was due to arrive; latency counts from here, so a dispatcher or thread that
    /// falls behind shows up in the figures instead of hiding from them.
    pub scheduled: Instant,
}

/// What an environment reports after each invocation.
#[derive(Debug)]
pub struct Done {
    pub env: u64,
    pub cold: bool,
    pub latency: Duration,
    pub error: Option<String>,
}

/// What every environment of one run shares.
pub struct EnvConfig {
    pub mode: Mode,
    /// The client options a function would use (see `super::client_options`).
    pub client_options: ClientOptions,
    pub invocation_timeout: Duration,
    /// Seeded documents in [`FIND_COLL`].
    pub docs: u64,
    /// Time spent after the database work, still inside the invocation.
    pub handler_work: Duration,
    pub stack_bytes: usize,
    /// Nice value of the environment threads (0: unchanged).
    pub nice: i32,
    /// Completions; bounded by the environment cap, since each has at most one in flight.
    pub done: tokio::sync::mpsc::Sender<Done>,
    pub gauges: Arc<Gauges>,
}

/// Start the thread of environment `id`, parked until its first invocation arrives on the
/// returned sender: that invocation is its cold start (runtime, client, connections). Threads
/// are started ahead of a burst because starting them on arrival made the dispatcher fall up to
/// 2.4 s behind a 2,000-per-second burst on a loaded two-core machine (a thread start took
/// over 1 ms on average, up to 200 ms), and a thread is not what a cold start costs on Lambda:
/// the function's initialisation is, and it happens on arrival. Dropping the sender ends a
/// parked thread, or destroys the environment once it is idle.
pub fn spawn(id: u64, cfg: Arc<EnvConfig>) -> Result<SyncSender<Invocation>> {
    // Capacity 1: the dispatcher only sends to a parked or idle environment.
    let (tx, rx) = sync_channel(1);
    let gauges = cfg.gauges.clone();
    gauges.threads.fetch_add(1, Ordering::Relaxed);
    let spawned = std::thread::Builder::new()
        .name(format!("fleet-env-{id}"))
        .stack_size(cfg.stack_bytes)
        .spawn(move || {
            let gauges = cfg.gauges.clone();
            let _thread = Decrement(&gauges.threads);
            lower_priority(cfg.nice);
            if let Ok(first) = rx.recv() {
                live(id, &cfg, first, rx);
            }
        });
    if let Err(e) = spawned {
        gauges.threads.fetch_sub(1, Ordering::Relaxed);
        return Err(e).context("spawn an environment thread");
    }
    Ok(tx)
}

/// Decrements a gauge when dropped, however the scope ends.
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The environment's whole life, on its own thread.
fn live(id: u64, cfg: &EnvConfig, first: Invocation, rx: Receiver<Invocation>) {
    cfg.gauges.alive.fetch_add(1, Ordering::Relaxed);
    let _alive = Decrement(&cfg.gauges.alive);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            cfg.gauges.completed.fetch_add(1, Ordering::Relaxed);
            let _ = cfg.done.blocking_send(Done {
                env: id,
                cold: true,
                latency: first.scheduled.elapsed(),
                error: Some(format!("build the environment's runtime: {e}")),
            });
            return;
        }
    };
    let mut client: Option<Client> = None;
    let mut inv = first;
    let mut cold = true;
    loop {
        cfg.gauges.busy.fetch_add(1, Ordering::Relaxed);
        // Boxed: driver futures are large and this thread's stack is small on purpose.
        let work = Box::pin(invoke(cfg, &mut client, inv.seq));
        // The timeout is made inside the runtime: its timer belongs to this runtime's clock.
        let result =
            rt.block_on(async { tokio::time::timeout(cfg.invocation_timeout, work).await });
        let latency = inv.scheduled.elapsed();
        cfg.gauges.busy.fetch_sub(1, Ordering::Relaxed);
        cfg.gauges.completed.fetch_add(1, Ordering::Relaxed);
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(short_error(&e)),
            Err(_) => Some(format!(
                "invocation timed out after {:?}",
                cfg.invocation_timeout
            )),
        };
        let done = Done {
            env: id,
            cold,
            latency,
            error,
        };
        if cfg.done.blocking_send(done).is_err() {
            break; // the dispatcher is gone: the run was abandoned
        }
        cold = false;
        // Frozen: blocked outside `block_on`, so no task of this runtime runs until a thaw.
        match rx.recv() {
            Ok(next) => inv = next,
            Err(_) => break, // destroyed
        }
    }
    // The driver's drop hands work to its tasks; entering the runtime lets it do so without a
    // running reactor, and dropping the runtime then drops those tasks and closes the sockets.
    let entered = rt.enter();
    drop(client);
    drop(entered);
    drop(rt);
}

/// Give this thread the nice value `nice`. Real functions run on their own hardware; here
/// thousands of runnable environment threads share the machine's cores with the upstream, the
/// gateway, the dispatcher and the sampler, and the kernel's fair scheduler would give each of
/// those a thousandth of a core. A higher nice value keeps the servers and the measurement
/// running as if the fleet were elsewhere. Best effort: a failure leaves the priority as is.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    extern "C" {
        fn setpriority(which: i32, who: u32, prio: i32) -> i32;
    }
    const PRIO_PROCESS: i32 = 0;
    // SAFETY: setpriority only reads its integer arguments. On Linux the nice value is
    // per-thread, and `who` 0 names the calling thread, so only this environment is affected.
    let _ = unsafe { setpriority(PRIO_PROCESS, 0, nice) };
}

/// One invocation's handler.
async fn invoke(cfg: &EnvConfig, client: &mut Option<Client>, seq: u64) -> Result<()> {
    match cfg.mode {
        Mode::PerInvocation => {
            // Created in the handler and dropped at its end, as such functions are written. The
            // driver closes its connections in background tasks, which get no CPU once the
            // environment freezes: they run at the next thaw, or never if it is destroyed.
            let c = Client::with_options(cfg.client_options.clone()).context("create client")?;
            let r = work(&c, cfg, seq).await;
            drop(c);
            r
        }
        Mode::Direct | Mode::Gateway => {
            let c = match client {
                Some(c) => c,
                None => client.insert(
                    Client::with_options(cfg.client_options.clone()).context("create client")?,
                ),
            };
            work(c, cfg, seq).await
        }
    }
}

/// The handler's work: read one seeded document by `_id`, record one event, then any other work
/// the run models (`--handler-work`).
async fn work(client: &Client, cfg: &EnvConfig, seq: u64) -> Result<()> {
    let docs = cfg.docs;
    let db = client.database(DB);
    // A fixed stride over the ids: every document is read, no two neighbours in a row.
    let id = doc_id(seq.wrapping_mul(7919) % docs.max(1));
    let found = db
        .collection::<Document>(FIND_COLL)
        .find_one(doc! {"_id": &id})
        .await
        .context("find_one")?;
    ensure!(found.is_some(), "find_one {id}: no document");
    db.collection::<Document>(INSERT_COLL)
        .insert_one(doc! {"seq": seq as i64, "pad": "x".repeat(64)})
        .await
        .context("insert_one")?;
    if !cfg.handler_work.is_zero() {
        tokio::time::sleep(cfg.handler_work).await;
    }
    Ok(())
}

/// The `_id` of the `i`th seeded document. A string: FerretDB's SQLite backend filters string
/// ids in SQL but integer ids in Go, which costs far more (see `crate::latency`).
pub fn doc_id(i: u64) -> String {
    format!("doc-{i:06}")
}

/// An error as one line of bounded length, so distinct errors can be counted.
fn short_error(e: &anyhow::Error) -> String {
    let mut s = format!("{e:#}").replace('\n', " ");
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
