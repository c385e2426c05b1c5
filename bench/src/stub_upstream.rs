//! **Benchmark-only stub upstream**: a minimal, in-memory MongoDB look-alike that answers from
//! memory, so the gateway's own cost is visible instead of hiding behind FerretDB's (about 0.8 ms
//! per `find` on SQLite). It is not a database and must never be used to test correctness: it
//! stores nothing, answers every `find` with the same one document, every `insert` with `n` equal
//! to the number of documents sent, `hello`/`isMaster` with a standalone's reply and every other
//! command with `{ok: 1}`.
//!
//! It runs as its own process (`mongomux-bench stub-upstream`, started by the scenarios through
//! [`StubUpstream::start`]) so that the gateway's CPU accounting, and a peer proxy's, are not
//! mixed with the load generator's.
//!
//! Wire format: MongoDB Wire Protocol, "Standard Message Header"; "OP_MSG" (opCode 2013: flagBits,
//! sections, optional CRC-32C which it ignores); legacy "OP_QUERY" (2004) answered with "OP_REPLY"
//! (1), because drivers built on the Go driver v1 open with a legacy `isMaster`. Replies are
//! encoded once at start-up; per request only the header ids are written.
//!
//! What it must never do: allocate from an unchecked length prefix, or answer a request that set
//! `moreToCome` (the spec says the server sends nothing back).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use bson::{doc, Document, RawDocument};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::procs::UpstreamSpec;
use mongomux_testkit::frame::msg_sections;

const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_MSG: i32 = 2013;
const HEADER_LEN: usize = 16;
/// MongoDB's maxMessageSizeBytes; anything longer is refused before a byte is allocated.
const MAX_MESSAGE: usize = 48_000_000;
const MORE_TO_COME: u32 = 1 << 1;

#[derive(Args, Debug)]
pub struct StubArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// The replies, encoded once: each is a complete OP_MSG or OP_REPLY whose header ids are filled
/// in per request.
struct Replies {
    hello_msg: Vec<u8>,
    hello_reply: Vec<u8>,
    find: Vec<u8>,
    insert_one: Vec<u8>,
    ok: Vec<u8>,
}

fn hello_doc() -> Document {
    doc! {
        "ismaster": true, "isWritablePrimary": true, "helloOk": true,
        "maxBsonObjectSize": 16_777_216, "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000, "localTime": bson::DateTime::now(),
        "logicalSessionTimeoutMinutes": 30, "connectionId": 1,
        "minWireVersion": 0, "maxWireVersion": 21, "readOnly": false, "ok": 1.0,
    }
}

/// An OP_MSG with one kind-0 section; ids zero until [`set_ids`].
fn op_msg(body: &Document) -> Vec<u8> {
    let body = bson::to_vec(body).expect("static reply encodes");
    let len = HEADER_LEN + 4 + 1 + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as i32).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&OP_MSG.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&body);
    out
}

/// An OP_REPLY carrying one document (legacy handshake answer).
fn op_reply(body: &Document) -> Vec<u8> {
    let body = bson::to_vec(body).expect("static reply encodes");
    let len = HEADER_LEN + 4 + 8 + 4 + 4 + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as i32).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&OP_REPLY.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    out.extend_from_slice(&body);
    out
}

fn set_ids(msg: &mut [u8], request_id: i32, response_to: i32) {
    msg[4..8].copy_from_slice(&request_id.to_le_bytes());
    msg[8..12].copy_from_slice(&response_to.to_le_bytes());
}

impl Replies {
    fn new() -> Replies {
        Replies {
            hello_msg: op_msg(&hello_doc()),
            hello_reply: op_reply(&hello_doc()),
            find: op_msg(&doc! {
                "cursor": {
                    "firstBatch": [{"_id": "doc-000000", "n": 0_i64, "pad": "y".repeat(64)}],
                    "id": 0_i64, "ns": "bench.latency_find",
                },
                "ok": 1.0,
            }),
            insert_one: op_msg(&doc! {"n": 1, "ok": 1.0}),
            ok: op_msg(&doc! {"ok": 1.0}),
        }
    }
}

