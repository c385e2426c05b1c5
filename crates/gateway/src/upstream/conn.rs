//! One authenticated connection to the upstream deployment.
//!
//! Owns the socket, the `hello` handshake and the SCRAM conversation (source/auth/auth.md) that
//! make a connection usable, and the strict request/reply exchange on it. A connection whose
//! exchange did not complete cleanly must be dropped by its owner, never reused: a reply still
//! in flight would otherwise reach the wrong client.
//!
//! Pooled connections offer the URI's `compressors` in their first `hello` and compress what
//! they send with the one the server accepts ([`super::compression`]); every reply that arrives
//! compressed is unwrapped in [`UpstreamConn::round_trip`], so nothing past it ever sees
//! OP_COMPRESSED. Monitoring connections ([`UpstreamConn::open`] alone) never compress.
//!
//! Every socket has TCP keepalive on ([`KEEPALIVE_TIME`]): a pooled connection may sit idle
//! for `idle_timeout`, and a peer that vanished without a FIN or RST (a rebooted host, a NAT or
//! load balancer that dropped the flow) would otherwise only be noticed by the next request,
//! which then waits for its whole reply deadline ([`UpstreamConn::round_trip_within`]).

pub use super::conn_meta::ConnMeta;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, spec::BinarySubtype, Binary, Document};
use bytes::BytesMut;
use mongomux_auth::{Mechanism, ScramClient};
use mongomux_wire::{encode_op_msg, rewrite_ids, Header, OpCode, OpMsg, MAX_MESSAGE_SIZE};
use tokio::net::TcpStream;

use super::compression::{self, Compressor};
use super::config::{UpstreamAuth, UpstreamConfig};
use super::srv::SrvResolver;

use super::error::{is_state_change, UpstreamError};
use crate::framed::Framed;
use crate::tls::{MaybeTls, Peek, UpstreamStream};

/// Idle time before the first keepalive probe, and the interval between probes: a dead peer is
/// found within about a minute and a half (Linux sends 9 probes before giving up), well before
/// an idle connection is reused by a request that would otherwise wait for its deadline.
pub const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Turns TCP keepalive on; a socket that refuses keeps working without it.
fn keep_alive(tcp: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "could not turn on TCP keepalive on an upstream socket");
    }
}

/// Connects to `host:port`, looking the host up through `resolver` when one is configured and
/// the host is a name; each address it has is tried in turn.
async fn dial(address: &str, resolver: Option<&SrvResolver>) -> std::io::Result<TcpStream> {
    let host = super::config::host_of(address);
    let (Some(resolver), Err(_)) = (resolver, host.parse::<std::net::IpAddr>()) else {
        return TcpStream::connect(address).await;
    };
    let port: u16 = address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no port"))?;
    let ips = resolver
        .lookup_ips(host)
        .await
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()))?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address");
    for ip in ips {
        match TcpStream::connect((ip, port)).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One SCRAM login's parts, borrowed from [`UpstreamAuth::Scram`].
struct ScramLogin<'a> {
    username: &'a str,
    password: &'a mongomux_auth::Secret,
    source: &'a str,
    mechanism: Option<Mechanism>,
}

/// What the upstream said about itself in its `hello`; the gateway's own hello repeats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamInfo {
    /// `minWireVersion`.
    pub min_wire_version: i32,
    /// `maxWireVersion`.
    pub max_wire_version: i32,
    /// `logicalSessionTimeoutMinutes`, if the upstream supports sessions.
    pub session_timeout_minutes: Option<i32>,
    /// Which server implementation answered (some cannot take every BSON type).
    pub flavor: Flavor,
}

/// The server implementation behind the upstream, as its `buildInfo` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// MongoDB itself (or anything that does not say otherwise).
    #[default]
    MongoDb,
    /// FerretDB 1.x (`buildInfo.ferretdbVersion` 1.*), which drops the connection on some BSON
    /// types instead of answering with an error.
    FerretDbV1,
}

impl Default for UpstreamInfo {
    /// Used only until the first upstream connection succeeds: MongoDB 6.0's values.
    fn default() -> Self {
        UpstreamInfo {
            min_wire_version: 0,
            max_wire_version: 17,
            session_timeout_minutes: Some(30),
            flavor: Flavor::MongoDb,
        }
    }
}

