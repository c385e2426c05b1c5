//! In-process byte-level tests: the gateway runs inside the test's runtime and is driven over
//! real loopback sockets with hand-built wire messages, so every case is about exact bytes (ids,
//! flags, opcodes, lengths) rather than what a driver happens to send.
//!
//! The configured upstream (port 1) refuses connections, so the gateway answers its handshake
//! with default wire versions and every forwarded command fails as "upstream down". Each read has
//! a deadline, so a gateway that stays silent fails a test instead of hanging it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bson::{rawdoc, Bson, Document, RawDocumentBuf};
use mongomux_testkit::frame;
use mongomux_wire::{
    encode_op_msg, Header, MsgFlags, OpCode, OpCompressed, OpMsg, OpReply, HEADER_LEN,
    REPLY_QUERY_FAILURE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for any reply; generous for a loaded 2-core CI machine.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn start_gateway() -> SocketAddr {
    let cfg = mongomux_gateway::Settings::from_toml(
        "listen = \"127.0.0.1:0\"\nupstream = \"mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500\"\nhandshake_timeout = \"1s\"\n",
    )
    .unwrap();
    let gw = mongomux_gateway::Gateway::bind(cfg).await.unwrap();
    let addr = gw.local_addr();
    tokio::spawn(gw.run(std::future::pending()));
    addr
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect")
}

async fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).await.expect("write to gateway");
}

/// Reads one whole message (through the kit's framing, bounded by maxMessageSizeBytes); `None`
/// on a clean EOF or a reset. Panics on a length out of bounds and after [`READ_TIMEOUT`].
async fn try_read_message(s: &mut TcpStream) -> Option<Vec<u8>> {
    tokio::time::timeout(READ_TIMEOUT, frame::read_message(s, frame::MAX_MESSAGE))
        .await
        .expect("timed out waiting for a reply")
        .unwrap_or_else(|e| panic!("reading a message from the gateway: {e}"))
}

async fn read_message(s: &mut TcpStream) -> Vec<u8> {
    try_read_message(s)
        .await
        .expect("connection closed instead of a reply")
}

/// Reads an OP_MSG reply and checks that it answers `request_id`.
async fn read_msg_reply(s: &mut TcpStream, request_id: i32) -> Document {
    let bytes = read_message(s).await;
    let msg = OpMsg::parse(&bytes).expect("reply is a valid OP_MSG");
    assert_eq!(msg.header.response_to, request_id, "responseTo");
    assert_eq!(msg.flags.0, 0, "reply flags");
    Document::try_from(msg.body).expect("reply body decodes")
}

/// Reads an OP_REPLY and checks that it answers `request_id`; returns its flags and document.
async fn read_legacy_reply(s: &mut TcpStream, request_id: i32) -> (i32, Document) {
    let bytes = read_message(s).await;
    let reply = OpReply::parse(&bytes).expect("reply is a valid OP_REPLY");
    assert_eq!(reply.header.response_to, request_id, "responseTo");
    assert_eq!(reply.documents.len(), 1, "numberReturned");
    assert_eq!(reply.cursor_id, 0);
    let doc = Document::try_from(reply.documents[0]).expect("reply document decodes");
    (reply.response_flags, doc)
}

/// Asserts the peer closes the connection (EOF or reset) within [`READ_TIMEOUT`], reading and
/// returning whatever complete messages arrive before that.
async fn read_until_closed(s: &mut TcpStream) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Some(m) = try_read_message(s).await {
        got.push(m);
        assert!(got.len() < 8, "gateway keeps sending instead of closing");
    }
    got
}

/// Asserts nothing arrives within `wait`.
async fn assert_silent(s: &mut TcpStream, wait: Duration) {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, s.read(&mut byte)).await {
        Err(_) => {}
        Ok(Ok(0)) => panic!("connection closed, expected it to stay open and silent"),
        Ok(Ok(_)) => panic!("unexpected bytes from the gateway"),
        Ok(Err(e)) => panic!("read error {e}, expected silence"),
    }
}

