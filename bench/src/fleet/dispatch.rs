//! The dispatcher: the simulated fleet's front end, in the role of Lambda's invoke service.
//!
//! What it owns: the fleet's environments and their lifecycle decisions. Each arrival goes to
//! an idle (frozen) environment if there is one, the most recently used first, which thaws it;
//! otherwise (or when its wave is marked cold: requests in flight at once, see
//! [`super::shape`]) a new environment is created (a cold start), unless the fleet is at
//! `--max-envs`, in which case the invocation is throttled, as Lambda answers 429 past its
//! concurrency limit.
//! An environment idle for `--idle-timeout` is destroyed. Completions come back on a bounded
//! channel and are tallied into cold and warm latency histograms and an error count.
//!
//! Destruction is decided here, never by an environment's own timer, so an invocation can never
//! be sent to an environment that is tearing itself down. Threads for the cold starts a shape
//! asks for are started (parked) before the first arrival; see [`env::spawn`] for why.
//!
//! What it must never do: wait without a deadline. Each wave must complete within its last
//! arrival plus the invocation timeout plus a margin, and the fleet must be gone within the idle
//! timeout plus a margin after the last wave; otherwise the run fails with what was left.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;

use super::env::{self, Done, EnvConfig, Invocation};
use super::shape::Wave;
use crate::report::new_histogram;

/// Margin on every deadline: thread start-up and scheduling on a loaded two-core machine.
const MARGIN: Duration = Duration::from_secs(30);
/// How often idle environments are checked for expiry (and deadlines for breach).
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// Parked threads started ahead beyond a shape's cold waves, for the odd cold start of a warm
/// wave or a steady rate.
const SPARE_THREADS: usize = 32;
/// Distinct error messages kept; further distinct ones are only counted.
const MAX_DISTINCT_ERRORS: usize = 20;

/// The dispatcher's limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_envs: usize,
    pub idle_timeout: Duration,
    /// Between one wave's completion and the next wave's start.
    pub wave_gap: Duration,
    pub invocation_timeout: Duration,
}

/// What one run of the fleet did.
pub struct Outcome {
    pub invocations: u64,
    pub ok: u64,
    pub failed: u64,
    pub throttled: u64,
    /// Cold and warm invocations, failed ones included.
    pub cold_n: u64,
    pub warm_n: u64,
    /// Latencies (ns) of successful invocations.
    pub cold: Histogram<u64>,
    pub warm: Histogram<u64>,
    pub envs_created: u64,
    /// Distinct error messages and how often each occurred.
    pub errors: BTreeMap<String, u64>,
    /// Errors whose message was not kept (beyond [`MAX_DISTINCT_ERRORS`]).
    pub errors_unlisted: u64,
    /// When the last invocation completed, in ms since the first arrival.
    pub last_done_ms: i64,
    /// How late the dispatcher handed out an arrival, at worst.
    pub max_dispatch_lag: Duration,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            invocations: 0,
            ok: 0,
            failed: 0,
            throttled: 0,
            cold_n: 0,
            warm_n: 0,
            cold: new_histogram(),
            warm: new_histogram(),
            envs_created: 0,
            errors: BTreeMap::new(),
            errors_unlisted: 0,
            last_done_ms: 0,
            max_dispatch_lag: Duration::ZERO,
        }
    }

    fn error(&mut self, msg: String) {
        self.failed += 1;
        if self.errors.len() < MAX_DISTINCT_ERRORS || self.errors.contains_key(&msg) {
            *self.errors.entry(msg).or_default() += 1;
        } else {
            self.errors_unlisted += 1;
        }
    }

    fn record(&mut self, d: &Done, origin: Instant) {
        if d.cold {
            self.cold_n += 1;
        } else {
            self.warm_n += 1;
        }
        match &d.error {
            None => {
                self.ok += 1;
                let h = if d.cold {
                    &mut self.cold
                } else {
                    &mut self.warm
                };
                h.saturating_record((d.latency.as_nanos() as u64).max(1));
            }
            Some(e) => self.error(e.clone()),
        }
        self.last_done_ms = origin.elapsed().as_millis() as i64;
    }
}

/// The fleet: a sender per live environment, the idle ones in the order they became idle
/// (oldest first), and parked threads waiting to become environments.
pub struct Fleet {
    cfg: Arc<EnvConfig>,
    limits: Limits,
    senders: HashMap<u64, SyncSender<Invocation>>,
    idle: VecDeque<(u64, Instant)>,
    parked: Vec<(u64, SyncSender<Invocation>)>,
    next_id: u64,
    out: Outcome,
}

/// Where an arrival went.
enum Routed {
    Sent,
    Throttled,
    Failed(String),
}

