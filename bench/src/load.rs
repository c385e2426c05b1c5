//! The load both timing scenarios drive: workers on raw OP_MSG connections (one connection per
//! concurrent worker, a pool as large as the concurrency) issuing single-document `find` and
//! `insert` commands against a named target, each operation timed and checked.
//!
//! It is shared by `latency` (percentiles per level, targets interleaved) and `throughput`
//! (operations per second and CPU per operation), so both measure exactly the same requests.
//!
//! What it must never do: hide an error or a hang. Every operation has a deadline; errors are
//! counted with the first kept; a timeout aborts the round.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use bson::oid::ObjectId;
use bson::{doc, Document};
use clap::ValueEnum;
use hdrhistogram::Histogram;

use crate::procs::login;
use crate::report::{new_histogram, Summary};
use mongomux_testkit::{is_ok, RawConn};

/// Longest any single operation may take before the run is declared hung.
pub const OP_DEADLINE: Duration = Duration::from_secs(30);
/// Longest a connection may take to open, handshake and log in.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(30);
pub const DB: &str = "bench";
pub const FIND_COLL: &str = "latency_find";
const INSERT_COLL: &str = "latency_insert";

/// An operation kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Op {
    Find,
    Insert,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Find => "find",
            Op::Insert => "insert",
        }
    }
}

/// Where the client connects: a named endpoint, logged in as the bench's upstream user or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// `direct`, `gateway`, `mongobetween`: the name in tables and CSV.
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Log in with SCRAM-SHA-256 as the bench user (FerretDB with auth, directly).
    pub login: bool,
    /// Open with a driver's `hello` (with client metadata). Off for mongobetween, which forwards
    /// `hello` to an already-handshaken upstream connection, where it fails with code 186
    /// ClientMetadataCannotBeMutated.
    pub hello: bool,
}

impl Target {
    pub fn name(self) -> &'static str {
        self.name
    }

    async fn connect(self) -> Result<RawConn> {
        if self.login {
            login(self.addr, CONNECT_DEADLINE).await
        } else if !self.hello {
            tokio::time::timeout(CONNECT_DEADLINE, RawConn::connect(self.addr, None))
                .await
                .with_context(|| format!("connect to {}: no answer", self.name))?
                .map_err(Into::into)
        } else {
            Ok(RawConn::handshake(self.addr, None, CONNECT_DEADLINE)
                .await?
                .0)
        }
    }
}

/// One target's connections (a pool as large as the highest concurrency) and its counters.
pub struct Endpoint {
    pub target: Target,
    conns: Vec<RawConn>,
    size: usize,
    /// Operations issued so far: picks the `_id` of the next find.
    seq: Arc<AtomicU64>,
    docs: u64,
}

impl Endpoint {
    pub async fn open(target: Target, size: usize, docs: u64) -> Result<Endpoint> {
        let mut e = Endpoint {
            target,
            conns: Vec::with_capacity(size),
            size,
            seq: Arc::new(AtomicU64::new(0)),
            docs,
        };
        e.refill().await?;
        Ok(e)
    }

    /// Replace connections dropped after an I/O error, so every round starts with a full pool.
    async fn refill(&mut self) -> Result<()> {
        let missing = self.size - self.conns.len();
        let opened = futures::future::join_all((0..missing).map(|_| self.target.connect())).await;
        for c in opened {
            self.conns
                .push(c.with_context(|| format!("connect to {}", self.target.name()))?);
        }
        Ok(())
    }

    /// Run `total` operations on `conc` workers, each on its own connection, timing each one.
    pub async fn round(&mut self, op: Op, conc: u32, total: u64) -> Result<Round> {
        self.refill().await?;
        let next = Arc::new(AtomicU64::new(0));
        let abort = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let tasks: Vec<_> = self
            .conns
            .drain(..conc as usize)
            .map(|conn| {
                let w = Worker {
                    op,
                    target: self.target,
                    docs: self.docs,
                    seq: self.seq.clone(),
                    next: next.clone(),
                    abort: abort.clone(),
                    total,
                };
                tokio::spawn(w.run(conn))
            })
            .collect();
        let mut round = Round {
            hist: new_histogram(),
            errors: 0,
            first_error: None,
            timed_out: false,
            elapsed: Duration::ZERO,
        };
        for t in futures::future::join_all(tasks).await {
            let out = t.expect("latency worker panicked");
            round.hist.add(&out.hist).expect("same histogram bounds");
            round.errors += out.errors;
            round.first_error = round.first_error.or(out.first_error);
            round.timed_out |= out.timed_out;
            self.conns.extend(out.conn);
        }
        round.elapsed = start.elapsed();
        Ok(round)
    }
}