fn op_msg(request_id: i32, body: &RawDocumentBuf) -> Vec<u8> {
    encode_op_msg(request_id, 0, 0, body.as_bytes(), &[])
}

/// OP_QUERY: flags, fullCollectionName, numberToSkip, numberToReturn, query.
fn op_query(request_id: i32, collection: &str, query: &RawDocumentBuf) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0i32.to_le_bytes());
    body.extend_from_slice(collection.as_bytes());
    body.push(0);
    body.extend_from_slice(&0i32.to_le_bytes());
    body.extend_from_slice(&(-1i32).to_le_bytes());
    body.extend_from_slice(query.as_bytes());
    frame::frame(frame::OP_QUERY, request_id, 0, &body).expect("small message")
}

/// Sends `hello` and checks the reply is a hello reply; the proof a connection is still usable.
async fn assert_usable(s: &mut TcpStream, request_id: i32) {
    send(
        s,
        &op_msg(request_id, &rawdoc! { "hello": 1, "$db": "admin" }),
    )
    .await;
    let reply = read_msg_reply(s, request_id).await;
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0, "{reply}");
    assert_eq!(reply.get_str("msg").unwrap(), "isdbgrid");
}

fn assert_error(reply: &Document) -> i32 {
    assert_eq!(
        reply.get_f64("ok").unwrap(),
        0.0,
        "expected an error: {reply}"
    );
    assert!(reply.get_str("errmsg").is_ok(), "errmsg: {reply}");
    assert!(reply.get_str("codeName").is_ok(), "codeName: {reply}");
    reply.get_i32("code").expect("error code")
}

fn labels(reply: &Document) -> Vec<String> {
    reply
        .get_array("errorLabels")
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn as_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(n) => Some(*n as i64),
        Bson::Int64(n) => Some(*n),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

#[tokio::test]
async fn op_msg_hello_reply_fields() {
    let addr = start_gateway().await;
    let mut a = connect(addr).await;
    send(&mut a, &op_msg(41, &rawdoc! { "hello": 1, "$db": "admin" })).await;
    let reply = read_msg_reply(&mut a, 41).await;
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0);
    assert_eq!(reply.get_str("msg").unwrap(), "isdbgrid");
    assert!(reply.get_bool("isWritablePrimary").unwrap());
    assert_eq!(
        reply.get_i32("maxBsonObjectSize").unwrap(),
        16 * 1024 * 1024
    );
    assert_eq!(reply.get_i32("maxMessageSizeBytes").unwrap(), 48_000_000);
    assert_eq!(reply.get_i32("maxWriteBatchSize").unwrap(), 100_000);
    assert!(reply.get_datetime("localTime").is_ok());
    let min = as_i64(reply.get("minWireVersion").expect("minWireVersion")).unwrap();
    let max = as_i64(reply.get("maxWireVersion").expect("maxWireVersion")).unwrap();
    assert!(min <= max && max >= 6, "wire versions {min}..{max}");
    let lst = reply
        .get("logicalSessionTimeoutMinutes")
        .and_then(as_i64)
        .expect("logicalSessionTimeoutMinutes");
    assert!(lst > 0);
    assert!(reply.get("topologyVersion").is_none(), "{reply}");
    assert!(reply.get("helloOk").is_none(), "helloOk without request");
    let id_a = reply
        .get("connectionId")
        .and_then(as_i64)
        .expect("connectionId");

    // helloOk is echoed only when asked for; connectionId stays the connection's.
    send(
        &mut a,
        &op_msg(42, &rawdoc! { "hello": 1, "helloOk": true, "$db": "admin" }),
    )
    .await;
    let reply = read_msg_reply(&mut a, 42).await;
    assert!(reply.get_bool("helloOk").unwrap(), "{reply}");
    assert_eq!(reply.get("connectionId").and_then(as_i64), Some(id_a));

    let mut b = connect(addr).await;
    send(&mut b, &op_msg(1, &rawdoc! { "hello": 1, "$db": "admin" })).await;
    let reply = read_msg_reply(&mut b, 1).await;
    let id_b = reply
        .get("connectionId")
        .and_then(as_i64)
        .expect("connectionId");
    assert_ne!(id_a, id_b, "connectionId must differ per connection");
}

