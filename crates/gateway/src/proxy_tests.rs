//! The decision table (mode × source listed × what arrived), the classifier on real headers
//! built with the `ppp` crate's own builder, and the socket reader over a real TCP pair.

use super::*;
use ppp::v2::{Builder, Command, Protocol, Version};
use tokio::io::AsyncWriteExt;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn v2_proxy(client: &str, server: &str) -> Vec<u8> {
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (addr(client), addr(server)),
    )
    .build()
    .expect("header")
}

fn v2_local() -> Vec<u8> {
    Builder::new(Version::Two | Command::Local, 0)
        .build()
        .expect("header")
}

/// A MongoDB message header as a driver's first bytes (length 200, OP_MSG).
fn mongo_start() -> Vec<u8> {
    let mut b = 200i32.to_le_bytes().to_vec();
    b.extend(1i32.to_le_bytes());
    b.extend(0i32.to_le_bytes());
    b.extend(2013i32.to_le_bytes());
    b
}

#[test]
fn decision_table() {
    use Decision::{Admit, Refuse};
    let peer = addr("10.0.0.5:4000");
    let client = addr("192.0.2.9:5555");
    let proxied = Seen::Proxied(client);
    let modes = [ProxyMode::Optional, ProxyMode::Required];
    // Off: nothing is looked at, whatever arrived.
    for seen in [Seen::NoHeader, proxied, Seen::Local, Seen::Invalid] {
        for trusted in [false, true] {
            assert_eq!(decide(ProxyMode::Off, trusted, peer, seen), Admit(peer));
        }
    }
    for mode in modes {
        // A peer not listed: its own bytes are fine, any header is refused.
        assert_eq!(decide(mode, false, peer, Seen::NoHeader), Admit(peer));
        for seen in [proxied, Seen::Local, Seen::Invalid] {
            assert_eq!(
                decide(mode, false, peer, seen),
                Refuse(Refusal::Untrusted),
                "{mode:?} {seen:?}"
            );
        }
        // A listed peer: the carried address replaces the peer's; LOCAL keeps the peer's.
        assert_eq!(decide(mode, true, peer, proxied), Admit(client));
        assert_eq!(decide(mode, true, peer, Seen::Local), Admit(peer));
        assert_eq!(
            decide(mode, true, peer, Seen::Invalid),
            Refuse(Refusal::Invalid)
        );
        for trusted in [false, true] {
            assert_eq!(
                decide(mode, trusted, peer, Seen::TimedOut),
                Refuse(Refusal::Timeout)
            );
            assert_eq!(
                decide(mode, trusted, peer, Seen::Closed),
                Refuse(Refusal::Closed)
            );
        }
    }
    assert_eq!(
        decide(ProxyMode::Required, true, peer, Seen::NoHeader),
        Refuse(Refusal::Missing)
    );
    assert_eq!(
        decide(ProxyMode::Optional, true, peer, Seen::NoHeader),
        Admit(peer)
    );
}

#[test]
fn classifies_v2_headers() {
    let h = v2_proxy("127.0.0.9:40000", "127.0.0.1:27018");
    let mut buf = h.clone();
    buf.extend(mongo_start());
    assert_eq!(
        classify(&buf),
        Peek::Done {
            seen: Seen::Proxied(addr("127.0.0.9:40000")),
            consume: h.len()
        }
    );
    let h6 = v2_proxy("[2001:db8::7]:1234", "[2001:db8::1]:27018");
    assert_eq!(
        classify(&h6),
        Peek::Done {
            seen: Seen::Proxied(addr("[2001:db8::7]:1234")),
            consume: h6.len()
        }
    );
    let local = v2_local();
    assert_eq!(
        classify(&local),
        Peek::Done {
            seen: Seen::Local,
            consume: local.len()
        }
    );
    // UDP is no client of a TCP listener.
    let udp = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Datagram,
        (addr("127.0.0.9:1"), addr("127.0.0.1:2")),
    )
    .build()
    .expect("header");
    assert_eq!(
        classify(&udp),
        Peek::Done {
            seen: Seen::Invalid,
            consume: 0
        }
    );
}

