//! A stand-in upstream for the `session` fuzz target, and for nothing else: a loopback TCP
//! server inside the fuzzing process that answers the gateway's OP_MSG commands plausibly
//! enough for a whole client session to run through it. It is not a database: it stores no
//! documents, and it answers as a mongos (`msg: "isdbgrid"`) with neither authentication nor
//! compression, so the gateway is configured without upstream credentials.
//!
//! What it owes the invariants:
//! - every reply to a request that carried the client's `fuzzMark` echoes it (`fuzzEcho`) and
//!   names the upstream connection (`fuzzConn`), so a client can tell whose request a relayed
//!   reply answers;
//! - every cursor it opens remembers the mark of the command that opened it, and each batch's
//!   documents carry that mark as `owner`, so a `getMore` that reaches another client's cursor
//!   shows in the documents it returns;
//! - it counts the connections open at once, telling pooled ones (they run `buildInfo` or a
//!   client command after their `hello`) from monitoring ones (`hello` only). A connection is
//!   open until the gateway has closed its end: each is judged by peeking a duplicate of its
//!   socket, so a close the gateway made before dialling again is never counted late.
//!
//! A one-shot fault can be armed: the next client request is then answered by closing the
//! connection, by an error code, or by a reply with the wrong `responseTo`.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bson::{doc, Bson, Document, RawDocument};
use mongomux_wire::{encode_op_msg, OpMsg, HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A fault the stand-in applies to the next client request it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection instead of answering.
    Drop,
    /// Answer `{ok: 0}` with this code.
    Error(i32),
    /// Answer with a `responseTo` that names no request.
    WrongResponseTo,
}

/// An open cursor: who opened it (the opener's mark) and how many batches are left.
#[derive(Debug)]
struct Cursor {
    owner: String,
    left: u32,
}

/// One accepted connection: a duplicate of its socket (to peek whether the gateway closed it)
/// and whether it has been used for more than `hello`.
#[derive(Debug)]
struct Peer {
    socket: std::net::TcpStream,
    pooled: bool,
}

#[derive(Debug, Default)]
struct State {
    peers: Mutex<HashMap<u64, Peer>>,
    cursors: Mutex<HashMap<i64, Cursor>>,
    fault: Mutex<Option<Fault>>,
    next_conn: AtomicU64,
    next_cursor: AtomicI64,
    /// The most pooled connections, and the most of any kind, seen open at once: counted at
    /// every accept and every first use, so a bound broken between two steps still shows.
    peak_pooled: AtomicU64,
    peak_total: AtomicU64,
}

/// The running stand-in; stopping it (or dropping it) closes every connection.
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Upstream {
    /// Listens on an ephemeral loopback port and serves until stopped.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stand-in");
        let addr = listener.local_addr().expect("stand-in address");
        let state = Arc::new(State {
            next_cursor: AtomicI64::new(0x0100_0000_0000),
            ..State::default()
        });
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept_loop(listener, state.clone(), tasks.clone()));
        tasks.lock().unwrap().push(accept);
        Upstream { addr, state, tasks }
    }

    /// `host:port` for the gateway's upstream URI.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Arms a fault for the next client request.
    pub fn arm(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = Some(fault);
    }

    /// The most (pooled, all) connections seen open at once so far.
    pub fn peaks(&self) -> (u64, u64) {
        count_open(&self.state);
        (
            self.state.peak_pooled.load(Ordering::SeqCst),
            self.state.peak_total.load(Ordering::SeqCst),
        )
    }

    /// Closes the listener and every connection.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        self.state.peers.lock().unwrap().clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts the connections whose gateway end is still open, and raises the peaks.
fn count_open(state: &State) -> (u64, u64) {
    let peers = state.peers.lock().unwrap();
    let (mut pooled, mut total) = (0, 0);
    for p in peers.values() {
        let mut b = [0u8; 1];
        let open = match p.socket.peek(&mut b) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        };
        if open {
            total += 1;
            pooled += u64::from(p.pooled);
        }
    }
    state.peak_pooled.fetch_max(pooled, Ordering::SeqCst);
    state.peak_total.fetch_max(total, Ordering::SeqCst);
    (pooled, total)
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let id = state.next_conn.fetch_add(1, Ordering::SeqCst) + 1;
        // A duplicate descriptor to peek at: the tokio stream stays with the serving task.
        let Ok(std_stream) = stream.into_std() else {
            continue;
        };
        let Ok(dup) = std_stream.try_clone() else {
            continue;
        };
        let Ok(stream) = TcpStream::from_std(std_stream) else {
            continue;
        };
        state.peers.lock().unwrap().insert(
            id,
            Peer {
                socket: dup,
                pooled: false,
            },
        );
        count_open(&state);
        let task = tokio::spawn(serve(stream, id, state.clone()));
        tasks.lock().unwrap().push(task);
    }
}

/// Serves one connection until the gateway closes it or a fault drops it.
async fn serve(mut stream: TcpStream, id: u64, state: Arc<State>) {
    let mut buf = Vec::new();
    loop {
        let mut header = [0u8; HEADER_LEN];
        if stream.read_exact(&mut header).await.is_err() {
            break;
        }
        let len = i32::from_le_bytes(header[0..4].try_into().unwrap());
        let Ok(len) = usize::try_from(len) else { break };
        if !(HEADER_LEN..=48_000_000).contains(&len) {
            break;
        }
        buf.clear();
        buf.extend_from_slice(&header);
        buf.resize(len, 0);
        if stream.read_exact(&mut buf[HEADER_LEN..]).await.is_err() {
            break;
        }
        let Some(reply) = answer(&state, id, &buf) else {
            break;
        };
        if stream.write_all(&reply).await.is_err() {
            break;
        }
    }
    state.peers.lock().unwrap().remove(&id);
}