#[tokio::test]
async fn legacy_op_query_is_master() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    send(
        &mut s,
        &op_query(7, "admin.$cmd", &rawdoc! { "isMaster": 1, "helloOk": true }),
    )
    .await;
    let (flags, reply) = read_legacy_reply(&mut s, 7).await;
    assert_eq!(flags & REPLY_QUERY_FAILURE, 0);
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0);
    assert!(reply.get_bool("ismaster").unwrap(), "{reply}");
    assert_eq!(reply.get_str("msg").unwrap(), "isdbgrid");
    assert!(reply.get_bool("helloOk").unwrap());
    assert_eq!(reply.get_i32("maxMessageSizeBytes").unwrap(), 48_000_000);
    assert!(reply.get("topologyVersion").is_none());
    // After the legacy handshake, drivers switch to OP_MSG on the same connection.
    assert_usable(&mut s, 8).await;
}

#[tokio::test]
async fn legacy_op_query_wrapped_in_query() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    let q = rawdoc! { "$query": { "isMaster": 1 }, "$readPreference": { "mode": "primary" } };
    send(&mut s, &op_query(9, "admin.$cmd", &q)).await;
    let (flags, reply) = read_legacy_reply(&mut s, 9).await;
    assert_eq!(flags & REPLY_QUERY_FAILURE, 0);
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0, "{reply}");
    assert!(reply.get_bool("ismaster").unwrap());
    assert!(reply.get("helloOk").is_none());
}

#[tokio::test]
async fn legacy_op_query_other_than_handshake_is_refused() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;

    // A command other than hello on db.$cmd: an {ok: 0} reply document.
    send(&mut s, &op_query(11, "db.$cmd", &rawdoc! { "find": "c" })).await;
    let (flags, reply) = read_legacy_reply(&mut s, 11).await;
    assert_eq!(assert_error(&reply), 352, "{reply}");
    assert_eq!(flags & REPLY_QUERY_FAILURE, 0, "commands fail with ok: 0");

    // A plain query on a collection: QueryFailure and $err, as legacy servers answered.
    send(&mut s, &op_query(12, "db.coll", &rawdoc! { "x": 1 })).await;
    let (flags, reply) = read_legacy_reply(&mut s, 12).await;
    assert_ne!(flags & REPLY_QUERY_FAILURE, 0, "QueryFailure flag");
    assert!(reply.get_str("$err").is_ok(), "{reply}");
    assert_eq!(reply.get_i32("code").unwrap(), 352);

    assert_usable(&mut s, 13).await;
}

#[tokio::test]
async fn ping_is_answered_locally() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    send(&mut s, &op_msg(3, &rawdoc! { "ping": 1, "$db": "admin" })).await;
    let reply = read_msg_reply(&mut s, 3).await;
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0, "{reply}");
}