/// The outcome of one round.
pub struct Round {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// One concurrent client of a round.
struct Worker {
    op: Op,
    target: Target,
    docs: u64,
    seq: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    abort: Arc<AtomicBool>,
    total: u64,
}

/// What a worker hands back: its connection unless it broke, and its measurements.
struct WorkerOut {
    conn: Option<RawConn>,
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    timed_out: bool,
}

impl Worker {
    async fn run(self, mut conn: RawConn) -> WorkerOut {
        let mut out = WorkerOut {
            conn: None,
            hist: new_histogram(),
            errors: 0,
            first_error: None,
            timed_out: false,
        };
        let mut healthy = true;
        while healthy
            && !self.abort.load(Ordering::Relaxed)
            && self.next.fetch_add(1, Ordering::Relaxed) < self.total
        {
            let (cmd, check) = self.command();
            let t0 = Instant::now();
            let result = conn.command(&cmd, OP_DEADLINE).await;
            let ns = t0.elapsed().as_nanos() as u64;
            let err = match result {
                Ok(reply) => check(&reply).err(),
                Err(e) => {
                    // The stream can no longer be trusted: drop this connection.
                    healthy = false;
                    if matches!(e, mongomux_testkit::Error::Timeout(..)) {
                        out.timed_out = true;
                        self.abort.store(true, Ordering::Relaxed);
                    }
                    Some(e.into())
                }
            };
            match err {
                None => out.hist.saturating_record(ns.max(1)),
                Some(e) => {
                    out.errors += 1;
                    let what = format!("{}: {e:#}", self.op.name());
                    out.first_error = out.first_error.or(Some(what));
                }
            }
        }
        if healthy {
            out.conn = Some(conn);
        }
        out
    }

    /// The next command and the check its reply must pass.
    fn command(&self) -> (Document, fn(&Document) -> Result<()>) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        match self.op {
            Op::Find => {
                // A fixed stride over the ids: every document is read, no two neighbours in a row.
                let id = doc_id(n.wrapping_mul(7919) % self.docs);
                let cmd = doc! {
                    "find": FIND_COLL, "filter": {"_id": id}, "limit": 1, "singleBatch": true,
                    "$db": DB,
                };
                (cmd, check_find)
            }
            Op::Insert => {
                let d = doc! {
                    "_id": ObjectId::new(), "n": n as i64, "target": self.target.name(),
                    "pad": "x".repeat(64),
                };
                (
                    doc! {"insert": INSERT_COLL, "documents": [d], "$db": DB},
                    check_insert,
                )
            }
        }
    }
}

/// The `_id` of the `i`th seeded document. A string: FerretDB's SQLite backend filters string
/// ids in SQL but integer ids in Go, which costs far more.
pub fn doc_id(i: u64) -> String {
    format!("doc-{i:06}")
}

fn check_find(reply: &Document) -> Result<()> {
    ensure!(is_ok(reply), "{reply}");
    let batch = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .with_context(|| format!("no firstBatch: {reply}"))?;
    ensure!(batch.len() == 1, "{} documents, expected 1", batch.len());
    Ok(())
}

fn check_insert(reply: &Document) -> Result<()> {
    ensure!(
        is_ok(reply) && !reply.contains_key("writeErrors"),
        "{reply}"
    );
    ensure!(reply.get_i32("n").ok() == Some(1), "not inserted: {reply}");
    Ok(())
}

/// What one target accumulated over the rounds of one level.
pub struct Tally {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub busy: Duration,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            hist: new_histogram(),
            errors: 0,
            busy: Duration::ZERO,
        }
    }

    pub fn summary(&self) -> Summary {
        Summary::new(&self.hist, self.errors, self.busy.as_secs_f64())
    }
}
