//! The fleet's timeline: what the upstream saw, sampled from the kernel, next to what the fleet
//! was doing.
//!
//! What it owns: the gauges the dispatcher and the environments update (environments alive,
//! busy, invocations completed) and a background thread that samples them every ~100 ms
//! together with the established connections to the upstream's port (from the kernel's socket
//! diagnostics, or `/proc/net/tcp` where netlink is unavailable, both from
//! `mongomux_testkit::sockets`) and, in gateway mode, the upstream connections the gateway process holds. Peak
//! and average connections are computed from these samples.
//!
//! What it must never do: ask the gateway or the drivers how many connections they have; the
//! count comes from outside, so a gateway that over-opens or a driver that leaks is seen.
//! Sampling runs on its own OS thread so a busy tokio runtime cannot delay it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use mongomux_testkit::sockets::{self, loopback, socket_inodes, End, Sock, SockDiag};

/// Counters shared by the dispatcher, the environment threads and the sampler.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Environments created (cold started) and not yet torn down (runtime and client dropped).
    pub alive: AtomicUsize,
    /// Environment threads, parked ones started ahead of a burst included.
    pub threads: AtomicUsize,
    /// Environments running an invocation now.
    pub busy: AtomicUsize,
    /// Invocations finished, successfully or not.
    pub completed: AtomicU64,
}

/// Every how many samples the gateway's own upstream connections are counted too: it reads
/// every descriptor link of a process holding thousands of client sockets, and it is only a
/// cross-check (in gateway mode every connection to the upstream is the gateway's).
const GATEWAY_EVERY: u64 = 5;

/// One sample of the timeline.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Milliseconds since the first arrival (negative before it), when the sample was taken.
    pub t_ms: i64,
    /// Established connections to the upstream's port: every connection FerretDB has.
    pub upstream: usize,
    /// Upstream connections held by the gateway process (gateway mode, every
    /// [`GATEWAY_EVERY`]th sample).
    pub gateway_upstream: Option<usize>,
    pub alive: usize,
    pub busy: usize,
    pub completed: u64,
}

/// Samples on a background thread until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    /// Start sampling connections to `upstream_port` (and from `gateway_pid` to it, if given)
    /// every `every`; times are relative to `origin`, the first arrival.
    pub fn start(
        every: Duration,
        origin: Instant,
        upstream_port: u16,
        gateway_pid: Option<u32>,
        gauges: Arc<Gauges>,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("fleet-sampler".into())
            .spawn(move || {
                let mut counter = Counter::new();
                let mut samples = Vec::new();
                let mut next = Instant::now();
                // Samples until the next gateway count.
                let mut until_gateway = 0u64;
                while !s.load(Ordering::Relaxed) {
                    // A failed read (a socket closing mid-read) skips the sample, never zeroes it.
                    if let Ok(upstream) = counter.upstream(upstream_port) {
                        let gateway_upstream = gateway_pid
                            .filter(|_| until_gateway == 0)
                            .and_then(|p| counter.held_by(p, upstream_port).ok());
                        // Stamped after the reads, which take a while with thousands of sockets,
                        // and with the gauges read at the same moment.
                        let now = Instant::now();
                        let t_ms = if now >= origin {
                            (now - origin).as_millis() as i64
                        } else {
                            -((origin - now).as_millis() as i64)
                        };
                        samples.push(Sample {
                            t_ms,
                            upstream,
                            gateway_upstream,
                            alive: gauges.alive.load(Ordering::Relaxed),
                            busy: gauges.busy.load(Ordering::Relaxed),
                            completed: gauges.completed.load(Ordering::Relaxed),
                        });
                    }
                    until_gateway = until_gateway.checked_sub(1).unwrap_or(GATEWAY_EVERY - 1);
                    // A fixed schedule, not a fixed pause: a slow read (many sockets) does not
                    // stretch the interval, and a late sampler catches up without bursts.
                    next += every;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
                samples
            })
            .expect("spawn the fleet sampler thread");
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stop sampling and return the samples.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("fleet sampler panicked"))
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// How connections are counted: netlink where it works, `/proc` otherwise.
enum Counter {
    Diag(SockDiag),
    Proc,
}

impl Counter {
    fn new() -> Counter {
        match SockDiag::open() {
            Ok(d) => Counter::Diag(d),
            Err(e) => {
                eprintln!(
                    "    note: sock_diag: {e}; counting connections from /proc/net/tcp instead"
                );
                Counter::Proc
            }
        }
    }

    fn established(&mut self, end: End) -> Result<Vec<Sock>> {
        Ok(match self {
            Counter::Diag(d) => d.established(end)?,
            Counter::Proc => sockets::proc_established(end)?,
        })
    }

    /// Established connections whose server side is 127.0.0.1:`port`: the larger of two
    /// reads (a read can skip a socket that moved in the kernel's table, never invent one).
    fn upstream(&mut self, port: u16) -> Result<usize> {
        let server = End::Local(loopback(port));
        let a = self.established(server)?.len();
        Ok(a.max(self.established(server)?.len()))
    }

    /// Established connections from process `pid` to 127.0.0.1:`port`.
    fn held_by(&mut self, pid: u32, port: u16) -> Result<usize> {
        let mine = socket_inodes(pid)?;
        let mut best = 0;
        for _ in 0..2 {
            let socks = self.established(End::Remote(loopback(port)))?;
            best = best.max(socks.iter().filter(|s| mine.contains(&s.inode)).count());
        }
        Ok(best)
    }
}

/// Peak and average of upstream connections over the samples in `[from_ms, to_ms]`, and the
/// gateway's peak; the peak is taken over all samples.
pub struct ConnStats {
    pub peak: usize,
    pub avg: f64,
    pub gateway_peak: Option<usize>,
}

pub fn conn_stats(samples: &[Sample], from_ms: i64, to_ms: i64) -> ConnStats {
    let window: Vec<usize> = samples
        .iter()
        .filter(|s| s.t_ms >= from_ms && s.t_ms <= to_ms)
        .map(|s| s.upstream)
        .collect();
    let avg = if window.is_empty() {
        0.0
    } else {
        window.iter().sum::<usize>() as f64 / window.len() as f64
    };
    ConnStats {
        peak: samples.iter().map(|s| s.upstream).max().unwrap_or(0),
        avg,
        gateway_peak: samples.iter().filter_map(|s| s.gateway_upstream).max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_ms: i64, upstream: usize) -> Sample {
        Sample {
            t_ms,
            upstream,
            gateway_upstream: None,
            alive: 0,
            busy: 0,
            completed: 0,
        }
    }

    #[test]
    fn peak_over_all_samples_average_over_the_window() {
        let s = [
            sample(-100, 0),
            sample(0, 4),
            sample(100, 8),
            sample(5000, 20),
        ];
        let c = conn_stats(&s, 0, 100);
        assert_eq!(c.peak, 20);
        assert!((c.avg - 6.0).abs() < 1e-9);
        assert_eq!(c.gateway_peak, None);
    }
}