#[tokio::test]
async fn malformed_bson_body_gets_error_and_connection_survives() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;

    // Framed correctly as a document, but its string element claims 1000 bytes.
    let mut body = Vec::new();
    body.extend_from_slice(&0i32.to_le_bytes());
    body.push(0x02);
    body.extend_from_slice(b"ping\0");
    body.extend_from_slice(&1000i32.to_le_bytes());
    body.extend_from_slice(b"x\0");
    body.push(0);
    let len = body.len() as i32;
    body[..4].copy_from_slice(&len.to_le_bytes());
    send(&mut s, &encode_op_msg(21, 0, 0, &body, &[])).await;
    let reply = read_msg_reply(&mut s, 21).await;
    let code = assert_error(&reply);
    assert!(code == 22 || code == 9, "code {code}: {reply}");
    assert_usable(&mut s, 22).await;

    // A body whose own length prefix overruns the message.
    let mut body = rawdoc! { "ping": 1, "$db": "admin" }.into_bytes();
    body[..4].copy_from_slice(&500i32.to_le_bytes());
    send(&mut s, &encode_op_msg(23, 0, 0, &body, &[])).await;
    let reply = read_msg_reply(&mut s, 23).await;
    let code = assert_error(&reply);
    assert!(code == 22 || code == 9, "code {code}: {reply}");
    assert_usable(&mut s, 24).await;
}

#[tokio::test]
async fn op_msg_without_db_is_an_error() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    send(&mut s, &op_msg(5, &rawdoc! { "ping": 1 })).await;
    let reply = read_msg_reply(&mut s, 5).await;
    assert_error(&reply);
    assert_usable(&mut s, 6).await;
}

#[tokio::test]
async fn unknown_opcode_is_an_error() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    // 2010 was OP_COMMAND; the body is irrelevant.
    let mut msg = op_msg(31, &rawdoc! { "ping": 1, "$db": "admin" });
    msg[12..16].copy_from_slice(&2010i32.to_le_bytes());
    send(&mut s, &msg).await;
    let reply = read_msg_reply(&mut s, 31).await;
    assert_error(&reply);
    assert_usable(&mut s, 32).await;
}

#[tokio::test]
async fn unknown_required_flag_bit_is_an_error() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    let body = rawdoc! { "ping": 1, "$db": "admin" };
    send(&mut s, &encode_op_msg(33, 0, 1 << 2, body.as_bytes(), &[])).await;
    let reply = read_msg_reply(&mut s, 33).await;
    assert_error(&reply);
    assert_usable(&mut s, 34).await;
}

#[tokio::test]
async fn more_to_come_with_broken_body_gets_no_reply() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    let mut body = rawdoc! { "insert": "c", "$db": "test" }.into_bytes();
    let last = body.len() - 1;
    body[last] = 7; // the document's terminating NUL
    send(
        &mut s,
        &encode_op_msg(35, 0, MsgFlags::MORE_TO_COME, &body, &[]),
    )
    .await;
    // The next message to arrive must be the answer to the hello, not to request 35.
    assert_usable(&mut s, 36).await;
    assert_silent(&mut s, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn oversized_length_gets_error_then_close() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    let header = Header {
        length: 48_000_001,
        request_id: 51,
        response_to: 0,
        op_code: OpCode::Msg,
    };
    send(&mut s, &header.to_bytes()).await;
    let got = read_until_closed(&mut s).await;
    assert_eq!(got.len(), 1, "one error reply before the close");
    let msg = OpMsg::parse(&got[0]).expect("OP_MSG error reply");
    assert_eq!(msg.header.response_to, 51);
    assert_error(&Document::try_from(msg.body).unwrap());
}

#[tokio::test]
async fn undersized_length_closes_connection() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    let mut bytes = Header {
        length: 10,
        request_id: 52,
        response_to: 0,
        op_code: OpCode::Msg,
    }
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(&[0; 8]);
    send(&mut s, &bytes).await;
    // An error reply before closing is allowed; the close is what matters.
    let got = read_until_closed(&mut s).await;
    assert!(got.len() <= 1, "{} messages before the close", got.len());
}

#[tokio::test]
async fn truncated_header_then_eof_does_not_disturb_others() {
    let addr = start_gateway().await;
    let mut broken = connect(addr).await;
    send(&mut broken, &[100, 0, 0, 0, 1, 2, 3]).await;
    broken.shutdown().await.unwrap();
    assert!(read_until_closed(&mut broken).await.is_empty());

    let mut other = connect(addr).await;
    assert_usable(&mut other, 1).await;
}

