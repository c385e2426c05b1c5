//! ESTABLISHED TCP sockets as the kernel sees them, from outside every process: how the tests
//! and benchmarks check what a server really has, without trusting anyone's own counters.
//!
//! Two readers, one answer: [`SockDiag`] asks the kernel through sock_diag netlink (what `ss`
//! uses), filtered by port in the kernel, so it stays cheap with tens of thousands of sockets on
//! the machine; [`proc_established`] reads `/proc/net/tcp{,6}`, the plain reference, which
//! formats every socket as text on every read (megabytes with a fleet's TIME_WAIT sockets:
//! sampled every few milliseconds that alone took most of a core on a 2-core machine). Tests
//! compare the two.
//!
//! Sockets are matched by full address, not port alone: a client bound to another loopback
//! source (127.0.0.33, say) may get an ephemeral port equal to a server's port on 127.0.0.1.
//! An IPv4 address also matches its IPv4-mapped IPv6 form (a dual-stack listener's view).
//!
//! What it must never do: return a count inflated by its own reading. Both readers walk the
//! kernel's hash table in pieces and can skip or repeat a socket that moved meanwhile; sockets
//! are de-duplicated by inode, and [`count`] takes the larger of two reads.

mod diag;
mod proc;

pub use diag::SockDiag;
pub use proc::proc_established;

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Which end of a connection the given address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// This side's address: for a server's address, the connections the server has.
    Local(SocketAddr),
    /// The peer's address: for a server's address, the client sockets connected to it.
    Remote(SocketAddr),
}

impl End {
    fn addr(self) -> SocketAddr {
        match self {
            End::Local(a) | End::Remote(a) => a,
        }
    }

    fn matches(self, s: &Sock) -> bool {
        let (want, got) = match self {
            End::Local(a) => (a, s.local),
            End::Remote(a) => (a, s.remote),
        };
        want.port() == got.port() && canonical(want.ip()) == canonical(got.ip())
    }
}

/// `addr:port` on 127.0.0.1, where every server the tests start listens.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One ESTABLISHED TCP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sock {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// 0 for a socket no process holds any more.
    pub inode: u64,
}

/// Keep the sockets `end` matches, each once (by inode; inode-0 sockets by address pair).
fn keep_matching(end: End, socks: impl IntoIterator<Item = Sock>) -> Vec<Sock> {
    let mut seen = HashSet::new();
    socks
        .into_iter()
        .filter(|s| end.matches(s))
        .filter(|s| {
            let key = if s.inode != 0 {
                (s.inode, None)
            } else {
                (0, Some((s.local, s.remote)))
            };
            seen.insert(key)
        })
        .collect()
}

/// ESTABLISHED sockets matching `end`, from netlink, or `/proc` where netlink is unavailable
/// or refuses the dump.
pub fn established(end: End) -> io::Result<Vec<Sock>> {
    SockDiag::open()
        .and_then(|mut d| d.established(end))
        .or_else(|_| proc_established(end))
}

/// How many ESTABLISHED sockets match `end`: the larger of two reads (see the module docs).
pub fn count(end: End) -> io::Result<usize> {
    let mut best = 0;
    for _ in 0..2 {
        best = best.max(established(end)?.len());
    }
    Ok(best)
}

/// Socket inodes held by `pid` (targets of its `/proc/PID/fd` links that read `socket:[N]`).
pub fn socket_inodes(pid: u32) -> io::Result<HashSet<u64>> {
    let mut set = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        // A descriptor may close between listing and reading it: skip it.
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            if let Ok(inode) = n.parse() {
                set.insert(inode);
            }
        }
    }
    Ok(set)
}

/// ESTABLISHED connections from process `pid` to `server` (its sockets whose remote end is
/// `server`): for the gateway and the upstream's address, the upstream connections it holds.
/// The larger of two reads.
pub fn count_held_by(pid: u32, server: SocketAddr) -> io::Result<usize> {
    let mine = socket_inodes(pid)?;
    let mut best = 0;
    for _ in 0..2 {
        let socks = established(End::Remote(server))?;
        best = best.max(socks.iter().filter(|s| mine.contains(&s.inode)).count());
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn both_readers_see_both_ends_of_loopback_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let mut diag = SockDiag::open().unwrap();
        assert_eq!(diag.count(End::Local(server)).unwrap(), 0);
        let _a = TcpStream::connect(server).unwrap();
        let _b = TcpStream::connect(server).unwrap();
        let _accepted = [listener.accept().unwrap(), listener.accept().unwrap()];
        assert_eq!(diag.count(End::Local(server)).unwrap(), 2);
        assert_eq!(diag.count(End::Remote(server)).unwrap(), 2);
        assert_eq!(proc_established(End::Local(server)).unwrap().len(), 2);
        assert_eq!(proc_established(End::Remote(server)).unwrap().len(), 2);
        let mut v4_only = SockDiag::open().unwrap().only_ipv4_sockets();
        assert_eq!(v4_only.count(End::Local(server)).unwrap(), 2);
        assert_eq!(count_held_by(std::process::id(), server).unwrap(), 2);
    }

    #[test]
    fn the_same_port_on_another_loopback_address_is_not_the_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _s = listener.accept().unwrap();
        let elsewhere = SocketAddr::from(([127, 0, 0, 33], port));
        assert_eq!(count(End::Local(elsewhere)).unwrap(), 0);
        assert_eq!(proc_established(End::Local(elsewhere)).unwrap().len(), 0);
        assert_eq!(count(End::Local(loopback(port))).unwrap(), 1);
    }

    #[test]
    fn an_ipv4_address_matches_its_mapped_form() {
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        let s = Sock {
            local: mapped,
            remote: "[::ffff:127.0.0.1]:5000".parse().unwrap(),
            inode: 1,
        };
        assert!(End::Local(v4).matches(&s));
        assert!(!End::Local("127.0.0.2:80".parse().unwrap()).matches(&s));
    }
}
