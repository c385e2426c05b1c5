//! [`RawConn`]: one TCP connection speaking OP_MSG, one request and its reply at a time.
//!
//! What it owns: connecting (from a chosen loopback source address when a test or a benchmark
//! needs several clients to look like different hosts), the driver-like `hello`, a command and
//! its reply matched by `responseTo`, SCRAM login including FerretDB's extra empty round, and raw
//! bytes for tests that send what no driver sends.
//!
//! What it must never do: wait without a deadline, or read a reply longer than its bound.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::frame::{self, Header, HEADER_LEN, MAX_MESSAGE, OP_MSG};
use crate::scram::{Conversation, Mechanism};
use crate::{Error, Result};

/// The deadline of calls that take none: generous for a loaded 2-core CI machine.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(30);

async fn within<T>(
    limit: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Error::Timeout(what, limit))?
}

/// The `hello` a driver sends first, with the client metadata drivers attach.
pub fn hello_command() -> Document {
    doc! {
        "hello": 1,
        "$db": "admin",
        "client": {
            "application": { "name": "mongomux-testkit" },
            "driver": { "name": "mongomux-testkit raw", "version": env!("CARGO_PKG_VERSION") },
            "os": { "type": std::env::consts::OS },
        },
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

/// The SASL payload of a reply, as text.
fn payload(reply: &Document) -> Result<String> {
    let bytes = reply
        .get_binary_generic("payload")
        .map_err(|_| Error::Auth(format!("reply without a binary payload: {reply}")))?;
    String::from_utf8(bytes.clone()).map_err(|_| Error::Auth("payload is not UTF-8".into()))
}

fn ensure_ok(reply: &Document, step: &str) -> Result<()> {
    if frame::is_ok(reply) {
        Ok(())
    } else {
        Err(Error::Auth(format!("{step} failed: {reply}")))
    }
}

/// One client connection speaking OP_MSG.
pub struct RawConn {
    stream: TcpStream,
    next_id: i32,
}

impl RawConn {
    /// Connect to `target` (IPv4 or IPv6), from `source` (port picked by the kernel) when given.
    pub async fn connect(target: SocketAddr, source: Option<IpAddr>) -> Result<RawConn> {
        within(DEFAULT_LIMIT, "connect", async {
            let socket = if target.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = source {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = socket.connect(target).await?;
            stream.set_nodelay(true)?;
            Ok(RawConn { stream, next_id: 1 })
        })
        .await
    }

    /// Connect, send the `hello` a driver sends first ([`hello_command`]) and check that it says
    /// ok; returns the connection and the `hello` reply.
    pub async fn handshake(
        target: SocketAddr,
        source: Option<IpAddr>,
        limit: Duration,
    ) -> Result<(RawConn, Document)> {
        let mut conn = within(limit, "connect", RawConn::connect(target, source)).await?;
        let reply = conn.command(&hello_command(), limit).await?;
        if !frame::is_ok(&reply) {
            return Err(Error::Malformed(format!("hello failed: {reply}")));
        }
        Ok((conn, reply))
    }

    /// Connect and log in with SCRAM-SHA-256 on `admin` (no `hello` first, as FerretDB allows).
    pub async fn connect_scram(target: SocketAddr, user: &str, password: &str) -> Result<RawConn> {
        let mut conn = RawConn::connect(target, None).await?;
        conn.authenticate(Mechanism::ScramSha256, user, password, DEFAULT_LIMIT)
            .await?;
        Ok(conn)
    }

    /// Log in as `user` on `admin`, each round within `limit`. The client asks for
    /// `skipEmptyExchange`; a server that still says `done: false` after the server-final
    /// message (FerretDB v1.24) gets the empty `saslContinue` rounds it waits for.
    pub async fn authenticate(
        &mut self,
        mechanism: Mechanism,
        user: &str,
        password: &str,
        limit: Duration,
    ) -> Result<()> {
        let mut conv = Conversation::new(mechanism, user, password);
        let start = doc! {
            "saslStart": 1,
            "mechanism": mechanism.name(),
            "payload": binary(conv.client_first().into_bytes()),
            "autoAuthorize": 1,
            "options": { "skipEmptyExchange": true },
            "$db": "admin",
        };
        let reply = self.command(&start, limit).await?;
        ensure_ok(&reply, "saslStart")?;
        let id = reply
            .get("conversationId")
            .cloned()
            .unwrap_or(Bson::Int32(1));
        let cont = |p: Vec<u8>| {
            doc! {"saslContinue": 1, "conversationId": id.clone(), "payload": binary(p), "$db": "admin"}
        };
        let client_final = conv.client_final(&payload(&reply)?)?;
        let mut reply = self
            .command(&cont(client_final.into_bytes()), limit)
            .await?;
        ensure_ok(&reply, "saslContinue")?;
        conv.verify_server_final(&payload(&reply)?)?;
        for _ in 0..2 {
            if reply.get_bool("done").unwrap_or(false) {
                return Ok(());
            }
            reply = self.command(&cont(Vec::new()), limit).await?;
            ensure_ok(&reply, "empty saslContinue")?;
        }
        if reply.get_bool("done").unwrap_or(false) {
            Ok(())
        } else {
            Err(Error::Auth("SCRAM conversation never finished".into()))
        }
    }

    /// Send `cmd` (which names its own `$db`) and wait up to `limit` for its reply, whatever
    /// its `ok`. A reply that is not an OP_MSG answering this request is an error.
    pub async fn command(&mut self, cmd: &Document, limit: Duration) -> Result<Document> {
        within(limit, "command", self.round_trip(cmd)).await
    }

    async fn round_trip(&mut self, cmd: &Document) -> Result<Document> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.stream
            .write_all(&frame::encode_op_msg(id, cmd)?)
            .await?;
        let msg = frame::read_message(&mut self.stream, MAX_MESSAGE)
            .await?
            .ok_or(Error::Closed)?;
        let h = Header::parse(&msg).expect("read_message returns at least a header");
        if h.op_code != OP_MSG || h.response_to != id {
            return Err(Error::Malformed(format!(
                "reply opCode {} responseTo {} to request {id}",
                h.op_code, h.response_to
            )));
        }
        frame::op_msg_body(&msg[HEADER_LEN..])
    }

    /// Write `bytes` as they are (a test's hand-built, possibly malformed, message).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        within(DEFAULT_LIMIT, "send", async {
            Ok(self.stream.write_all(bytes).await?)
        })
        .await
    }

    /// The next whole message (at most `max` bytes), or `None` if the peer closed first.
    pub async fn read_message(&mut self, max: usize, limit: Duration) -> Result<Option<Vec<u8>>> {
        within(limit, "read", frame::read_message(&mut self.stream, max)).await
    }

    /// Whether the server has closed this idle connection (or sent bytes nobody asked for).
    pub fn peer_closed(&self) -> bool {
        let mut buf = [0u8; 1];
        // Ok(0) is end of stream; Ok(n) is data nobody asked for; WouldBlock is a quiet peer.
        !matches!(
            self.stream.try_read(&mut buf),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }
}