#[tokio::test]
async fn silent_connection_closed_after_handshake_timeout() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    let started = Instant::now();
    assert!(read_until_closed(&mut s).await.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "closed after {waited:?}, handshake_timeout is 1s"
    );
}

#[tokio::test]
async fn get_more_of_foreign_cursor_is_cursor_not_found() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    let body = rawdoc! { "getMore": 123_456_789i64, "collection": "c", "$db": "test" };
    send(&mut s, &op_msg(61, &body)).await;
    let reply = read_msg_reply(&mut s, 61).await;
    assert_eq!(assert_error(&reply), 43, "{reply}");
    assert_eq!(reply.get_str("codeName").unwrap(), "CursorNotFound");
}

#[tokio::test]
async fn kill_cursors_of_foreign_ids_reports_not_found() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    let body = rawdoc! { "killCursors": "c", "cursors": [11i64, 22i64], "$db": "test" };
    send(&mut s, &op_msg(62, &body)).await;
    let reply = read_msg_reply(&mut s, 62).await;
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0, "{reply}");
    let mut not_found: Vec<i64> = reply
        .get_array("cursorsNotFound")
        .expect("cursorsNotFound")
        .iter()
        .filter_map(as_i64)
        .collect();
    not_found.sort();
    assert_eq!(not_found, vec![11, 22]);
    assert!(reply.get_array("cursorsKilled").unwrap().is_empty());
}

#[tokio::test]
async fn forwarded_command_with_upstream_down_is_retryable_error() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    send(
        &mut s,
        &op_msg(71, &rawdoc! { "find": "c", "filter": {}, "$db": "test" }),
    )
    .await;
    // No member answers: after the server selection timeout, the error a mongos gives, naming
    // the member and why it is down.
    let reply = read_msg_reply(&mut s, 71).await;
    assert_eq!(assert_error(&reply), 133, "{reply}");
    let msg = reply.get_str("errmsg").unwrap();
    assert!(
        msg.contains("no upstream member available") && msg.contains("127.0.0.1:1"),
        "{reply}"
    );
    // A retryable write gets the label that makes the driver retry it once.
    let insert = rawdoc! { "insert": "c", "documents": [{"a": 1}], "$db": "test",
    "lsid": {"id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![1; 16] }},
    "txnNumber": 1_i64 };
    send(&mut s, &op_msg(72, &insert)).await;
    let reply = read_msg_reply(&mut s, 72).await;
    assert_eq!(assert_error(&reply), 133, "{reply}");
    assert!(
        labels(&reply).iter().any(|l| l == "RetryableWriteError"),
        "{reply}"
    );
    assert_usable(&mut s, 73).await;
}

#[tokio::test]
async fn op_compressed_noop_ping() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    let inner = op_msg(81, &rawdoc! { "ping": 1, "$db": "admin" });
    let header = Header::parse(&inner).unwrap();
    let wrapped = OpCompressed::encode(&header, inner.len() - HEADER_LEN, 0, &inner[HEADER_LEN..]);
    send(&mut s, &wrapped).await;
    let reply = read_msg_reply(&mut s, 81).await;
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0, "{reply}");
}

#[tokio::test]
async fn op_compressed_snappy_is_refused() {
    let addr = start_gateway().await;
    let mut s = connect(addr).await;
    let inner = op_msg(82, &rawdoc! { "ping": 1, "$db": "admin" });
    let header = Header::parse(&inner).unwrap();
    // Not real snappy data; the gateway negotiates no compressor, so it must not try.
    let wrapped = OpCompressed::encode(&header, inner.len() - HEADER_LEN, 1, &inner[HEADER_LEN..]);
    send(&mut s, &wrapped).await;
    let reply = read_msg_reply(&mut s, 82).await;
    assert_error(&reply);
    assert_usable(&mut s, 83).await;
}