/// The reply to one request, or `None` to close the connection.
fn answer(state: &State, conn: u64, request: &[u8]) -> Option<Vec<u8>> {
    let msg = OpMsg::parse(request).ok()?;
    let name = msg.body.iter().next()?.ok()?.0.to_string();
    let mark = msg.body.get_str("fuzzMark").ok().map(str::to_string);
    if !matches!(name.as_str(), "hello" | "isMaster" | "ismaster") {
        if let Some(p) = state.peers.lock().unwrap().get_mut(&conn) {
            p.pooled = true;
        }
        count_open(state);
    }
    let mut response_to = msg.header.request_id;
    let fault = match mark {
        Some(_) => state.fault.lock().unwrap().take(),
        None => None,
    };
    let mut reply = match fault {
        Some(Fault::Drop) => return None,
        Some(Fault::Error(code)) => error(code, "injected by the fuzz stand-in"),
        Some(Fault::WrongResponseTo) => {
            response_to = response_to.wrapping_add(7);
            doc! { "ok": 1.0 }
        }
        None => command(state, conn, &name, &msg, mark.as_deref()),
    };
    reply.insert("fuzzConn", conn as i64);
    if let Some(m) = mark {
        reply.insert("fuzzEcho", m);
    }
    let body = bson::to_vec(&reply).ok()?;
    Some(encode_op_msg(1, response_to, 0, &body, &[]))
}

fn error(code: i32, why: &str) -> Document {
    doc! { "ok": 0.0, "errmsg": why, "code": code, "codeName": "FuzzStandIn" }
}

/// The plausible answer to a command.
fn command(state: &State, conn: u64, name: &str, msg: &OpMsg, mark: Option<&str>) -> Document {
    let body = msg.body;
    match name {
        "hello" | "isMaster" | "ismaster" => doc! {
            "ismaster": true, "isWritablePrimary": true, "msg": "isdbgrid",
            "maxBsonObjectSize": 16_777_216, "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000, "localTime": bson::DateTime::now(),
            "logicalSessionTimeoutMinutes": 30, "connectionId": conn as i64,
            "minWireVersion": 0, "maxWireVersion": 21, "readOnly": false, "ok": 1.0,
        },
        "buildInfo" | "buildinfo" => {
            doc! { "version": "7.0.0", "versionArray": [7, 0, 0, 0], "ok": 1.0 }
        }
        "saslStart" | "saslContinue" | "authenticate" => error(18, "the stand-in has no users"),
        "find" | "aggregate" => open_cursor(state, body, mark),
        "getMore" => get_more(state, body),
        "killCursors" => kill_cursors(state, body),
        "insert" => {
            let n = body
                .get_array("documents")
                .map(|a| a.into_iter().count())
                .unwrap_or(0)
                + msg
                    .sequences
                    .iter()
                    .map(|s| s.iter().count())
                    .sum::<usize>();
            doc! { "n": n as i32, "ok": 1.0 }
        }
        _ => doc! { "ok": 1.0 },
    }
}

fn namespace(body: &RawDocument, name_field: &str) -> String {
    let db = body.get_str("$db").unwrap_or("test");
    let coll = body.get_str(name_field).unwrap_or("$cmd.aggregate");
    format!("{db}.{coll}")
}

fn batch(owner: &str, first: i32) -> Vec<Bson> {
    vec![Bson::Document(doc! { "_id": first, "owner": owner })]
}

/// `find`/`aggregate`: a first batch, and a cursor when `fuzzBatches` asks for more batches.
fn open_cursor(state: &State, body: &RawDocument, mark: Option<&str>) -> Document {
    let name = body
        .iter()
        .next()
        .and_then(|e| e.ok())
        .map(|e| e.0)
        .unwrap_or("find");
    let owner = mark.unwrap_or("").to_string();
    let left = body.get_i32("fuzzBatches").unwrap_or(0).clamp(0, 4) as u32;
    let id = if left > 0 {
        let id = state.next_cursor.fetch_add(1, Ordering::SeqCst);
        state.cursors.lock().unwrap().insert(
            id,
            Cursor {
                owner: owner.clone(),
                left,
            },
        );
        id
    } else {
        0
    };
    doc! { "cursor": { "id": id, "ns": namespace(body, name), "firstBatch": batch(&owner, 0) }, "ok": 1.0 }
}

fn get_more(state: &State, body: &RawDocument) -> Document {
    let Ok(id) = body.get_i64("getMore") else {
        return error(2, "getMore needs a long");
    };
    let mut cursors = state.cursors.lock().unwrap();
    let Some(c) = cursors.get_mut(&id) else {
        return error(43, "cursor not found");
    };
    c.left -= 1;
    let docs = batch(&c.owner, c.left as i32 + 1);
    let next = if c.left == 0 {
        cursors.remove(&id);
        0
    } else {
        id
    };
    doc! { "cursor": { "id": next, "ns": namespace(body, "collection"), "nextBatch": docs }, "ok": 1.0 }
}

fn kill_cursors(state: &State, body: &RawDocument) -> Document {
    let mut killed = Vec::new();
    let mut not_found = Vec::new();
    if let Ok(ids) = body.get_array("cursors") {
        let mut cursors = state.cursors.lock().unwrap();
        for id in ids.into_iter().flatten().filter_map(|v| v.as_i64()) {
            if cursors.remove(&id).is_some() {
                killed.push(id);
            } else {
                not_found.push(id);
            }
        }
    }
    doc! {
        "cursorsKilled": killed, "cursorsNotFound": not_found,
        "cursorsAlive": [], "cursorsUnknown": [], "ok": 1.0,
    }
}
