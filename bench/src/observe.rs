//! Observing the system from the outside, through the kernel rather than the gateway's own
//! counters: a process's resident memory and open descriptors (`/proc/PID/status`,
//! `/proc/PID/fd`), established TCP connections to a server and which of them a given process
//! holds (counted by `mongomux_testkit::sockets`, shared with the integration tests). Also the
//! descriptor limit of this process.
//!
//! What it owns: parsing those `/proc` files, and a background sampler that tracks the largest
//! value of such a count while a scenario runs.
//!
//! What it must never do: ask the gateway about itself (its metrics are what the figures check).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};
use mongomux_testkit::sockets::{self, End};

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

/// Established connections whose server side is 127.0.0.1:`port`: the connections a server
/// listening there sees (matched by full address, see [`mongomux_testkit::sockets`]).
pub fn established_to_port(port: u16) -> Result<usize> {
    sockets::count(End::Local(sockets::loopback(port))).context("count established sockets")
}

/// Established connections from process `pid` to 127.0.0.1:`port`: for the gateway and
/// FerretDB's port, the upstream connections the gateway holds.
pub fn established_from_pid(pid: u32, port: u16) -> Result<usize> {
    sockets::count_held_by(pid, sockets::loopback(port)).context("count a process's sockets")
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