/// A stand-in upstream that answers `hello` and `buildInfo` (the commands that set up a pooled
/// connection) like a server and every other command with `reply`'s bytes (their responseTo
/// patched to the request's id).
async fn fake_upstream(reply: Vec<u8>) -> SocketAddr {
    fake_upstream_counted(reply).await.0
}

/// What [`fake_upstream_counted`] saw: `find`s, and connections that carried at least one.
#[derive(Debug, Default)]
struct FindCounts {
    finds: std::sync::atomic::AtomicUsize,
    connections: std::sync::atomic::AtomicUsize,
}

/// [`fake_upstream`], also counting the `find`s it answered and the connections they came on.
async fn fake_upstream_counted(reply: Vec<u8>) -> (SocketAddr, std::sync::Arc<FindCounts>) {
    use std::sync::atomic::Ordering::SeqCst;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = std::sync::Arc::new(FindCounts::default());
    let seen = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let reply = reply.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut first_find = true;
                while let Some(req) = try_read_message(&mut s).await {
                    let msg = OpMsg::parse(&req).expect("gateway sends valid OP_MSG");
                    let id = msg.header.request_id;
                    if msg.command_name().unwrap() == "find" {
                        seen.finds.fetch_add(1, SeqCst);
                        if std::mem::take(&mut first_find) {
                            seen.connections.fetch_add(1, SeqCst);
                        }
                    }
                    let mut out = if msg.command_name().unwrap() == "hello" {
                        let body = rawdoc! {
                            "isWritablePrimary": true, "msg": "isdbgrid",
                            "minWireVersion": 0, "maxWireVersion": 21,
                            "logicalSessionTimeoutMinutes": 30, "ok": 1.0,
                        };
                        encode_op_msg(1, id, 0, body.as_bytes(), &[])
                    } else if msg.command_name().unwrap() == "buildInfo" {
                        let body = rawdoc! { "version": "7.0.0", "ok": 1.0 };
                        encode_op_msg(1, id, 0, body.as_bytes(), &[])
                    } else {
                        reply.clone()
                    };
                    out[8..12].copy_from_slice(&id.to_le_bytes());
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, counts)
}

async fn start_gateway_with_upstream(upstream: SocketAddr) -> SocketAddr {
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"mongodb://{upstream}\"\nhandshake_timeout = \"1s\"\n"
    );
    let cfg = mongomux_gateway::Settings::from_toml(&toml).unwrap();
    let gw = mongomux_gateway::Gateway::bind(cfg).await.unwrap();
    let addr = gw.local_addr();
    tokio::spawn(gw.run(std::future::pending()));
    addr
}

/// An upstream reply that is a bare 16-byte OP_MSG header used to panic the client's session
/// task (`strip_checksum` indexed the missing flags field; found by the wire_decode fuzz
/// target). The client's connection must survive it.
#[tokio::test]
async fn upstream_bare_header_reply_does_not_kill_the_session() {
    let bare = Header {
        length: HEADER_LEN as i32,
        request_id: 1,
        response_to: 0,
        op_code: OpCode::Msg,
    };
    let upstream = fake_upstream(bare.to_bytes().to_vec()).await;
    let addr = start_gateway_with_upstream(upstream).await;
    let mut s = connect(addr).await;
    send(&mut s, &op_msg(91, &rawdoc! { "find": "c", "$db": "test" })).await;
    let reply = read_message(&mut s).await;
    assert_eq!(Header::parse(&reply).unwrap().response_to, 91);
    assert_usable(&mut s, 92).await;
}