#[test]
fn partial_garbage_and_oversized_headers() {
    let h = v2_proxy("127.0.0.9:40000", "127.0.0.1:27018");
    for cut in [1, 5, 12, 15, h.len() - 1] {
        assert_eq!(classify(&h[..cut]), Peek::NeedMore, "cut at {cut}");
    }
    // The signature, then a version that does not exist.
    let mut bad = h.clone();
    bad[12] = 0x31;
    assert_eq!(
        classify(&bad),
        Peek::Done {
            seen: Seen::Invalid,
            consume: 0
        }
    );
    // A length no header of ours needs: refused at once, without waiting for the bytes.
    let mut long = h[..16].to_vec();
    long[14..16].copy_from_slice(&60000u16.to_be_bytes());
    assert_eq!(
        classify(&long),
        Peek::Done {
            seen: Seen::Invalid,
            consume: 0
        }
    );
    for line in [
        &b"PROXY TCP4 nonsense\r\n"[..],
        b"PROXY TCP4 1.2.3.4\r\n",
        b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
    ] {
        assert_eq!(
            classify(line),
            Peek::Done {
                seen: Seen::Invalid,
                consume: 0
            },
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    // Not a header at all: MongoDB and TLS first bytes are left alone.
    for first in [mongo_start(), vec![0x16, 0x03, 0x01, 0x02, 0x00]] {
        assert_eq!(
            classify(&first),
            Peek::Done {
                seen: Seen::NoHeader,
                consume: 0
            }
        );
    }
}

#[test]
fn classifies_v1_headers() {
    let line = b"PROXY TCP4 192.0.2.9 10.0.0.1 5555 27018\r\n";
    let mut buf = line.to_vec();
    buf.extend(mongo_start());
    assert_eq!(
        classify(&buf),
        Peek::Done {
            seen: Seen::Proxied(addr("192.0.2.9:5555")),
            consume: line.len()
        }
    );
    assert_eq!(classify(&line[..20]), Peek::NeedMore);
    assert_eq!(
        classify(b"PROXY UNKNOWN\r\n"),
        Peek::Done {
            seen: Seen::Local,
            consume: 15
        }
    );
}

#[test]
fn modes_parse() {
    assert_eq!("off".parse::<ProxyMode>(), Ok(ProxyMode::Off));
    assert_eq!("optional".parse::<ProxyMode>(), Ok(ProxyMode::Optional));
    assert_eq!("required".parse::<ProxyMode>(), Ok(ProxyMode::Required));
    assert!("on".parse::<ProxyMode>().is_err());
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (s, _) = l.accept().await.expect("accept");
    (c, s)
}

#[tokio::test]
async fn reads_exactly_the_header_even_when_split() {
    let (mut c, mut s) = pair().await;
    let h = v2_proxy("127.0.0.9:40000", "127.0.0.1:27018");
    let writer = tokio::spawn(async move {
        c.write_all(&h[..7]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(30)).await;
        c.write_all(&h[7..]).await.expect("write");
        c.write_all(&mongo_start()).await.expect("write");
        c
    });
    let seen = read(&mut s, true, Duration::from_secs(5)).await;
    assert_eq!(seen, Seen::Proxied(addr("127.0.0.9:40000")));
    let mut rest = [0u8; 16];
    s.read_exact(&mut rest)
        .await
        .expect("the client's own bytes");
    assert_eq!(rest.to_vec(), mongo_start());
    drop(writer.await);
}

#[tokio::test]
async fn silence_and_close_are_told_apart() {
    let (c, mut s) = pair().await;
    assert_eq!(
        read(&mut s, true, Duration::from_millis(50)).await,
        Seen::TimedOut
    );
    drop(c);
    assert_eq!(
        read(&mut s, true, Duration::from_secs(5)).await,
        Seen::Closed
    );
}

#[tokio::test]
async fn an_untrusted_signature_is_enough() {
    let (mut c, mut s) = pair().await;
    // Only the first 12 bytes: a listed source would be waited for, this one is not.
    let h = v2_proxy("127.0.0.9:40000", "127.0.0.1:27018");
    c.write_all(&h[..12]).await.expect("write");
    assert_eq!(
        read(&mut s, false, Duration::from_secs(5)).await,
        Seen::Invalid
    );
    assert_eq!(
        read(&mut s, true, Duration::from_millis(50)).await,
        Seen::TimedOut
    );
}
