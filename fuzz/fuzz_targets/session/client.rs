//! The fuzzing client: one connection to the gateway that sends what the op language says and
//! checks every reply it reads against the requests it sent. A broken invariant is a panic,
//! which libFuzzer reports as a crash with the input that caused it.
//!
//! Per reply: it answers this client's oldest outstanding request (`responseTo`; requests the
//! gateway may leave unanswered, such as hand-framed ones, are skipped over); a relayed upstream
//! reply echoes the mark of exactly that request (`fuzzEcho`), never another client's; and the
//! documents of a `getMore` batch were opened by a request with the same owner (the same
//! identity and `lsid`, or, without an `lsid`, the same client connection).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bson::{doc, Binary, Bson, Document};
use mongomux_auth::{Mechanism, ScramClient, Secret};
use mongomux_wire::{encode_op_msg, Header, OpCode, OpMsg, OpReply, HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Longest wait for a reply the gateway owes; far beyond its configured checkout and connect
/// timeouts, so reaching it means a hang.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(3);
/// How long to wait for a reply the gateway may legitimately never send.
const MAYBE_DEADLINE: Duration = Duration::from_millis(30);

/// Who may continue a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Requests with this `lsid` (raw bytes) under this identity (None: anonymous).
    Session(Option<usize>, Vec<u8>),
    /// One client connection (a fresh number per connection).
    Connection(u64),
}

/// What all clients of one iteration share: who sent each mark, and every cursor id seen.
#[derive(Debug, Default)]
pub struct World {
    pub owners: HashMap<String, Owner>,
    pub cursors: Vec<i64>,
    pub next_connection: u64,
    pub failed_logins: u32,
}

#[derive(Debug)]
struct Pending {
    id: i32,
    mark: Option<String>,
    /// The gateway may not answer (a hand-framed message).
    optional: bool,
    /// For a `getMore`: the owner its batches must belong to.
    continues: Option<Owner>,
    opens: bool,
}

/// What a `send` tells the client about the request.
pub struct Request {
    pub body: Document,
    pub opens_cursor: bool,
    pub continues_cursor: bool,
}

pub struct Client {
    stream: TcpStream,
    pub name: usize,
    connection: u64,
    next_id: i32,
    pending: VecDeque<Pending>,
    identity: Option<usize>,
    /// Hand-made bytes were sent that may have broken message framing: replies can no longer
    /// be matched to requests, only checked for foreign marks.
    tainted: bool,
    closed: bool,
    marks: u32,
    pub cursors: Vec<i64>,
    /// The sessions this connection has sent (as [`Owner::Session`] keys): the gateway lets a
    /// request without a session continue their cursors, since it comes from the same driver
    /// client.
    sessions: Vec<Owner>,
}

enum Read {
    Reply(Header, Option<Document>),
    Closed,
    Timeout,
}

