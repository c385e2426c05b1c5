//! A deliberately tiny MongoDB client over raw TCP: one OP_MSG with a single kind-0 section out,
//! one reply in. It exists so a benchmark can hold ten thousand real, handshaken client
//! connections in one process for the price of a socket each, where a driver client would cost a
//! monitor task and a pool apiece.
//!
//! It is written independently of the gateway's codec (`crates/wire`) on purpose, so the two
//! cannot share a bug and hide it. Format: MongoDB Wire Protocol, "Standard Message Header" and
//! "OP_MSG" (opCode 2013: flagBits, then sections; kind 0 = one BSON body).
//!
//! It also logs in with SCRAM-SHA-256 (the proofs live in [`crate::scram`]), because the official
//! Rust driver cannot log in to FerretDB v1.24 (see that module).
//!
//! What it must never do: trust a reply's length before checking it against the limit, or read
//! without a deadline.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const OP_MSG: i32 = 2013;
const HEADER_LEN: usize = 16;
/// maxMessageSizeBytes of MongoDB (48 MB); no reply to our commands comes close.
const MAX_MESSAGE: usize = 48_000_000;
/// OP_MSG flag bit 0: a CRC-32C checksum trails the sections.
const CHECKSUM_PRESENT: u32 = 1;

/// Encode `cmd` as an OP_MSG with one kind-0 section.
fn encode(request_id: i32, cmd: &Document) -> Result<Vec<u8>> {
    let body = bson::to_vec(cmd)?;
    let len = HEADER_LEN + 4 + 1 + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&i32::try_from(len)?.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // responseTo
    out.extend_from_slice(&OP_MSG.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flagBits
    out.push(0); // section kind 0: body
    out.extend_from_slice(&body);
    Ok(out)
}

/// The sections of an OP_MSG, from the part after its header ("OP_MSG": flagBits, sections, an
/// optional CRC-32C that is not checked). Yields each section's kind byte and its bytes, size
/// prefix included; every size is checked against the bytes present before it is used.
pub struct Sections<'a> {
    rest: &'a [u8],
}

/// The flag bits of an OP_MSG and an iterator over its sections.
pub fn msg_sections(rest: &[u8]) -> Result<(u32, Sections<'_>)> {
    ensure!(rest.len() >= 5, "OP_MSG too short");
    let flags = u32::from_le_bytes(rest[..4].try_into()?);
    let end = if flags & CHECKSUM_PRESENT != 0 {
        rest.len().checked_sub(4).context("checksum missing")?
    } else {
        rest.len()
    };
    ensure!(end >= 4, "OP_MSG too short for its checksum");
    Ok((
        flags,
        Sections {
            rest: &rest[4..end],
        },
    ))
}

impl<'a> Iterator for Sections<'a> {
    type Item = Result<(u8, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, after) = self.rest.split_first()?;
        let size = after
            .get(..4)
            .and_then(|b| usize::try_from(i32::from_le_bytes(b.try_into().ok()?)).ok())
            .filter(|size| (4..=after.len()).contains(size));
        let Some(size) = size else {
            self.rest = &[];
            return Some(Err(anyhow::anyhow!("section size out of range")));
        };
        self.rest = &after[size..];
        Some(Ok((kind, &after[..size])))
    }
}

/// Parse the part of an OP_MSG after the header: the kind-0 body (kind-1 sequences skipped).
fn decode_body(rest: &[u8]) -> Result<Document> {
    for section in msg_sections(rest)?.1 {
        let (kind, bytes) = section?;
        if kind == 0 {
            return Ok(Document::from_reader(bytes)?);
        }
    }
    bail!("reply has no kind-0 section")
}

/// Whether a reply says `ok: 1` (as a double, int or long).
pub fn is_ok(reply: &Document) -> bool {
    match reply.get("ok") {
        Some(bson::Bson::Double(v)) => *v == 1.0,
        Some(bson::Bson::Int32(v)) => *v == 1,
        Some(bson::Bson::Int64(v)) => *v == 1,
        _ => false,
    }
}

/// The `hello` a driver sends first, with the client metadata drivers attach.
fn hello_command() -> Document {
    doc! {
        "hello": 1,
        "$db": "admin",
        "client": {
            "application": { "name": "mongomux-bench idle-memory" },
            "driver": { "name": "mongomux-bench raw", "version": env!("CARGO_PKG_VERSION") },
            "os": { "type": std::env::consts::OS },
        },
    }
}

fn bytes(s: String) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: s.into_bytes(),
    }
}

/// The SASL payload of a reply, as text.
fn payload(reply: &Document) -> Result<String> {
    let b = reply
        .get_binary_generic("payload")
        .with_context(|| format!("reply without a payload: {reply}"))?;
    Ok(String::from_utf8(b.clone())?)
}

/// One client connection speaking OP_MSG.
pub struct RawConn {
    stream: TcpStream,
    next_id: i32,
}

