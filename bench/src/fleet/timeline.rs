//! The fleet's timeline: what the upstream saw, sampled from the kernel, next to what the fleet
//! was doing.
//!
//! What it owns: the gauges the dispatcher and the environments update (environments alive,
//! busy, invocations completed) and a background thread that samples them every few tens of
//! milliseconds together with the established connections to the upstream's port
//! (`/proc/net/tcp`, via [`crate::observe`]) and, in gateway mode, the upstream connections the
//! gateway process holds. Peak and average connections are computed from these samples.
//!
//! What it must never do: ask the gateway or the drivers how many connections they have; the
//! count comes from outside, so a gateway that over-opens or a driver that leaks is seen.
//! Sampling runs on its own OS thread so a busy tokio runtime cannot delay it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::observe::{established_from_pid, established_to_port};

/// Counters shared by the dispatcher, the environment threads and the sampler.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Environment threads started and not yet torn down (their runtime and client dropped).
    pub alive: AtomicUsize,
    /// Environments running an invocation now.
    pub busy: AtomicUsize,
    /// Invocations finished, successfully or not.
    pub completed: AtomicU64,
}

/// One sample of the timeline.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Milliseconds since the first arrival (negative before it).
    pub t_ms: i64,
    /// Established connections to the upstream's port: every connection FerretDB has.
    pub upstream: usize,
    /// Upstream connections held by the gateway process (gateway mode only).
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
                let mut samples = Vec::new();
                let mut next = Instant::now();
                while !s.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    let t_ms = if now >= origin {
                        (now - origin).as_millis() as i64
                    } else {
                        -((origin - now).as_millis() as i64)
                    };
                    // A failed read (a socket closing mid-read) skips the sample, never zeroes it.
                    if let Ok(upstream) = established_to_port(upstream_port) {
                        let gateway_upstream =
                            gateway_pid.and_then(|p| established_from_pid(p, upstream_port).ok());
                        samples.push(Sample {
                            t_ms,
                            upstream,
                            gateway_upstream,
                            alive: gauges.alive.load(Ordering::Relaxed),
                            busy: gauges.busy.load(Ordering::Relaxed),
                            completed: gauges.completed.load(Ordering::Relaxed),
                        });
                    }
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