/// What an OP_MSG asks for, as far as the stub cares.
enum Ask {
    Hello,
    Find,
    Insert(i32),
    Other,
}

/// Classify an OP_MSG body (everything after the header): its flags and the command name.
fn classify_msg(rest: &[u8]) -> Result<(u32, Ask)> {
    let (flags, sections) = msg_sections(rest)?;
    let mut body: Option<&RawDocument> = None;
    let mut sequenced_docs = 0i32;
    for section in sections {
        match section? {
            (0, bytes) => body = Some(RawDocument::from_bytes(bytes)?),
            (1, bytes) => {
                // size, identifier cstring, then documents back to back (OP_MSG "Kind 1").
                let seq = &bytes[4..];
                let nul = seq.iter().position(|&b| b == 0).context("bad identifier")?;
                let mut docs = &seq[nul + 1..];
                while docs.len() >= 4 {
                    let n = i32::from_le_bytes(docs[..4].try_into()?) as usize;
                    ensure!(n >= 5 && n <= docs.len(), "bad sequenced document");
                    sequenced_docs += 1;
                    docs = &docs[n..];
                }
            }
            (k, _) => bail!("unknown section kind {k}"),
        }
    }
    let body = body.context("no kind-0 section")?;
    let name = match body.iter().next() {
        Some(el) => el?.0,
        None => bail!("empty command"),
    };
    let ask = match name {
        "hello" | "isMaster" | "ismaster" => Ask::Hello,
        "find" => Ask::Find,
        "insert" => {
            let inline = match body.get_array("documents") {
                Ok(a) => a.into_iter().count() as i32,
                Err(_) => 0,
            };
            Ask::Insert(inline + sequenced_docs)
        }
        _ => Ask::Other,
    };
    Ok((flags, ask))
}

/// Serve one connection until the peer closes it or sends something malformed.
async fn serve_conn(stream: TcpStream, replies: Arc<Replies>, next_id: Arc<AtomicI32>) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(16 * 1024, rd);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut header = [0u8; HEADER_LEN];
        if rd.read_exact(&mut header).await.is_err() {
            return;
        }
        let field = |i: usize| i32::from_le_bytes(header[i..i + 4].try_into().unwrap());
        let Ok(len) = usize::try_from(field(0)) else {
            return;
        };
        if !(HEADER_LEN..=MAX_MESSAGE).contains(&len) {
            return;
        }
        let (request_id, op) = (field(4), field(12));
        buf.resize(len - HEADER_LEN, 0);
        if rd.read_exact(&mut buf).await.is_err() {
            return;
        }
        let built;
        let template: &[u8] = match op {
            OP_QUERY => &replies.hello_reply,
            OP_MSG => match classify_msg(&buf) {
                Ok((flags, _)) if flags & MORE_TO_COME != 0 => continue,
                Ok((_, Ask::Hello)) => &replies.hello_msg,
                Ok((_, Ask::Find)) => &replies.find,
                Ok((_, Ask::Insert(1))) => &replies.insert_one,
                Ok((_, Ask::Insert(n))) => {
                    built = op_msg(&doc! {"n": n, "ok": 1.0});
                    &built
                }
                Ok((_, Ask::Other)) => &replies.ok,
                Err(_) => return,
            },
            _ => return,
        };
        out.clear();
        out.extend_from_slice(template);
        set_ids(
            &mut out,
            next_id.fetch_add(1, Ordering::Relaxed),
            request_id,
        );
        if wr.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// `mongomux-bench stub-upstream`: serve until killed; prints `stub-upstream: listening on ADDR`.
