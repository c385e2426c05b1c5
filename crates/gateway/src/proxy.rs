//! The PROXY protocol on the client listener: a load balancer that terminates nothing (an AWS
//! Network Load Balancer with IP targets, HAProxy in `mode tcp`) opens the gateway connection
//! itself, so the socket's peer is the balancer; with `proxy_protocol` on, the balancer puts a
//! header in front of the client's bytes that carries the client's own address. Such a balancer
//! puts one in front of its health checks too, so the metrics listener reads headers with the
//! same functions ([`crate::metrics::http`]).
//!
//! Owns the modes ([`ProxyMode`]), reading the header off a new socket ([`read`], under the
//! handshake deadline, into a buffer of [`MAX_HEADER`] bytes, consuming exactly the header and
//! nothing of the client's own bytes) and the decision table ([`decide`]) that turns mode, source
//! and what arrived into the client's effective address or a refusal. Parsing is the `ppp`
//! crate's (version 2, binary, and version 1, text: both come with it at no extra cost; an NLB
//! sends version 2); this module only tells "a header" from "no header" by the signatures the
//! crate exports.
//!
//! It must never believe a header from a peer outside `proxy_protocol_sources`: such a
//! connection is refused, since anyone who can reach the port could otherwise pick the address
//! the access list, the per-source limits and the logs see.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{HeaderResult, PartialResult};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header accepted, TLVs included. A version 1 header is at most 107 bytes, a
/// version 2 header with IP addresses 28 bytes plus TLVs (an NLB adds a few dozen bytes).
pub const MAX_HEADER: usize = 1024;

/// Pause before looking again at a header that arrived only in part (rare: a balancer sends
/// it in one segment).
const PARTIAL_PAUSE: Duration = Duration::from_millis(5);

/// Whether the listener expects PROXY protocol headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// No header is looked for; the socket's peer is the client (the default).
    #[default]
    Off,
    /// Listed sources may send a header; without one their own address stands.
    Optional,
    /// Listed sources must send a header; a connection from them without one is refused.
    Required,
}

impl std::str::FromStr for ProxyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(ProxyMode::Off),
            "optional" => Ok(ProxyMode::Optional),
            "required" => Ok(ProxyMode::Required),
            other => Err(format!(
                "unknown PROXY protocol mode {other:?}: use off, optional or required"
            )),
        }
    }
}

/// What the first bytes of a connection turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// No PROXY signature: the client's own first bytes, left unread.
    NoHeader,
    /// A valid header that carries no client address: the `LOCAL` command (a balancer's own
    /// health check), a version 2 `UNSPEC` family or a version 1 `UNKNOWN` line.
    Local,
    /// A valid header carrying a TCP client's address.
    Proxied(SocketAddr),
    /// A PROXY signature followed by something that is not a usable header (malformed, too
    /// long, or a UDP or UNIX-socket source, which cannot be a client of this TCP listener).
    Invalid,
    /// The peer closed before anything decisive arrived.
    Closed,
    /// Nothing decisive arrived before the handshake deadline.
    TimedOut,
}

/// Why a connection was refused at the PROXY protocol step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A header from a peer not in `proxy_protocol_sources`.
    Untrusted,
    /// `required` mode and a listed source sent no header.
    Missing,
    /// A listed source sent a signature but no usable header.
    Invalid,
    /// No decision before the handshake deadline.
    Timeout,
    /// The peer left first (not counted: nothing was refused).
    Closed,
}

impl Refusal {
    /// The `reason` label of `mongomux_client_connections_proxy_refused_total`; `None` for a
    /// peer that simply left.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Refusal::Untrusted => Some("untrusted"),
            Refusal::Missing => Some("missing"),
            Refusal::Invalid => Some("invalid"),
            Refusal::Timeout => Some("timeout"),
            Refusal::Closed => None,
        }
    }

    /// The log message.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Untrusted => "PROXY protocol header from a peer not in proxy_protocol_sources",
            Refusal::Missing => "no PROXY protocol header, and proxy_protocol is required",
            Refusal::Invalid => "malformed or unusable PROXY protocol header",
            Refusal::Timeout => "no PROXY protocol decision before the deadline",
            Refusal::Closed => "peer closed before sending anything",
        }
    }
}

/// The `reason` labels, for the metric's closed label set.
pub const REFUSAL_LABELS: &[&str] = &["untrusted", "missing", "invalid", "timeout"];

/// The outcome of the PROXY protocol step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve the connection as coming from this address.
    Admit(SocketAddr),
    /// Close it.
    Refuse(Refusal),
}

