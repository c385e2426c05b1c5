//! A minimal OP_MSG client with its own SCRAM-SHA-256, used only to check results against
//! FerretDB directly.
//!
//! Why not the official Rust driver: FerretDB v1.24.2 with `--test-enable-new-auth` answers the
//! client-final SCRAM message with `done: false` although the driver sent
//! `skipEmptyExchange: true` (internal/handler/msg_saslcontinue.go), and the Rust driver 3.9
//! refuses that ("expected SCRAM authentication to have completed"; pymongo and the Go driver do
//! the extra empty round instead). So the driver cannot log in to FerretDB directly; this client
//! does the extra round. It is deliberately independent of the gateway's own SCRAM code.

use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, Document};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OP_MSG: i32 = 2013;
const IO_LIMIT: Duration = Duration::from_secs(30);
const MAX_REPLY: usize = 48_000_000;

/// An error reply: code and errmsg.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub code: i32,
    pub message: String,
}

/// One connection speaking OP_MSG.
pub struct RawConn {
    stream: TcpStream,
    next_id: i32,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<RawConn> {
        let stream = tokio::time::timeout(IO_LIMIT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
        stream.set_nodelay(true)?;
        Ok(RawConn { stream, next_id: 1 })
    }

    /// Connect and authenticate with SCRAM-SHA-256 against `admin`.
    pub async fn connect_scram(
        addr: SocketAddr,
        user: &str,
        password: &str,
    ) -> Result<RawConn, String> {
        let mut c = RawConn::connect(addr).await.map_err(|e| e.to_string())?;
        c.scram_sha256(user, password).await?;
        Ok(c)
    }

    /// Send `cmd` (with `$db` added) and return the reply document, whatever its `ok`.
    pub async fn command(&mut self, db: &str, mut cmd: Document) -> std::io::Result<Document> {
        cmd.insert("$db", db);
        let mut body = Vec::new();
        cmd.to_writer(&mut body).map_err(std::io::Error::other)?;
        let len = 16 + 4 + 1 + body.len();
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = Vec::with_capacity(len);
        for v in [len as i32, id, 0, OP_MSG] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        msg.extend_from_slice(&0u32.to_le_bytes());
        msg.push(0);
        msg.extend_from_slice(&body);
        let io = async {
            self.stream.write_all(&msg).await?;
            let mut header = [0u8; 16];
            self.stream.read_exact(&mut header).await?;
            let field = |i: usize| i32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().unwrap());
            let (len, response_to, op) = (field(0), field(2), field(3));
            if op != OP_MSG || response_to != id || len < 21 || len as usize > MAX_REPLY {
                return Err(std::io::Error::other(format!(
                    "unexpected reply header len={len} responseTo={response_to} op={op}"
                )));
            }
            let mut rest = vec![0u8; len as usize - 16];
            self.stream.read_exact(&mut rest).await?;
            if rest[4] != 0 {
                return Err(std::io::Error::other(
                    "reply without a kind 0 section first",
                ));
            }
            Document::from_reader(&rest[5..]).map_err(std::io::Error::other)
        };
        tokio::time::timeout(IO_LIMIT, io)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply"))?
    }

    /// Like [`RawConn::command`], turning `ok: 0` into a [`ServerError`]; I/O errors panic.
    pub async fn run(&mut self, db: &str, cmd: Document) -> Result<Document, ServerError> {
        let name = cmd.keys().next().cloned().unwrap_or_default();
        let reply = self
            .command(db, cmd)
            .await
            .unwrap_or_else(|e| panic!("direct {name}: {e}"));
        if ok(&reply) {
            Ok(reply)
        } else {
            Err(ServerError {
                code: reply.get_i32("code").unwrap_or(-1),
                message: reply.get_str("errmsg").unwrap_or_default().to_string(),
            })
        }
    }