pub async fn run(args: StubArgs) -> Result<()> {
    ensure!(
        args.listen.ip().is_loopback(),
        "the stub upstream listens on loopback only"
    );
    let listener = TcpListener::bind(args.listen).await?;
    println!("stub-upstream: listening on {}", listener.local_addr()?);
    let replies = Arc::new(Replies::new());
    let next_id = Arc::new(AtomicI32::new(1));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors or similar: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(serve_conn(stream, replies.clone(), next_id.clone()));
    }
}

/// Start this same executable with `args` and wait for it to print `prefix` and its address.
pub fn spawn_self(args: &[&str], prefix: &'static str) -> Result<(Child, SocketAddr)> {
    let exe: PathBuf = std::env::current_exe().context("own executable")?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawn mongomux-bench {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining stdout after the line, so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
        {
            if let Some(a) = line.strip_prefix(prefix) {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(a) = rx.recv_timeout(Duration::from_millis(100)) {
            return Ok((child, a.parse().context("child printed a bad address")?));
        }
        if let Some(status) = child.try_wait()? {
            bail!("mongomux-bench {} exited with {status}", args.join(" "));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("mongomux-bench {} did not start", args.join(" "));
        }
    }
}

/// A running stub upstream process, killed on drop.
pub struct StubUpstream {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl StubUpstream {
    /// Start `mongomux-bench stub-upstream` (this same executable) and wait for its address.
    pub fn start() -> Result<StubUpstream> {
        let (child, addr) = spawn_self(&["stub-upstream"], "stub-upstream: listening on ")?;
        Ok(StubUpstream {
            pid: child.id(),
            child,
            addr,
        })
    }

    pub fn spec(&self) -> UpstreamSpec {
        UpstreamSpec {
            addr: self.addr,
            auth: false,
        }
    }
}

impl Drop for StubUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg_rest(body: &Document, seq: Option<(&str, Vec<Document>)>) -> Vec<u8> {
        let mut rest = 0u32.to_le_bytes().to_vec();
        rest.push(0);
        rest.extend_from_slice(&bson::to_vec(body).unwrap());
        if let Some((id, docs)) = seq {
            let mut payload = id.as_bytes().to_vec();
            payload.push(0);
            for d in docs {
                payload.extend_from_slice(&bson::to_vec(&d).unwrap());
            }
            rest.push(1);
            rest.extend_from_slice(&((payload.len() + 4) as i32).to_le_bytes());
            rest.extend_from_slice(&payload);
        }
        rest
    }

    #[test]
    fn classifies_commands_and_counts_inserted_documents() {
        let (_, ask) = classify_msg(&msg_rest(&doc! {"hello": 1, "$db": "admin"}, None)).unwrap();
        assert!(matches!(ask, Ask::Hello));
        let (_, ask) = classify_msg(&msg_rest(&doc! {"find": "c", "$db": "d"}, None)).unwrap();
        assert!(matches!(ask, Ask::Find));
        let inline = doc! {"insert": "c", "documents": [{"a": 1}, {"a": 2}], "$db": "d"};
        let (_, ask) = classify_msg(&msg_rest(&inline, None)).unwrap();
        assert!(matches!(ask, Ask::Insert(2)));
        let seq = Some((
            "documents",
            vec![doc! {"a": 1}, doc! {"a": 2}, doc! {"a": 3}],
        ));
        let (_, ask) = classify_msg(&msg_rest(&doc! {"insert": "c", "$db": "d"}, seq)).unwrap();
        assert!(matches!(ask, Ask::Insert(3)));
    }

    #[test]
    fn refuses_overrunning_sections() {
        let mut rest = 0u32.to_le_bytes().to_vec();
        rest.push(0);
        rest.extend_from_slice(&1000i32.to_le_bytes());
        assert!(classify_msg(&rest).is_err());
        // A document sequence whose size is smaller than its own size field.
        let mut short = 0u32.to_le_bytes().to_vec();
        short.push(1);
        short.extend_from_slice(&2i32.to_le_bytes());
        assert!(classify_msg(&short).is_err());
    }
}