impl Fleet {
    /// An empty fleet, with threads parked for the cold starts of `waves`.
    pub fn new(cfg: Arc<EnvConfig>, limits: Limits, waves: &[Wave]) -> Result<Fleet> {
        let cold: usize = waves
            .iter()
            .filter(|w| w.cold)
            .map(|w| w.offsets.len())
            .sum();
        let mut fleet = Fleet {
            cfg,
            senders: HashMap::new(),
            idle: VecDeque::new(),
            parked: Vec::new(),
            next_id: 0,
            out: Outcome::new(),
            limits,
        };
        for _ in 0..(cold + SPARE_THREADS).min(fleet.limits.max_envs) {
            let id = fleet.new_id();
            let tx = env::spawn(id, fleet.cfg.clone())?;
            fleet.parked.push((id, tx));
        }
        Ok(fleet)
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    fn route(&mut self, inv: Invocation, cold: bool) -> Routed {
        // Most recently used first, as warm environments are preferred; the least recently
        // used are left to expire.
        while let Some((id, _)) = if cold { None } else { self.idle.pop_back() } {
            let Some(tx) = self.senders.get(&id) else {
                continue;
            };
            match tx.try_send(inv) {
                Ok(()) => return Routed::Sent,
                // The thread ended (its runtime failed to build): forget it, try the next.
                Err(TrySendError::Disconnected(_)) | Err(TrySendError::Full(_)) => {
                    self.senders.remove(&id);
                }
            }
        }
        if self.senders.len() >= self.limits.max_envs {
            return Routed::Throttled;
        }
        let (id, tx) = match self.parked.pop() {
            Some(p) => p,
            None => {
                let id = self.new_id();
                match env::spawn(id, self.cfg.clone()) {
                    Ok(tx) => (id, tx),
                    Err(e) => return Routed::Failed(format!("{e:#}")),
                }
            }
        };
        if tx.try_send(inv).is_err() {
            return Routed::Failed("a parked environment thread ended".into());
        }
        self.senders.insert(id, tx);
        self.out.envs_created += 1;
        Routed::Sent
    }

    /// Destroy environments idle for the idle timeout or longer: dropping the sender ends the
    /// thread.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(id, since)) = self.idle.front() {
            if now.duration_since(since) < self.limits.idle_timeout {
                break;
            }
            self.idle.pop_front();
            self.senders.remove(&id);
        }
    }

    /// Run the waves starting at `origin` (the first arrival), then let the idle timeout
    /// destroy every environment and wait for all threads to end.
    pub async fn run(
        mut self,
        mut done_rx: tokio::sync::mpsc::Receiver<Done>,
        waves: &[Wave],
        origin: Instant,
    ) -> Result<Outcome> {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut in_flight = 0u64;
        let mut seq = 0u64;
        for (w, wave) in waves.iter().enumerate() {
            let wave_start = if w == 0 {
                origin
            } else {
                Instant::now() + self.limits.wave_gap
            };
            let offsets = &wave.offsets;
            let last = offsets.last().copied().unwrap_or_default();
            let deadline = wave_start + last + self.limits.invocation_timeout + MARGIN;
            let mut i = 0;
            while i < offsets.len() || in_flight > 0 {
                let next_at = offsets.get(i).map(|d| wave_start + *d);
                let wake = tokio::time::Instant::from_std(next_at.unwrap_or(deadline));
                tokio::select! {
                    Some(d) = done_rx.recv() => {
                        in_flight = in_flight.saturating_sub(1);
                        self.out.record(&d, origin);
                        self.idle.push_back((d.env, Instant::now()));
                    }
                    _ = tokio::time::sleep_until(wake), if next_at.is_some() => {
                        let now = Instant::now();
                        while let Some(at) = offsets.get(i).map(|d| wave_start + *d) {
                            if at > now {
                                break;
                            }
                            let lag = &mut self.out.max_dispatch_lag;
                            *lag = (*lag).max(now - at);
                            self.out.invocations += 1;
                            let inv = Invocation { seq, scheduled: at };
                            seq += 1;
                            i += 1;
                            match self.route(inv, wave.cold) {
                                Routed::Sent => in_flight += 1,
                                Routed::Throttled => self.out.throttled += 1,
                                Routed::Failed(e) => self.out.error(e),
                            }
                        }
                    }
                    _ = sweep.tick() => {
                        self.expire();
                        if Instant::now() > deadline {
                            bail!(
                                "wave {} of {}: {in_flight} invocation(s) still running {:?} \
                                 after the last arrival (invocation timeout {:?})",
                                w + 1,
                                waves.len(),
                                last + self.limits.invocation_timeout + MARGIN,
                                self.limits.invocation_timeout
                            );
                        }
                    }
                }
            }
        }
        self.scale_in(&mut sweep).await?;
        Ok(self.out)
    }

    /// Frozen environments keep their connections until the idle timeout ends them; unused
    /// parked threads end at once. Waits until every thread is gone.
    async fn scale_in(&mut self, sweep: &mut tokio::time::Interval) -> Result<()> {
        self.parked.clear();
        let gauges = self.cfg.gauges.clone();
        let deadline = Instant::now() + self.limits.idle_timeout + MARGIN;
        while !self.senders.is_empty() || gauges.threads.load(Ordering::Relaxed) > 0 {
            sweep.tick().await;
            self.expire();
            if Instant::now() > deadline {
                bail!(
                    "{} environment thread(s) not ended {:?} after the last invocation",
                    gauges.threads.load(Ordering::Relaxed),
                    self.limits.idle_timeout + MARGIN
                );
            }
        }
        Ok(())
    }
}