#[tokio::test]
async fn upstream_unparseable_reply_becomes_an_error_reply() {
    let bare = Header {
        length: HEADER_LEN as i32,
        request_id: 1,
        response_to: 0,
        op_code: OpCode::Msg,
    };
    let upstream = fake_upstream(bare.to_bytes().to_vec()).await;
    let addr = start_gateway_with_upstream(upstream).await;
    let mut s = connect(addr).await;
    send(&mut s, &op_msg(93, &rawdoc! { "find": "c", "$db": "test" })).await;
    let reply = read_msg_reply(&mut s, 93).await;
    assert_error(&reply);
}

/// A `find` reply with one document, as the upstream would send it plain.
fn find_reply() -> Vec<u8> {
    let body = rawdoc! {
        "cursor": { "id": 0_i64, "ns": "test.c", "firstBatch": [{ "_id": 1, "text": "x".repeat(2000) }] },
        "ok": 1.0,
    };
    encode_op_msg(1, 0, 0, body.as_bytes(), &[])
}

/// A reply the upstream sent as OP_COMPRESSED reaches the client as the plain OP_MSG inside it,
/// whatever the compressor.
#[tokio::test]
async fn upstream_compressed_replies_reach_the_client_plain() {
    use mongomux_gateway::upstream::compression::{compress_message, Compressor};
    for (i, c) in [Compressor::Snappy, Compressor::Zlib, Compressor::Zstd]
        .into_iter()
        .enumerate()
    {
        let compressed = compress_message(c, &find_reply()).expect("a find reply compresses");
        assert_eq!(
            Header::parse(&compressed).unwrap().op_code,
            OpCode::Compressed
        );
        let upstream = fake_upstream(compressed).await;
        let addr = start_gateway_with_upstream(upstream).await;
        let mut s = connect(addr).await;
        let id = 100 + i as i32;
        send(&mut s, &op_msg(id, &rawdoc! { "find": "c", "$db": "test" })).await;
        let reply = read_msg_reply(&mut s, id).await;
        let first = reply
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap();
        assert_eq!(first.len(), 1, "{}: {reply}", c.name());
        assert_eq!(
            first[0]
                .as_document()
                .unwrap()
                .get_str("text")
                .unwrap()
                .len(),
            2000
        );
    }
}

/// A compressed reply that does not unwrap (unknown compressor id, or a declared size that is
/// not the payload's) is an upstream protocol error: the client gets a retryable error reply
/// and keeps its connection, and the upstream connection is closed, never reused.
#[tokio::test]
async fn upstream_compressed_replies_that_do_not_unwrap_close_the_connection() {
    use std::sync::atomic::Ordering::SeqCst;
    let plain = find_reply();
    let header = Header::parse(&plain).unwrap();
    let body = &plain[HEADER_LEN..];
    let bad = [
        OpCompressed::encode(&header, body.len(), 9, body),
        OpCompressed::encode(&header, body.len() + 1, 0, body),
        OpCompressed::encode(&header, body.len(), 3, body),
    ];
    for (i, frame) in bad.into_iter().enumerate() {
        let (upstream, counts) = fake_upstream_counted(frame).await;
        let addr = start_gateway_with_upstream(upstream).await;
        let mut s = connect(addr).await;
        for round in 0..2 {
            let id = 110 + 10 * i as i32 + round;
            send(&mut s, &op_msg(id, &rawdoc! { "find": "c", "$db": "test" })).await;
            let reply = read_msg_reply(&mut s, id).await;
            assert_eq!(assert_error(&reply), 6, "{reply}");
            assert!(
                labels(&reply).contains(&"RetryableWriteError".to_string()),
                "{reply}"
            );
            let msg = reply.get_str("errmsg").unwrap();
            assert!(msg.contains("compressed reply"), "{msg}");
        }
        assert_usable(&mut s, 119 + 10 * i as i32).await;
        // Every find came on a connection of its own: none was reused after its bad reply.
        let (finds, conns) = (counts.finds.load(SeqCst), counts.connections.load(SeqCst));
        assert!(
            finds >= 2 && finds == conns,
            "case {i}: {finds} finds on {conns} connections"
        );
    }
}