/// An upstream connection.
#[derive(Debug)]
pub struct UpstreamConn {
    framed: Framed<UpstreamStream>,
    /// Shared facts about this connection.
    pub meta: Arc<ConnMeta>,
    next_request_id: i32,
    /// The compressor negotiated in the handshake; None: everything is sent plain.
    compressor: Option<Compressor>,
}

impl UpstreamConn {
    /// Opens the socket (and TLS) only: what a monitor needs, which never authenticates.
    pub async fn open(
        address: &str,
        tls: Option<&Arc<rustls::ClientConfig>>,
        resolver: Option<&SrvResolver>,
        id: u64,
    ) -> Result<UpstreamConn, UpstreamError> {
        let tcp = dial(address, resolver)
            .await
            .map_err(|source| UpstreamError::Connect {
                address: address.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        keep_alive(&tcp);
        let stream = match tls {
            None => MaybeTls::Plain(tcp),
            Some(tls) => {
                let host = super::config::host_of(address);
                let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(
                    |source| UpstreamError::TlsServerName {
                        host: host.to_string(),
                        source,
                    },
                )?;
                let tls = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|source| UpstreamError::Tls {
                        address: address.to_string(),
                        source,
                    })?;
                MaybeTls::Tls(Box::new(tls))
            }
        };
        Ok(UpstreamConn {
            framed: Framed::new(stream, MAX_MESSAGE_SIZE),
            meta: Arc::new(ConnMeta::new(id, address)),
            next_request_id: 1,
            compressor: None,
        })
    }

    /// Connects, says hello and authenticates. The caller bounds the whole with a deadline.
    pub async fn connect(
        cfg: &UpstreamConfig,
        address: &str,
        tls: Option<&Arc<rustls::ClientConfig>>,
        id: u64,
    ) -> Result<(UpstreamConn, UpstreamInfo), UpstreamError> {
        let mut conn = UpstreamConn::open(address, tls, cfg.resolver.as_ref(), id).await?;
        let mut hello = doc! {
            "hello": 1,
            "$db": "admin",
            "client": {
                "driver": { "name": "mongomux", "version": env!("CARGO_PKG_VERSION") },
                "os": { "type": std::env::consts::OS },
                "application": { "name": "mongomux" },
            },
        };
        if let Some((user, source)) = cfg.scram_user() {
            hello.insert("saslSupportedMechs", format!("{source}.{user}"));
        }
        if !cfg.compressors.is_empty() {
            hello.insert("compression", cfg.compressors.clone());
        }
        let reply = conn.command(&hello).await?;
        // From here on requests may be compressed; the SASL steps below never are.
        conn.compressor = compression::negotiate(&cfg.compressors, &reply);
        if !cfg.compressors.is_empty() {
            tracing::debug!(
                address,
                compressor = conn.compressor.map_or("none", Compressor::name),
                "upstream compression negotiated"
            );
        }
        let mut info = UpstreamInfo {
            min_wire_version: int_field(&reply, "minWireVersion").unwrap_or(0),
            max_wire_version: int_field(&reply, "maxWireVersion").unwrap_or(17),
            session_timeout_minutes: int_field(&reply, "logicalSessionTimeoutMinutes"),
            flavor: Flavor::MongoDb,
        };
        if let UpstreamAuth::Scram {
            username,
            password,
            source,
            mechanism,
        } = &cfg.auth
        {
            let offered: Vec<String> = reply
                .get_array("saslSupportedMechs")
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let scram = ScramLogin {
                username,
                password,
                source,
                mechanism: *mechanism,
            };
            conn.authenticate(&scram, &offered).await?;
        }
        super::aws_login::authenticate(&mut conn, cfg).await?;
        info.flavor = conn.flavor().await?;
        Ok((conn, info))
    }

    /// Asks `buildInfo` which implementation this is (one round trip per new connection, so
    /// that the answer follows the upstream even if it is replaced behind the same address).
    async fn flavor(&mut self) -> Result<Flavor, UpstreamError> {
        let reply = self
            .command(&doc! { "buildInfo": 1, "$db": "admin" })
            .await?;
        let ferret_v1 = reply
            .get_str("ferretdbVersion")
            .is_ok_and(|v| v.trim_start_matches('v').starts_with("1."));
        Ok(if ferret_v1 {
            Flavor::FerretDbV1
        } else {
            Flavor::MongoDb
        })
    }

    /// Runs a SCRAM conversation; SCRAM-SHA-256 unless only SCRAM-SHA-1 is offered or the URI
    /// forces a mechanism.
    async fn authenticate(
        &mut self,
        cfg: &ScramLogin<'_>,
        offered: &[String],
    ) -> Result<(), UpstreamError> {
        let mechanism = cfg.mechanism.unwrap_or_else(|| {
            if offered.iter().any(|m| m == "SCRAM-SHA-1")
                && !offered.iter().any(|m| m == "SCRAM-SHA-256")
            {
                Mechanism::ScramSha1
            } else {
                Mechanism::ScramSha256
            }
        });
        let mut scram = ScramClient::new(mechanism, cfg.username, cfg.password);
        let start = doc! {
            "saslStart": 1,
            "mechanism": mechanism.name(),
            "payload": binary(scram.client_first()),
            "autoAuthorize": 1,
            "options": { "skipEmptyExchange": true },
            "$db": cfg.source,
        };
        let reply = self.command(&start).await?;
        let first = sasl_reply(&reply)?;
        let final_msg = scram
            .client_final(&first.1)
            .map_err(|e| UpstreamError::Auth(Some(e)))?;
        let cont = doc! {
            "saslContinue": 1,
            "conversationId": first.0,
            "payload": binary(final_msg),
            "$db": cfg.source,
        };
        let reply = self.command(&cont).await?;
        let (conv, payload, done) = sasl_reply(&reply)?;
        scram
            .verify_server_final(&payload)
            .map_err(|e| UpstreamError::Auth(Some(e)))?;
        if !done {
            // Servers that ignore skipEmptyExchange want one more empty round.
            let cont = doc! {
                "saslContinue": 1,
                "conversationId": conv,
                "payload": binary(Vec::new()),
                "$db": cfg.source,
            };
            let reply = self.command(&cont).await?;
            if !reply.get_bool("done").unwrap_or(false) {
                return Err(UpstreamError::Auth(None));
            }
        }
        Ok(())
    }

    /// Sends a command the gateway itself built and returns the reply body; `{ok: 0}` replies
    /// become errors.
    pub async fn command(&mut self, cmd: &Document) -> Result<Document, UpstreamError> {
        let body = bson::to_vec(cmd).map_err(UpstreamError::Encode)?;
        let mut msg = encode_op_msg(0, 0, 0, &body, &[]);
        let reply = self.round_trip(&mut msg).await?;
        let parsed = OpMsg::parse(&reply).map_err(UpstreamError::BadReply)?;
        let doc: Document = Document::try_from(parsed.body).map_err(UpstreamError::BadReplyBson)?;
        let ok = doc
            .get("ok")
            .and_then(|v| v.as_f64().or(v.as_i32().map(f64::from)));
        if ok != Some(1.0) {
            let code = doc.get_i32("code").unwrap_or(0);
            if code == 18 {
                return Err(UpstreamError::Auth(None));
            }
            let name = doc.get_str("codeName").unwrap_or("unknown").to_string();
            if is_state_change(code) {
                return Err(UpstreamError::MemberUnavailable {
                    address: self.meta.address.to_string(),
                    code,
                    name,
                });
            }
            return Err(UpstreamError::Refused { code, name });
        }
        Ok(doc)
    }

    /// Sends one request (its requestID is rewritten in place; compressed on the wire when a
    /// compressor was negotiated and the command may be) and reads its reply, decompressed.
    /// Any error leaves the connection unusable.
    pub async fn round_trip(&mut self, request: &mut [u8]) -> Result<BytesMut, UpstreamError> {
        let id = self.send(request).await?;
        let mut reply = self
            .framed
            .read_frame()
            .await
            .map_err(UpstreamError::Receive)?
            .ok_or(UpstreamError::Closed)?;
        if compression::is_compressed(&reply) {
            reply = compression::decompress_message(&reply).map_err(UpstreamError::Decompress)?;
        }
        let header = Header::parse(&reply).map_err(UpstreamError::BadReply)?;
        if header.response_to != id {
            return Err(UpstreamError::ReplyMismatch);
        }
        if header.op_code != OpCode::Msg {
            return Err(UpstreamError::UnexpectedOpCode(header.op_code.as_i32()));
        }
        Ok(reply)
    }

    /// [`UpstreamConn::round_trip`] bounded by `limit`: a reply that has not fully arrived by
    /// then fails with [`UpstreamError::Timeout`]. The connection must then be dropped: the
    /// reply may still be on its way, and would answer the next request.
    pub async fn round_trip_within(
        &mut self,
        request: &mut [u8],
        limit: Duration,
    ) -> Result<BytesMut, UpstreamError> {
        tokio::time::timeout(limit, self.round_trip(request))
            .await
            .unwrap_or(Err(UpstreamError::Timeout(limit)))
    }

    /// [`UpstreamConn::command`] bounded by `limit`, as [`UpstreamConn::round_trip_within`].
    pub async fn command_within(
        &mut self,
        cmd: &Document,
        limit: Duration,
    ) -> Result<Document, UpstreamError> {
        tokio::time::timeout(limit, self.command(cmd))
            .await
            .unwrap_or(Err(UpstreamError::Timeout(limit)))
    }

    /// Writes a request, rewriting its requestID; returns that id.
    async fn send(&mut self, request: &mut [u8]) -> Result<i32, UpstreamError> {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        rewrite_ids(request, id, 0);
        let compressed = self
            .compressor
            .and_then(|c| compression::compress_message(c, request));
        self.framed
            .write_all(compressed.as_deref().unwrap_or(request))
            .await
            .map_err(UpstreamError::Send)?;
        Ok(id)
    }

    /// The compressor this connection sends with, if one was negotiated.
    pub fn compressor(&self) -> Option<Compressor> {
        self.compressor
    }

    /// Whether an idle connection is still usable: no bytes arrived unasked and the peer has
    /// not closed it. Does not block.
    pub fn is_healthy(&self) -> bool {
        !self.framed.has_buffered() && self.framed.get_ref().peek_now() == Peek::Quiet
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

fn int_field(doc: &Document, key: &str) -> Option<i32> {
    match doc.get(key)? {
        bson::Bson::Int32(v) => Some(*v),
        bson::Bson::Int64(v) => i32::try_from(*v).ok(),
        bson::Bson::Double(v) => Some(*v as i32),
        _ => None,
    }
}

/// Splits a SASL reply into conversation id, payload and done.
fn sasl_reply(reply: &Document) -> Result<(bson::Bson, Vec<u8>, bool), UpstreamError> {
    let conv = reply
        .get("conversationId")
        .cloned()
        .ok_or(UpstreamError::Auth(None))?;
    let payload = match reply.get("payload") {
        Some(bson::Bson::Binary(b)) => b.bytes.clone(),
        _ => return Err(UpstreamError::Auth(None)),
    };
    Ok((conv, payload, reply.get_bool("done").unwrap_or(false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts and reads but never answers (a half-open upstream): the bounded
    /// exchange gives up at its limit with `Timeout`, which maps to NetworkTimeout (89).
    #[tokio::test]
    async fn a_reply_that_never_comes_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let silent = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut sink).await;
        });
        let mut conn = UpstreamConn::open(&address, None, None, 1).await.unwrap();
        let body = bson::to_vec(&doc! { "ping": 1, "$db": "admin" }).unwrap();
        let mut request = encode_op_msg(0, 0, 0, &body, &[]);
        let limit = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let err = conn
            .round_trip_within(&mut request, limit)
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpstreamError::Timeout(l) if l == limit),
            "{err:?}"
        );
        assert!(started.elapsed() >= limit && started.elapsed() < 10 * limit);
        assert_eq!(
            crate::GatewayError::from(err).code(),
            (89, "NetworkTimeout")
        );
        let err = conn
            .command_within(&doc! { "ping": 1, "$db": "admin" }, limit)
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Timeout(_)), "{err:?}");
        drop(conn);
        silent.await.unwrap();
    }
}