impl RawConn {
    /// Connect to `target`, from `source` (port picked by the kernel) when given.
    pub async fn connect(target: SocketAddr, source: Option<IpAddr>) -> Result<RawConn> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let stream = socket.connect(target).await?;
        stream.set_nodelay(true)?;
        Ok(RawConn { stream, next_id: 1 })
    }

    /// Connect, send the `hello` a driver sends first, and check that it says ok; returns the
    /// connection and the `hello` reply.
    pub async fn handshake(
        target: SocketAddr,
        source: Option<IpAddr>,
        limit: Duration,
    ) -> Result<(RawConn, Document)> {
        let mut conn = tokio::time::timeout(limit, RawConn::connect(target, source))
            .await
            .with_context(|| format!("connect to {target}: no answer within {limit:?}"))??;
        let reply = conn.command(&hello_command(), limit).await?;
        ensure!(is_ok(&reply), "hello failed: {reply}");
        Ok((conn, reply))
    }

    /// Log in as `user` on `admin` with SCRAM-SHA-256, each round within `limit`.
    pub async fn authenticate(
        &mut self,
        user: &str,
        password: &str,
        limit: Duration,
    ) -> Result<()> {
        let mut conv = crate::scram::Conversation::new(user);
        let start = doc! {
            "saslStart": 1,
            "mechanism": "SCRAM-SHA-256",
            "payload": bytes(conv.client_first()),
            "autoAuthorize": 1,
            "options": { "skipEmptyExchange": true },
            "$db": "admin",
        };
        let reply = self.command(&start, limit).await?;
        ensure!(is_ok(&reply), "saslStart failed: {reply}");
        let id = reply
            .get("conversationId")
            .cloned()
            .unwrap_or(Bson::Int32(1));
        let final_msg = conv.client_final(password, &payload(&reply)?)?;
        let cont = |p: String| doc! {"saslContinue": 1, "conversationId": id.clone(), "payload": bytes(p), "$db": "admin"};
        let reply = self.command(&cont(final_msg), limit).await?;
        ensure!(is_ok(&reply), "saslContinue failed: {reply}");
        conv.verify_server_final(&payload(&reply)?)?;
        // FerretDB says `done: false` here despite skipEmptyExchange: finish with empty rounds.
        let mut reply = reply;
        for _ in 0..2 {
            if reply.get_bool("done").unwrap_or(false) {
                return Ok(());
            }
            reply = self.command(&cont(String::new()), limit).await?;
            ensure!(is_ok(&reply), "empty saslContinue failed: {reply}");
        }
        ensure!(
            reply.get_bool("done").unwrap_or(false),
            "SCRAM conversation never finished"
        );
        Ok(())
    }

    /// Send `cmd` and wait up to `limit` for its reply.
    pub async fn command(&mut self, cmd: &Document, limit: Duration) -> Result<Document> {
        tokio::time::timeout(limit, self.round_trip(cmd))
            .await
            .with_context(|| format!("no reply within {limit:?}"))?
    }

    async fn round_trip(&mut self, cmd: &Document) -> Result<Document> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.stream.write_all(&encode(id, cmd)?).await?;
        let mut header = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut header).await?;
        let field = |i: usize| i32::from_le_bytes(header[i..i + 4].try_into().unwrap());
        let len = usize::try_from(field(0)).context("negative messageLength")?;
        ensure!(
            (HEADER_LEN + 5..=MAX_MESSAGE).contains(&len),
            "reply length {len} out of range"
        );
        ensure!(
            field(12) == OP_MSG,
            "reply opCode {} is not OP_MSG",
            field(12)
        );
        ensure!(
            field(8) == id,
            "reply responseTo {} != requestID {id}",
            field(8)
        );
        let mut rest = vec![0u8; len - HEADER_LEN];
        self.stream.read_exact(&mut rest).await?;
        decode_body(&rest)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_message_round_trips_through_the_decoder() {
        let cmd = doc! {"ping": 1, "$db": "admin"};
        let msg = encode(7, &cmd).unwrap();
        assert_eq!(
            i32::from_le_bytes(msg[..4].try_into().unwrap()) as usize,
            msg.len()
        );
        assert_eq!(i32::from_le_bytes(msg[4..8].try_into().unwrap()), 7);
        assert_eq!(i32::from_le_bytes(msg[12..16].try_into().unwrap()), OP_MSG);
        assert_eq!(decode_body(&msg[HEADER_LEN..]).unwrap(), cmd);
    }

    #[test]
    fn decoder_skips_document_sequences_and_checksums() {
        let body = bson::to_vec(&doc! {"ok": 1.0}).unwrap();
        let mut rest = CHECKSUM_PRESENT.to_le_bytes().to_vec();
        rest.push(1); // kind 1: size, identifier, no documents
        rest.extend_from_slice(&(4 + 2i32).to_le_bytes());
        rest.extend_from_slice(b"x\0");
        rest.push(0);
        rest.extend_from_slice(&body);
        rest.extend_from_slice(&[0, 0, 0, 0]); // checksum (not verified)
        assert!(is_ok(&decode_body(&rest).unwrap()));
    }

    #[test]
    fn decoder_rejects_overrunning_sections() {
        let mut rest = 0u32.to_le_bytes().to_vec();
        rest.push(0);
        rest.extend_from_slice(&1000i32.to_le_bytes());
        assert!(decode_body(&rest).is_err());
    }
}
