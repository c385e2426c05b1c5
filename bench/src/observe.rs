//! Observing the system from the outside, through the kernel rather than the gateway's own
//! counters: a process's resident memory and open descriptors (`/proc/PID/status`,
//! `/proc/PID/fd`), established TCP connections to a port (`/proc/net/tcp{,6}`), and which of
//! those sockets a given process holds. Also the descriptor limit of this process.
//!
//! What it owns: parsing those `/proc` files, and a background sampler that tracks the largest
//! value of such a count while a scenario runs.
//!
//! What it must never do: ask the gateway about itself (its metrics are what the figures check).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};

/// Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX).context("raise RLIMIT_NOFILE")
}

/// Resident set size of `pid` in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")
}

/// Number of open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Socket inodes held by `pid` (targets of its `/proc/PID/fd` links that read `socket:[N]`).
pub fn socket_inodes(pid: u32) -> Result<HashSet<u64>> {
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

/// One row of `/proc/net/tcp{,6}`: local and remote ports, state, inode.
struct TcpRow {
    local_port: u16,
    remote_port: u16,
    /// Whether each end's address is 127.0.0.1, where every server a scenario starts listens.
    /// Ports alone are ambiguous: a client bound to another loopback source (127.0.0.33, say)
    /// may get an ephemeral port equal to a server's port on 127.0.0.1.
    local_is_server_ip: bool,
    remote_is_server_ip: bool,
    established: bool,
    inode: u64,
}

fn port_of(addr: &str) -> Option<u16> {
    u16::from_str_radix(addr.rsplit(':').next()?, 16).ok()
}

/// Whether a `/proc/net/tcp{,6}` address is 127.0.0.1 (IPv4, or IPv4-mapped in the IPv6 table;
/// the kernel prints the address bytes in host order: 127.0.0.1 is `0100007F`).
fn is_server_ip(addr: &str) -> bool {
    addr.split(':')
        .next()
        .is_some_and(|ip| ip == "0100007F" || ip == "0000000000000000FFFF00000100007F")
}

/// The rows of `/proc/net/tcp{,6}`, each socket once.
///
/// # Concurrency note
/// The kernel prints these files a page at a time, walking its socket hash table between reads;
/// sockets opened or closed meanwhile (by any process on a shared machine) shift the walk, so a
/// row can be printed twice or skipped. Rows are therefore de-duplicated by inode (every socket
/// a process holds has a distinct one), so a count is never inflated; see [`established_to_port`]
/// for the other half.
fn tcp_rows() -> Result<Vec<TcpRow>> {
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // no IPv6 on this machine
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Some(local_port), Some(remote_port)) = (port_of(f[1]), port_of(f[2])) else {
                continue;
            };
            let inode = f[9].parse().unwrap_or(0);
            // Inode 0: a socket no process holds any more (e.g. TIME_WAIT); never established.
            if inode != 0 && !seen.insert(inode) {
                continue;
            }
            rows.push(TcpRow {
                local_port,
                remote_port,
                local_is_server_ip: is_server_ip(f[1]),
                remote_is_server_ip: is_server_ip(f[2]),
                established: f[3] == "01", // TCP_ESTABLISHED
                inode,
            });
        }
    }
    Ok(rows)
}

/// Reads of the TCP tables per count; the count is the largest, since a row can be skipped by
/// one read (see [`tcp_rows`]) but not invented once rows are de-duplicated.
const READS_PER_COUNT: usize = 2;

fn count_rows(keep: impl Fn(&TcpRow) -> bool) -> Result<usize> {
    let mut best = 0;
    for _ in 0..READS_PER_COUNT {
        best = best.max(tcp_rows()?.iter().filter(|r| keep(r)).count());
    }
    Ok(best)
}

/// Established connections whose server side is 127.0.0.1:`port`: the connections a server
/// listening there sees.
pub fn established_to_port(port: u16) -> Result<usize> {
    count_rows(|r| r.established && r.local_is_server_ip && r.local_port == port)
}

/// Established connections from process `pid` to 127.0.0.1:`port`: for the gateway and
/// FerretDB's port, the upstream connections the gateway holds.
pub fn established_from_pid(pid: u32, port: u16) -> Result<usize> {
    let inodes = socket_inodes(pid)?;
    count_rows(|r| {
        r.established && r.remote_is_server_ip && r.remote_port == port && inodes.contains(&r.inode)
    })
}

/// Samples a count on a background thread every `every` and keeps the largest value seen, so a
/// short excursion between two explicit measurements is not missed.
pub struct MaxSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl MaxSampler {
    pub fn start<F>(every: Duration, mut sample: F) -> MaxSampler
    where
        F: FnMut() -> Result<usize> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // A failed sample (a descriptor closing mid-read, say) is skipped, not counted.
                if let Ok(v) = sample() {
                    m.fetch_max(v as u64, Ordering::Relaxed);
                }
                std::thread::sleep(every);
            }
        });
        MaxSampler {
            stop,
            max,
            handle: Some(handle),
        }
    }

    /// Largest value seen so far.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for MaxSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_of_proc_net_tcp_addresses() {
        assert_eq!(port_of("0100007F:1F90"), Some(8080));
        assert_eq!(
            port_of("00000000000000000000000001000000:6989"),
            Some(0x6989)
        );
        assert_eq!(port_of("garbage"), None);
    }

    #[test]
    fn tells_the_servers_address_from_other_loopback_sources() {
        assert!(is_server_ip("0100007F:1F90"));
        assert!(is_server_ip("0000000000000000FFFF00000100007F:1F90"));
        // 127.0.0.33, a client source that may share a server's port number.
        assert!(!is_server_ip("2100007F:1F90"));
    }

    #[test]
    fn reads_own_rss_and_sees_own_listener() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        assert_eq!(established_to_port(port).unwrap(), 1);
        assert_eq!(established_from_pid(pid, port).unwrap(), 1);
    }
}
