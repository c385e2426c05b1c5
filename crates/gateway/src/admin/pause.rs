//! Pausing forwarding, as PgBouncer's `PAUSE`/`RESUME`: while paused, requests that would go
//! upstream wait at the gate (the gateway keeps answering handshakes and pings, so drivers keep
//! their connections), each for at most the pause's `max_wait`, after which it is answered with
//! a retryable error and was never sent. A statement of a transaction already running passes,
//! so transactions can finish and their pinned connections come back, as PgBouncer lets them.
//!
//! Waiting requests are bounded by the client limit (one request in flight per connection).
//! The open path costs one relaxed load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

/// A pause in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// When it started.
    pub since: SystemTime,
    /// How long each request waits at most.
    pub max_wait: Duration,
}

/// The gate.
#[derive(Debug)]
pub struct PauseGate {
    paused: AtomicBool,
    state: watch::Sender<Option<Pause>>,
    waiting: AtomicUsize,
}

impl Default for PauseGate {
    fn default() -> Self {
        PauseGate {
            paused: AtomicBool::new(false),
            state: watch::channel(None).0,
            waiting: AtomicUsize::new(0),
        }
    }
}

/// A request that waited out the pause's whole `max_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StillPaused(pub Duration);

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PauseGate {
    /// Pauses (or changes a pause's `max_wait`, keeping its start); returns the pause in force
    /// before, if any.
    pub fn pause(&self, max_wait: Duration) -> Option<Pause> {
        let before = *self.state.borrow();
        let since = before.map_or_else(SystemTime::now, |p| p.since);
        self.state.send_replace(Some(Pause { since, max_wait }));
        self.paused.store(true, Ordering::Release);
        before
    }

    /// Resumes; returns the pause that ended, if there was one. Waiting requests go on at once.
    pub fn resume(&self) -> Option<Pause> {
        self.paused.store(false, Ordering::Release);
        self.state.send_replace(None)
    }

    /// Whether forwarding is paused (one relaxed load).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// The pause in force.
    pub fn current(&self) -> Option<Pause> {
        *self.state.borrow()
    }

    /// Requests waiting at the gate now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Returns at once when not paused; else waits for the resume, at most the pause's
    /// `max_wait` (as in force when the wait began).
    pub async fn pass(&self) -> Result<(), StillPaused> {
        if !self.paused.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut rx = self.state.subscribe();
        let Some(pause) = *rx.borrow_and_update() else {
            return Ok(());
        };
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        let deadline = Instant::now() + pause.max_wait;
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() || rx.borrow_and_update().is_none() {
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Err(StillPaused(pause.max_wait)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn requests_wait_for_resume_or_their_bound() {
        let gate = Arc::new(PauseGate::default());
        assert_eq!(gate.pass().await, Ok(()));
        assert_eq!(gate.pause(Duration::from_secs(5)), None);
        let first = gate.current().unwrap();
        // Pausing again keeps the start and changes the bound.
        assert_eq!(gate.pause(Duration::from_secs(10)), Some(first));

        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.pass().await })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(gate.waiting(), 1);
        assert!(gate.resume().is_some());
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(gate.waiting(), 0);

        gate.pause(Duration::from_secs(2));
        let started = Instant::now();
        assert_eq!(gate.pass().await, Err(StillPaused(Duration::from_secs(2))));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(gate.waiting(), 0);
    }
}