impl Client {
    pub async fn connect(addr: SocketAddr, name: usize, world: &mut World) -> Option<Client> {
        let stream = timeout(REPLY_DEADLINE, TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        let _ = stream.set_nodelay(true);
        world.next_connection += 1;
        Some(Client {
            stream,
            name,
            connection: world.next_connection,
            next_id: 1,
            pending: VecDeque::new(),
            identity: None,
            tainted: false,
            closed: false,
            marks: 0,
            cursors: Vec::new(),
            sessions: Vec::new(),
        })
    }

    /// The gateway's ownership rule (route/cursors.rs), which the fuzzer holds it to: a cursor
    /// opened in a session continues in that session (same identity, same lsid), or without a
    /// session on a connection that has used it; a cursor opened without a session continues
    /// on its own connection, whatever session the request names (a real server then refuses
    /// a session the cursor was not opened in; this client is entitled to the cursor anyway).
    fn may_continue(&self, opened_by: Option<&Owner>, requester: &Owner) -> bool {
        match (opened_by, requester) {
            (Some(Owner::Connection(c)), _) => *c == self.connection,
            (Some(s @ Owner::Session(..)), Owner::Session(..)) => s == requester,
            (Some(s @ Owner::Session(..)), Owner::Connection(_)) => self.sessions.contains(s),
            (None, _) => false,
        }
    }

    fn take_id(&mut self) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A mark no other request of the iteration carries.
    pub fn next_mark(&mut self) -> String {
        self.marks += 1;
        format!("k{}.c{}.r{}", self.name, self.connection, self.marks)
    }

    async fn write(&mut self, bytes: &[u8]) {
        if self.closed || self.stream.write_all(bytes).await.is_err() {
            self.closed = true;
        }
    }

    /// Sends an OP_MSG command; its reply is checked when read.
    pub async fn send(&mut self, world: &mut World, req: Request) {
        let mark = req.body.get_str("fuzzMark").ok().map(str::to_string);
        // The gateway takes only a document for a session (anything else is no session at
        // all, and the cursor stays the connection's), so the owner is judged the same way.
        let owner = match req.body.get("lsid") {
            Some(lsid @ Bson::Document(_)) => Owner::Session(
                self.identity,
                bson::to_vec(&doc! { "": lsid.clone() }).unwrap_or_default(),
            ),
            _ => Owner::Connection(self.connection),
        };
        if let Some(m) = &mark {
            world.owners.insert(m.clone(), owner.clone());
        }
        if matches!(owner, Owner::Session(..)) && !self.sessions.contains(&owner) {
            self.sessions.push(owner.clone());
        }
        let Ok(body) = bson::to_vec(&req.body) else {
            return;
        };
        let id = self.take_id();
        self.write(&encode_op_msg(id, 0, 0, &body, &[])).await;
        self.pending.push_back(Pending {
            id,
            mark,
            optional: false,
            continues: req.continues_cursor.then_some(owner),
            opens: req.opens_cursor,
        });
    }

    /// Sends a legacy OP_QUERY `isMaster` (the handshake of old drivers).
    pub async fn send_legacy_hello(&mut self) {
        let id = self.take_id();
        let q = bson::to_vec(&doc! { "isMaster": 1, "helloOk": true }).unwrap();
        let mut m = Vec::new();
        m.extend_from_slice(&0i32.to_le_bytes());
        m.extend_from_slice(b"admin.$cmd\0");
        m.extend_from_slice(&0i32.to_le_bytes());
        m.extend_from_slice(&(-1i32).to_le_bytes());
        m.extend_from_slice(&q);
        self.send_framed(2004, &m, false, id).await;
    }

    /// Sends `body` framed with a correct length and this client's next requestID.
    pub async fn send_hand_framed(&mut self, op_code: i32, body: &[u8]) {
        let id = self.take_id();
        self.send_framed(op_code, body, true, id).await;
    }

    async fn send_framed(&mut self, op_code: i32, body: &[u8], optional: bool, id: i32) {
        let len = (HEADER_LEN + body.len()) as i32;
        let mut m = Vec::with_capacity(len as usize);
        for v in [len, id, 0, op_code] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(body);
        self.write(&m).await;
        let pending = Pending {
            id,
            mark: None,
            optional,
            continues: None,
            opens: false,
        };
        self.pending.push_back(pending);
    }

    /// Sends bytes as they are: framing may be lost from here on.
    pub async fn send_garbage(&mut self, bytes: &[u8]) {
        self.tainted = true;
        self.write(bytes).await;
    }

    async fn read(&mut self, limit: Duration) -> Read {
        let mut header = [0u8; HEADER_LEN];
        match timeout(limit, self.stream.read_exact(&mut header)).await {
            Err(_) => return Read::Timeout,
            Ok(Err(_)) => return Read::Closed,
            Ok(Ok(_)) => {}
        }
        let h = Header::parse(&header).expect("the gateway sent a header that does not parse");
        let len = usize::try_from(h.length).expect("negative reply length");
        assert!(
            (HEADER_LEN..=48_000_000).contains(&len),
            "reply length {len} out of bounds"
        );
        let mut msg = header.to_vec();
        msg.resize(len, 0);
        match timeout(
            REPLY_DEADLINE,
            self.stream.read_exact(&mut msg[HEADER_LEN..]),
        )
        .await
        {
            Err(_) => panic!(
                "client {}: the gateway stopped in the middle of a reply",
                self.name
            ),
            Ok(Err(_)) => return Read::Closed,
            Ok(Ok(_)) => {}
        }
        let doc = match h.op_code {
            OpCode::Msg => {
                let m = OpMsg::parse(&msg).expect("the gateway sent an OP_MSG that does not parse");
                Some(Document::try_from(m.body).expect("reply body is not valid BSON"))
            }
            OpCode::Reply => {
                let r =
                    OpReply::parse(&msg).expect("the gateway sent an OP_REPLY that does not parse");
                r.documents
                    .first()
                    .map(|d| Document::try_from(*d).expect("OP_REPLY document"))
            }
            // Compressed replies (a client that asked for compression): framing and ids only.
            _ => None,
        };
        Read::Reply(h, doc)
    }

    /// Reads and checks one reply, if one is owed; false when none is pending or the
    /// connection is gone.
    pub async fn receive(&mut self, world: &mut World) -> bool {
        if self.closed || self.pending.is_empty() {
            return false;
        }
        let owed = self.tainted || self.pending.iter().any(|p| !p.optional);
        let limit = if owed && !self.tainted {
            REPLY_DEADLINE
        } else {
            MAYBE_DEADLINE
        };
        match self.read(limit).await {
            Read::Timeout if owed && !self.tainted => {
                panic!(
                    "client {}: no reply to request {} within {limit:?}",
                    self.name, self.pending[0].id
                )
            }
            Read::Timeout => {
                self.pending.clear();
                false
            }
            Read::Closed => {
                self.closed = true;
                self.pending.clear();
                false
            }
            Read::Reply(h, doc) => {
                self.check(world, &h, doc.as_ref());
                true
            }
        }
    }

    /// Reads every reply still owed.
    pub async fn drain(&mut self, world: &mut World) {
        while self.receive(world).await {}
    }

    fn check(&mut self, world: &mut World, h: &Header, doc: Option<&Document>) {
        if tracing() {
            eprintln!(
                "client {} <- responseTo {}: {doc:?}",
                self.name, h.response_to
            );
        }
        let echo = doc.and_then(|d| d.get_str("fuzzEcho").ok());
        if self.tainted {
            if let Some(e) = echo {
                assert!(
                    e.starts_with(&format!("k{}.c{}.", self.name, self.connection)),
                    "client {} got a reply relayed for another client's request ({e})",
                    self.name
                );
            }
            self.pending.retain(|p| p.id != h.response_to);
            return;
        }
        while self
            .pending
            .front()
            .is_some_and(|p| p.optional && p.id != h.response_to)
        {
            self.pending.pop_front();
        }
        let Some(p) = self.pending.pop_front() else {
            panic!(
                "client {}: a reply (responseTo {}) to nothing outstanding",
                self.name, h.response_to
            )
        };
        assert_eq!(
            h.response_to, p.id,
            "client {}: reply out of order or to a request never sent",
            self.name
        );
        if let Some(e) = echo {
            assert_eq!(
                Some(e),
                p.mark.as_deref(),
                "client {}: relayed reply of another request",
                self.name
            );
        }
        let Some(cursor) = doc.and_then(|d| d.get_document("cursor").ok()) else {
            return;
        };
        if let Some(owner) = &p.continues {
            for d in cursor.get_array("nextBatch").into_iter().flatten() {
                let opener = d
                    .as_document()
                    .and_then(|d| d.get_str("owner").ok())
                    .unwrap_or("");
                let opened_by = world.owners.get(opener);
                assert!(
                    self.may_continue(opened_by, owner),
                    "client {}: getMore as {owner:?} returned documents of a cursor opened by {opener} ({opened_by:?})",
                    self.name
                );
            }
        }
        if p.opens || p.continues.is_some() {
            if let Ok(id) = cursor.get_i64("id") {
                if id != 0 {
                    self.cursors.push(id);
                    world.cursors.push(id);
                }
            }
        }
    }

    /// SCRAM through the gateway's own SASL (the edge login), after reading what is owed.
    /// Returns whether the gateway accepted it.
    pub async fn authenticate(
        &mut self,
        world: &mut World,
        who: (usize, &str, &str),
        m: Mechanism,
    ) -> bool {
        self.drain(world).await;
        if self.tainted || self.closed {
            return false;
        }
        let (index, user, password) = who;
        let mut scram = ScramClient::new(m, user, &Secret::new(password));
        let first = scram.client_first();
        let start = doc! {
            "saslStart": 1, "mechanism": m.name(), "payload": binary(first),
            "options": { "skipEmptyExchange": true }, "$db": "admin",
        };
        let Some(reply) = self.round_trip(start).await else {
            return false;
        };
        let (Some(conversation), Some(server_first)) =
            (reply.get("conversationId").cloned(), payload(&reply))
        else {
            return false;
        };
        let Ok(fin) = scram.client_final(&server_first) else {
            return false;
        };
        let cont = doc! { "saslContinue": 1, "conversationId": conversation.clone(), "payload": binary(fin), "$db": "admin" };
        let Some(reply) = self.round_trip(cont).await else {
            return false;
        };
        let server_final = payload(&reply).unwrap_or_default();
        assert!(
            scram.verify_server_final(&server_final).is_ok(),
            "client {}: the gateway accepted a login but its server signature does not verify",
            self.name
        );
        if !reply.get_bool("done").unwrap_or(false) {
            let last = doc! { "saslContinue": 1, "conversationId": conversation, "payload": binary(Vec::new()), "$db": "admin" };
            if self.round_trip(last).await.is_none() {
                return false;
            }
        }
        self.identity = Some(index);
        true
    }

    /// One command and its reply (which must answer it); `None` if it failed or the
    /// connection closed.
    async fn round_trip(&mut self, body: Document) -> Option<Document> {
        let id = self.take_id();
        self.write(&encode_op_msg(id, 0, 0, &bson::to_vec(&body).ok()?, &[]))
            .await;
        match self.read(REPLY_DEADLINE).await {
            Read::Reply(h, doc) => {
                if tracing() {
                    eprintln!("client {} <- SASL: {doc:?}", self.name);
                }
                assert_eq!(
                    h.response_to, id,
                    "client {}: SASL reply to another request",
                    self.name
                );
                doc.filter(is_ok)
            }
            Read::Closed => {
                self.closed = true;
                None
            }
            Read::Timeout => panic!(
                "client {}: no SASL reply within {REPLY_DEADLINE:?}",
                self.name
            ),
        }
    }
}

/// Whether to print every reply (`SESSION_TRACE=1`), to see what an input does.
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SESSION_TRACE").is_some())
}

fn is_ok(d: &Document) -> bool {
    matches!(d.get("ok"), Some(Bson::Double(v)) if *v == 1.0)
        || matches!(d.get("ok"), Some(Bson::Int32(1)))
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes,
    }
}

fn payload(reply: &Document) -> Option<Vec<u8>> {
    match reply.get("payload")? {
        Bson::Binary(b) => Some(b.bytes.clone()),
        _ => None,
    }
}
