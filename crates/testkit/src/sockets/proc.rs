//! ESTABLISHED sockets from `/proc/net/tcp` and `/proc/net/tcp6`: the plain reference reader.
//! It formats every socket of the network namespace on every read, so it is slow with many;
//! [`super::SockDiag`] is the one to sample with.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{keep_matching, End, Sock};

/// `TCP_ESTABLISHED` as these files print it.
const ESTABLISHED: &str = "01";

/// ESTABLISHED sockets matching `end`, each once.
pub fn proc_established(end: End) -> io::Result<Vec<Sock>> {
    let mut socks = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // no IPv6 here
            Err(e) => return Err(e),
        };
        socks.extend(text.lines().skip(1).filter_map(parse_row));
    }
    Ok(keep_matching(end, socks))
}

/// One row: `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`.
fn parse_row(line: &str) -> Option<Sock> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || f[3] != ESTABLISHED {
        return None;
    }
    Some(Sock {
        local: parse_addr(f[1])?,
        remote: parse_addr(f[2])?,
        inode: f[9].parse().ok()?,
    })
}

/// `HEXADDR:HEXPORT`; the address is printed as 32-bit words in host byte order (127.0.0.1 is
/// `0100007F` on x86), the port as a plain number.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_addresses_as_the_kernel_prints_them() {
        assert_eq!(
            parse_addr("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_addr("2100007F:1F90"),
            Some("127.0.0.33:8080".parse().unwrap())
        );
        assert_eq!(
            parse_addr("0000000000000000FFFF00000100007F:6989"),
            Some("[::ffff:127.0.0.1]:27017".parse().unwrap())
        );
        assert_eq!(
            parse_addr("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_addr("garbage"), None);
    }
}
