//! Counting ESTABLISHED TCP sockets by local port through the kernel's sock_diag netlink
//! interface (what `ss -tn state established '( sport = :P )'` uses).
//!
//! Why not only /proc/net/tcp: with 1,000 driver clients there are over 20,000 sockets on the
//! machine, and every read of /proc/net/tcp formats all of them (megabytes of text). Sampled
//! every few milliseconds that alone took most of a core on a 2-core machine and slowed the test
//! it was watching. With a bytecode filter the kernel returns only the matching sockets.
//! [`super::established_to_port_proc`] stays as the plain reference, and tests compare the two.
//!
//! Layouts: include/uapi/linux/netlink.h, sock_diag.h, inet_diag.h.

use std::io;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x100 | 0x200;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;
const TCP_ESTABLISHED: u32 = 1;
const NLMSG_HDRLEN: usize = 16;

/// Closes the netlink socket on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this struct owns, once.
        unsafe { libc::close(self.0) };
    }
}

/// ESTABLISHED TCP sockets (IPv4 and IPv6) whose local port is `port`.
pub fn established_with_local_port(port: u16) -> io::Result<usize> {
    established_with_local_port_in(port, &[libc::AF_INET, libc::AF_INET6])
}

/// Like [`established_with_local_port`], for the given address families only. Each family costs
/// a walk of the kernel's whole TCP hash table (milliseconds), so a sampler watching a server
/// that listens on 127.0.0.1 asks for `AF_INET` alone.
pub fn established_with_local_port_in(port: u16, families: &[libc::c_int]) -> io::Result<usize> {
    // SAFETY: plain socket(2); the result is checked.
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
    let fd = Fd(fd);
    let mut total = 0;
    for (seq, family) in families.iter().enumerate() {
        total += dump(&fd, seq as u32 + 1, *family as u8, port)?;
    }
    Ok(total)
}

fn dump(fd: &Fd, seq: u32, family: u8, port: u16) -> io::Result<usize> {
    // Bytecode "sport >= port && sport <= port", as ss builds it: each comparison is two 4-byte
    // ops (the second carries the port in its `no` field); `yes` jumps to the next comparison,
    // `no` jumps past the end, which rejects.
    let mut bc = Vec::with_capacity(16);
    for (code, no) in [(INET_DIAG_BC_S_GE, 20u16), (INET_DIAG_BC_S_LE, 12u16)] {
        bc.extend_from_slice(&[code, 8]);
        bc.extend_from_slice(&no.to_ne_bytes());
        bc.extend_from_slice(&[0, 0]);
        bc.extend_from_slice(&port.to_ne_bytes());
    }
    let mut req = Vec::with_capacity(92);
    let len = (NLMSG_HDRLEN + 56 + 4 + bc.len()) as u32;
    req.extend_from_slice(&len.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed sockid (48).
    req.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    // struct rtattr + bytecode
    req.extend_from_slice(&((4 + bc.len()) as u16).to_ne_bytes());
    req.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    req.extend_from_slice(&bc);
    debug_assert_eq!(req.len(), len as usize);

    // SAFETY: the buffer is valid for its length.
    let sent = unsafe { libc::send(fd.0, req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut count = 0;
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut off = 0;
        let n = n as usize;
        while off + NLMSG_HDRLEN <= n {
            let msg_len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let msg_type = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            let msg_seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
            if msg_len < NLMSG_HDRLEN || off + msg_len > n {
                return Err(io::Error::other("truncated netlink message"));
            }
            if msg_seq == seq {
                match msg_type {
                    NLMSG_DONE => return Ok(count),
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(
                            buf[off + NLMSG_HDRLEN..off + NLMSG_HDRLEN + 4]
                                .try_into()
                                .unwrap(),
                        );
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    SOCK_DIAG_BY_FAMILY => count += 1,
                    _ => {}
                }
            }
            off += (msg_len + 3) & !3;
        }
    }
}