    async fn scram_sha256(&mut self, user: &str, password: &str) -> Result<(), String> {
        let nonce: [u8; 24] = rand::random();
        let client_nonce = B64.encode(nonce);
        let first_bare = format!(
            "n={},r={client_nonce}",
            user.replace('=', "=3D").replace(',', "=2C")
        );
        let reply = self
            .run(
                "admin",
                doc! {
                    "saslStart": 1,
                    "mechanism": "SCRAM-SHA-256",
                    "payload": bin(format!("n,,{first_bare}").into_bytes()),
                    "options": {"skipEmptyExchange": true},
                },
            )
            .await
            .map_err(|e| format!("saslStart: {e:?}"))?;
        let conversation = reply
            .get("conversationId")
            .cloned()
            .unwrap_or(Bson::Int32(1));
        let server_first = payload(&reply)?;
        let attr = |k: &str| {
            server_first
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .ok_or_else(|| format!("server-first without {k}: {server_first}"))
        };
        let (r, s, i) = (attr("r")?, attr("s")?, attr("i")?);
        if !r.starts_with(&client_nonce) {
            return Err("server nonce does not extend ours".into());
        }
        let salt = B64.decode(s).map_err(|e| e.to_string())?;
        let iterations: u32 = i.parse().map_err(|e| format!("{e}"))?;
        // The test password is ASCII without special characters: SASLprep leaves it unchanged.
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = Sha256::digest(client_key);
        let without_proof = format!("c=biws,r={r}");
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let client_final = format!("{without_proof},p={}", B64.encode(proof));
        let mut reply = self
            .run(
                "admin",
                doc! {
                    "saslContinue": 1,
                    "conversationId": conversation.clone(),
                    "payload": bin(client_final.into_bytes()),
                },
            )
            .await
            .map_err(|e| format!("saslContinue: {e:?}"))?;
        let server_final = payload(&reply)?;
        let server_key = hmac_sha256(&salted, b"Server Key");
        let expected = B64.encode(hmac_sha256(&server_key, auth_message.as_bytes()));
        if server_final != format!("v={expected}") {
            return Err(format!("bad server signature: {server_final}"));
        }
        // FerretDB ignores skipEmptyExchange: finish with empty rounds until done.
        for _ in 0..2 {
            if reply.get_bool("done").unwrap_or(false) {
                return Ok(());
            }
            reply = self
                .run(
                    "admin",
                    doc! {
                        "saslContinue": 1,
                        "conversationId": conversation.clone(),
                        "payload": bin(Vec::new()),
                    },
                )
                .await
                .map_err(|e| format!("empty saslContinue: {e:?}"))?;
        }
        if reply.get_bool("done").unwrap_or(false) {
            Ok(())
        } else {
            Err("SCRAM conversation never finished".into())
        }
    }
}

fn ok(reply: &Document) -> bool {
    match reply.get("ok") {
        Some(Bson::Double(v)) => *v == 1.0,
        Some(Bson::Int32(v)) => *v == 1,
        Some(Bson::Int64(v)) => *v == 1,
        Some(Bson::Boolean(b)) => *b,
        _ => false,
    }
}

fn bin(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

fn payload(reply: &Document) -> Result<String, String> {
    match reply.get("payload") {
        Some(Bson::Binary(b)) => String::from_utf8(b.bytes.clone()).map_err(|e| e.to_string()),
        other => Err(format!("reply without binary payload: {other:?}")),
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Convenience queries over one direct connection.
impl RawConn {
    /// Every document of `db.coll` matching `filter` (find + getMore to the end).
    pub async fn find_all(&mut self, db: &str, coll: &str, filter: Document) -> Vec<Document> {
        let reply = self
            .run(
                db,
                doc! {"find": coll, "filter": filter, "batchSize": 10_000},
            )
            .await
            .unwrap_or_else(|e| panic!("direct find on {db}.{coll}: {e:?}"));
        let mut cursor = reply.get_document("cursor").unwrap().clone();
        let mut docs: Vec<Document> = cursor
            .get_array("firstBatch")
            .unwrap()
            .iter()
            .map(|d| d.as_document().unwrap().clone())
            .collect();
        loop {
            let id = cursor.get_i64("id").unwrap();
            if id == 0 {
                return docs;
            }
            let reply = self
                .run(
                    db,
                    doc! {"getMore": id, "collection": coll, "batchSize": 10_000},
                )
                .await
                .unwrap_or_else(|e| panic!("direct getMore on {db}.{coll}: {e:?}"));
            cursor = reply.get_document("cursor").unwrap().clone();
            docs.extend(
                cursor
                    .get_array("nextBatch")
                    .unwrap()
                    .iter()
                    .map(|d| d.as_document().unwrap().clone()),
            );
        }
    }

    /// Number of documents of `db.coll` matching `filter`.
    pub async fn count(&mut self, db: &str, coll: &str, filter: Document) -> i64 {
        let reply = self
            .run(db, doc! {"count": coll, "query": filter})
            .await
            .unwrap_or_else(|e| panic!("direct count on {db}.{coll}: {e:?}"));
        match reply.get("n") {
            Some(Bson::Int32(n)) => *n as i64,
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Double(n)) => *n as i64,
            other => panic!("count reply without n: {other:?}"),
        }
    }
}

/// The first entry of `writeErrors` in a write command's reply, if any.
pub fn first_write_error(reply: &Document) -> Option<ServerError> {
    let e = reply
        .get_array("writeErrors")
        .ok()?
        .first()?
        .as_document()?;
    Some(ServerError {
        code: e.get_i32("code").unwrap_or(-1),
        message: e.get_str("errmsg").unwrap_or_default().to_string(),
    })
}
