//! Counting established TCP connections through the kernel's socket-diagnostics netlink
//! interface (`NETLINK_SOCK_DIAG`, what `ss` uses), filtered in the kernel by state and port.
//!
//! Why not `/proc/net/tcp` like [`crate::observe`]: a fleet run leaves tens of thousands of
//! sockets in TIME_WAIT, and the kernel formats every one of them as text on every read; a
//! sampler reading that ten times a second spends most of a core, which on a two-core machine
//! slows the very servers it measures. Here the kernel skips every socket that is not
//! ESTABLISHED on the given port and sends the rest in binary.
//!
//! What it owns: the request and reply layouts (`linux/netlink.h`, `linux/sock_diag.h`,
//! `linux/inet_diag.h`). What it must never do: return a count inflated by its own reading
//! (sockets are de-duplicated by inode; see [`SockDiag::established`] for skipped ones).

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{bail, Context as _, Result};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const AF_NETLINK: i32 = 16;
const SOCK_DGRAM: i32 = 2;
const SOCK_CLOEXEC: i32 = 0o2_000_000;
const NETLINK_SOCK_DIAG: i32 = 4;
const IPPROTO_TCP: u8 = 6;
const TCP_ESTABLISHED: u32 = 1;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
const INET_DIAG_BC_D_EQ: u8 = 12;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, 48-byte socket id.
const REQ_LEN: usize = 56;
/// Offsets in `struct inet_diag_msg` (after the netlink header).
const MSG_INODE_AT: usize = 68;
const MSG_LEN: usize = 72;

/// Which end of the connection the port is.
#[derive(Clone, Copy, Debug)]
pub enum Port {
    /// This side's port: for a server's port, the connections the server has.
    Local(u16),
    /// The peer's port: for a server's port, the client sockets connected to it.
    Remote(u16),
}

/// A netlink socket for socket-diagnostics dumps.
pub struct SockDiag {
    sock: File,
    seq: u32,
    buf: Vec<u8>,
}

impl SockDiag {
    pub fn open() -> Result<SockDiag> {
        extern "C" {
            fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
        }
        // SAFETY: socket() takes integers and returns a new descriptor or -1.
        let fd = unsafe { socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("open a NETLINK_SOCK_DIAG socket");
        }
        // SAFETY: `fd` was just returned by socket() and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SockDiag {
            sock: File::from(owned),
            seq: 0,
            // A dump datagram is at most a few pages.
            buf: vec![0; 64 * 1024],
        })
    }

    /// Established TCP connections (IPv4 and IPv6) on `port`, as many as the larger of two
    /// dumps saw: like a `/proc/net/tcp` read, a dump walks the kernel's hash table in pieces
    /// and can skip a socket that moved meanwhile, but never invents one once de-duplicated.
    pub fn count(&mut self, port: Port) -> Result<usize> {
        let a = self.established(port)?.len();
        let b = self.established(port)?.len();
        Ok(a.max(b))
    }

    /// The inodes of established TCP sockets on `port`, from one dump per address family.
    pub fn established(&mut self, port: Port) -> Result<HashSet<u64>> {
        let mut inodes = HashSet::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(family, port, &mut inodes)?;
        }
        Ok(inodes)
    }

    fn dump(&mut self, family: u8, port: Port, inodes: &mut HashSet<u64>) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(self.seq, family, port);
        self.sock
            .write_all(&req)
            .context("send a sock_diag request")?;
        loop {
            let n = self
                .sock
                .read(&mut self.buf)
                .context("read a sock_diag reply")?;
            let mut at = 0;
            while at + NLMSG_HDRLEN <= n {
                let b = &self.buf[at..n];
                let len = u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(b[4..6].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes"));
                if len < NLMSG_HDRLEN || len > b.len() {
                    bail!("sock_diag: malformed reply (message length {len})");
                }
                if seq == self.seq {
                    match kind {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let code = b
                                .get(16..20)
                                .map(|e| i32::from_ne_bytes(e.try_into().expect("4 bytes")))
                                .unwrap_or(0);
                            let err = std::io::Error::from_raw_os_error(-code);
                            bail!("sock_diag request refused: {err}");
                        }
                        _ if len >= NLMSG_HDRLEN + MSG_LEN => {
                            let m = &b[NLMSG_HDRLEN..];
                            let inode = u32::from_ne_bytes(
                                m[MSG_INODE_AT..MSG_INODE_AT + 4]
                                    .try_into()
                                    .expect("4 bytes"),
                            );
                            inodes.insert(u64::from(inode));
                        }
                        _ => {}
                    }
                }
                at += (len + 3) & !3;
            }
        }
    }
}

/// A dump request for established TCP sockets of `family` whose local or remote port is the
/// given one, filtered in the kernel by a two-instruction bytecode.
fn request(seq: u32, family: u8, port: Port) -> Vec<u8> {
    let (code, p) = match port {
        Port::Local(p) => (INET_DIAG_BC_S_EQ, p),
        Port::Remote(p) => (INET_DIAG_BC_D_EQ, p),
    };
    // `struct inet_diag_bc_op {code, yes, no}` twice: compare, then the port in the second
    // op's `no`. A match jumps 8 bytes (the end: accept); a mismatch jumps 12, past the end
    // (reject). This is the program `ss` builds for `sport = :P`.
    let mut bc = vec![code, 8];
    bc.extend_from_slice(&12u16.to_ne_bytes());
    bc.extend_from_slice(&[0, 0]);
    bc.extend_from_slice(&p.to_ne_bytes());
    let attr_len = 4 + bc.len();
    let total = NLMSG_HDRLEN + REQ_LEN + attr_len;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    m.extend_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    m.extend_from_slice(&[0; 48]); // socket id: unused by a dump
    m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    m.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    m.extend_from_slice(&bc);
    debug_assert_eq!(m.len(), total);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_both_ends_of_a_loopback_connection() {
        let mut diag = SockDiag::open().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(diag.count(Port::Local(port)).unwrap(), 0);
        let _a = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _b = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _accepted = [listener.accept().unwrap(), listener.accept().unwrap()];
        assert_eq!(diag.count(Port::Local(port)).unwrap(), 2);
        assert_eq!(diag.count(Port::Remote(port)).unwrap(), 2);
        assert_eq!(
            crate::observe::established_to_port(port).unwrap(),
            diag.count(Port::Local(port)).unwrap()
        );
    }
}