/// The decision table: `trusted` says whether the socket's `peer` is in
/// `proxy_protocol_sources`.
pub fn decide(mode: ProxyMode, trusted: bool, peer: SocketAddr, seen: Seen) -> Decision {
    use Decision::{Admit, Refuse};
    match (mode, trusted, seen) {
        (ProxyMode::Off, _, _) => Admit(peer),
        (_, _, Seen::Closed) => Refuse(Refusal::Closed),
        (_, _, Seen::TimedOut) => Refuse(Refusal::Timeout),
        (_, false, Seen::NoHeader) => Admit(peer),
        (_, false, _) => Refuse(Refusal::Untrusted),
        (_, true, Seen::Proxied(client)) => Admit(client),
        (_, true, Seen::Local) => Admit(peer),
        (_, true, Seen::Invalid) => Refuse(Refusal::Invalid),
        (ProxyMode::Required, true, Seen::NoHeader) => Refuse(Refusal::Missing),
        (ProxyMode::Optional, true, Seen::NoHeader) => Admit(peer),
    }
}

/// What the bytes peeked so far say.
#[derive(Debug, PartialEq, Eq)]
enum Peek {
    /// Too few bytes to tell.
    NeedMore,
    /// Decided; `consume` header bytes are to be read off the socket.
    Done { seen: Seen, consume: usize },
}

/// Whether `buf` starts with a version 2 or version 1 signature.
fn has_signature(buf: &[u8]) -> bool {
    buf.starts_with(ppp::v2::PROTOCOL_PREFIX)
        || buf.starts_with(ppp::v1::PROTOCOL_PREFIX.as_bytes())
}

/// Classifies the first bytes of a connection (all of them that arrived, up to
/// [`MAX_HEADER`]).
fn classify(buf: &[u8]) -> Peek {
    let done = |seen, consume| Peek::Done { seen, consume };
    let result = HeaderResult::parse(buf);
    if let HeaderResult::V2(Err(ppp::v2::ParseError::Partial(_, length))) = result {
        // The advertised length alone says whether the header can fit.
        if 16 + length > MAX_HEADER {
            return done(Seen::Invalid, 0);
        }
    }
    // A version 1 header ends at its first CRLF; the crate still calls a line that lacks a
    // field "incomplete", which more bytes would not change.
    let v1_line_ended =
        matches!(result, HeaderResult::V1(_)) && buf.windows(2).any(|w| w == b"\r\n");
    if result.is_incomplete() {
        return match buf.len() >= MAX_HEADER || v1_line_ended {
            true => done(Seen::Invalid, 0),
            false => Peek::NeedMore,
        };
    }
    // A refused header is not read off the socket: the connection is closed anyway.
    let header = |seen, len| match seen {
        Seen::Invalid => done(seen, 0),
        _ => done(seen, len),
    };
    match result {
        HeaderResult::V2(Ok(h)) => header(from_v2(&h), h.len()),
        HeaderResult::V1(Ok(h)) => header(from_v1(&h.addresses), h.header.len()),
        _ if has_signature(buf) => done(Seen::Invalid, 0),
        _ => done(Seen::NoHeader, 0),
    }
}

fn from_v2(h: &ppp::v2::Header<'_>) -> Seen {
    use ppp::v2::{Addresses, Command, Protocol};
    match (h.command, h.protocol, &h.addresses) {
        (Command::Local, _, _) => Seen::Local,
        (Command::Proxy, _, Addresses::Unspecified) => Seen::Local,
        (Command::Proxy, Protocol::Stream, Addresses::IPv4(a)) => {
            Seen::Proxied(SocketAddr::from((a.source_address, a.source_port)))
        }
        (Command::Proxy, Protocol::Stream, Addresses::IPv6(a)) => {
            Seen::Proxied(SocketAddr::from((a.source_address, a.source_port)))
        }
        _ => Seen::Invalid,
    }
}

fn from_v1(addresses: &ppp::v1::Addresses) -> Seen {
    use ppp::v1::Addresses;
    match addresses {
        Addresses::Tcp4(a) => Seen::Proxied(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Tcp6(a) => Seen::Proxied(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unknown => Seen::Local,
    }
}

/// Looks at the first bytes of `stream` for a header, within `deadline`, and reads the header
/// (and nothing after it) off the socket when there is one. Bytes that are not a header stay
/// unread for the TLS and MongoDB layers. For a peer that is not `trusted`, a signature is
/// enough to decide ([`Seen::Invalid`]: whatever follows it would be refused).
pub async fn read(stream: &mut TcpStream, trusted: bool, deadline: Duration) -> Seen {
    tokio::time::timeout(deadline, read_inner(stream, trusted))
        .await
        .unwrap_or(Seen::TimedOut)
}

async fn read_inner(stream: &mut TcpStream, trusted: bool) -> Seen {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut had = 0;
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Seen::Closed,
            Ok(n) => n,
        };
        match classify(&buf[..n]) {
            Peek::NeedMore if !trusted && has_signature(&buf[..n]) => return Seen::Invalid,
            Peek::NeedMore => {
                // `peek` returns at once while any byte is queued: wait for more to arrive.
                if n == had {
                    tokio::time::sleep(PARTIAL_PAUSE).await;
                }
                had = n;
            }
            Peek::Done { seen, consume } => {
                if consume > 0 && stream.read_exact(&mut buf[..consume]).await.is_err() {
                    return Seen::Closed;
                }
                return seen;
            }
        }
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
