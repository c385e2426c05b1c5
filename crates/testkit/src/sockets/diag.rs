//! ESTABLISHED sockets through the kernel's socket-diagnostics netlink interface
//! (`NETLINK_SOCK_DIAG`, what `ss` uses): the kernel filters by state and port and sends the
//! rest in binary; the full address is then matched here.
//!
//! What it owns: the request and reply layouts (include/uapi/linux/netlink.h, sock_diag.h,
//! inet_diag.h). The standard library has no netlink sockets, hence `libc` and the crate's only
//! `unsafe`: opening the socket. Reads and writes go through a `File` owning the descriptor.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};

use super::{keep_matching, End, Sock};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
const INET_DIAG_BC_D_EQ: u8 = 12;
const TCP_ESTABLISHED: u32 = 1;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, 48-byte socket id.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg` (after the netlink header): family, state, timer, retrans, then the
/// socket id (sport, dport big-endian; src, dst 16 bytes each; if; cookie), expires, rqueue,
/// wqueue, uid, inode.
const MSG_LEN: usize = 72;
const MSG_SRC_AT: usize = 8;
const MSG_DST_AT: usize = 24;
const MSG_INODE_AT: usize = 68;

/// A netlink socket for socket-diagnostics dumps.
pub struct SockDiag {
    sock: File,
    seq: u32,
    buf: Vec<u8>,
    ipv6_too: bool,
}

impl SockDiag {
    pub fn open() -> io::Result<SockDiag> {
        // SAFETY: socket(2) takes integers and returns a new descriptor or -1 (checked).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket() and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SockDiag {
            sock: File::from(owned),
            seq: 0,
            // A dump datagram is at most a few pages.
            buf: vec![0; 64 * 1024],
            ipv6_too: true,
        })
    }

    /// Dump IPv4 sockets only. Each family costs a walk of the kernel's whole TCP hash table
    /// (milliseconds with many sockets), so a sampler watching a server on 127.0.0.1 (never
    /// dual-stack here) skips the IPv6 table, where its connections cannot be.
    pub fn only_ipv4_sockets(mut self) -> SockDiag {
        self.ipv6_too = false;
        self
    }

    /// ESTABLISHED TCP sockets matching `end`, each once, from one dump per address family.
    pub fn established(&mut self, end: End) -> io::Result<Vec<Sock>> {
        let mut socks = Vec::new();
        if end.addr().is_ipv4() {
            self.dump(libc::AF_INET as u8, end, &mut socks)?;
        }
        if self.ipv6_too {
            self.dump(libc::AF_INET6 as u8, end, &mut socks)?;
        }
        Ok(keep_matching(end, socks))
    }

    /// How many sockets match `end`: the larger of two dumps (a dump can skip a socket that
    /// moved in the hash table meanwhile, but never invents one once de-duplicated).
    pub fn count(&mut self, end: End) -> io::Result<usize> {
        let a = self.established(end)?.len();
        let b = self.established(end)?.len();
        Ok(a.max(b))
    }

    fn dump(&mut self, family: u8, end: End, out: &mut Vec<Sock>) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        self.sock.write_all(&request(self.seq, family, end))?;
        loop {
            let n = self.sock.read(&mut self.buf)?;
            let mut at = 0;
            while at + NLMSG_HDRLEN <= n {
                let b = &self.buf[at..n];
                let len = u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(b[4..6].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes"));
                if len < NLMSG_HDRLEN || len > b.len() {
                    return Err(io::Error::other(format!(
                        "sock_diag: malformed reply (message length {len})"
                    )));
                }
                if seq == self.seq {
                    match kind {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let code = b
                                .get(16..20)
                                .map(|e| i32::from_ne_bytes(e.try_into().expect("4 bytes")))
                                .unwrap_or(0);
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        SOCK_DIAG_BY_FAMILY if len >= NLMSG_HDRLEN + MSG_LEN => {
                            out.push(parse_msg(&b[NLMSG_HDRLEN..NLMSG_HDRLEN + MSG_LEN]));
                        }
                        _ => {}
                    }
                }
                at += (len + 3) & !3;
            }
        }
    }
}

/// One `struct inet_diag_msg` (exactly [`MSG_LEN`] bytes).
fn parse_msg(m: &[u8]) -> Sock {
    let port = |at: usize| u16::from_be_bytes([m[at], m[at + 1]]);
    let ip = |at: usize| -> IpAddr {
        if m[0] == libc::AF_INET as u8 {
            Ipv4Addr::from(<[u8; 4]>::try_from(&m[at..at + 4]).expect("4 bytes")).into()
        } else {
            Ipv6Addr::from(<[u8; 16]>::try_from(&m[at..at + 16]).expect("16 bytes")).into()
        }
    };
    let inode = u32::from_ne_bytes(m[MSG_INODE_AT..MSG_INODE_AT + 4].try_into().expect("4"));
    Sock {
        local: SocketAddr::new(ip(MSG_SRC_AT), port(4)),
        remote: SocketAddr::new(ip(MSG_DST_AT), port(6)),
        inode: u64::from(inode),
    }
}

/// A dump request for ESTABLISHED TCP sockets of `family` whose local or remote port is the
/// port of `end`, filtered in the kernel by a two-instruction bytecode.
fn request(seq: u32, family: u8, end: End) -> Vec<u8> {
    let (code, p) = match end {
        End::Local(a) => (INET_DIAG_BC_S_EQ, a.port()),
        End::Remote(a) => (INET_DIAG_BC_D_EQ, a.port()),
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
    m.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    m.extend_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    m.extend_from_slice(&[0; 48]); // socket id: unused by a dump
    m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    m.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    m.extend_from_slice(&bc);
    debug_assert_eq!(m.len(), total);
    m
}
