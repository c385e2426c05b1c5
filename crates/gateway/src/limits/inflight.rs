//! The in-flight byte budget (`max_inflight_bytes`): how many bytes of client requests and of
//! replies waiting for their client the gateway holds at once, over all connections.
//!
//! Without it, memory is bounded only by `max_clients` times the largest message: 150 clients
//! that each declare a 16 MiB message and send all but its last byte hold 2.4 GiB. With it, a
//! connection whose next message is large must take that many bytes from the budget *before*
//! its body is read or its buffer grows; while the budget is spent the connection simply is not
//! read (back-pressure through TCP, not allocation), and the message deadline closes whoever
//! waits too long. A reply is counted while its upstream connection is still held, so a client
//! that does not read its replies holds budget, not unbounded memory.
//!
//! Small messages (at most [`SMALL`] bytes, which is nearly every command and reply) never wait:
//! each connection may hold one without the budget, so handshakes, logins and ordinary commands
//! keep flowing while large ones queue. That allowance is bounded by `max_clients`.
//!
//! # Concurrency note
//! The budget is a tokio semaphore counted in bytes; a permit gives its bytes back when dropped,
//! whatever path the request took (reply written, error, client gone, task cancelled).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Gauge;

/// Messages and replies up to this size are held without taking from the budget.
pub const SMALL: usize = 16 * 1024;

/// The budget shared by every client connection.
#[derive(Debug, Clone)]
pub struct InflightBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    gauge: Gauge,
}

/// Bytes taken from the budget; returned when dropped.
#[derive(Debug)]
pub struct InflightPermit {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
    gauge: Gauge,
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes as i64);
    }
}

/// Why bytes could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetRefusal {
    /// More than the whole budget: it could never be granted.
    Exceeds {
        /// The budget's size.
        total: usize,
    },
    /// The budget stayed spent until the deadline.
    TimedOut,
}

impl InflightBudget {
    /// A budget of `total` bytes whose use is shown by `gauge`.
    pub fn new(total: usize, gauge: Gauge) -> InflightBudget {
        InflightBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
            gauge,
        }
    }

    /// The budget's size.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Takes `bytes` from the budget, waiting until `deadline` for them to be free. Small
    /// amounts need no permit (`None`).
    pub async fn take(
        &self,
        bytes: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Option<InflightPermit>, BudgetRefusal> {
        if bytes <= SMALL {
            return Ok(None);
        }
        if bytes > self.total {
            return Err(BudgetRefusal::Exceeds { total: self.total });
        }
        // Bounded by `total`, itself at most a few GiB (validated), so it fits in u32.
        let n = u32::try_from(bytes).map_err(|_| BudgetRefusal::Exceeds { total: self.total })?;
        let acquired =
            tokio::time::timeout_at(deadline, self.bytes.clone().acquire_many_owned(n)).await;
        match acquired {
            Ok(Ok(permit)) => {
                self.gauge.add(bytes as i64);
                Ok(Some(InflightPermit {
                    _permit: permit,
                    bytes,
                    gauge: self.gauge.clone(),
                }))
            }
            // The semaphore is never closed; treat it as spent.
            Ok(Err(_)) | Err(_) => Err(BudgetRefusal::TimedOut),
        }
    }

    /// Bytes free now (for tests and the status view).
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    fn budget(total: usize) -> InflightBudget {
        InflightBudget::new(total, Gauge::new("g", "g").unwrap())
    }

    #[tokio::test]
    async fn small_amounts_never_wait() {
        let b = budget(SMALL * 2);
        let _big = b.take(SMALL * 2, Instant::now()).await.unwrap();
        assert_eq!(b.available(), 0);
        assert!(b.take(SMALL, Instant::now()).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_makes_large_messages_wait_until_bytes_return() {
        let b = budget(100_000);
        let first = b.take(60_000, Instant::now()).await.unwrap();
        assert_eq!(b.gauge.get(), 60_000);
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(
            b.take(60_000, soon).await.unwrap_err(),
            BudgetRefusal::TimedOut
        );
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                b.take(60_000, Instant::now() + Duration::from_secs(5))
                    .await
                    .map(|p| p.is_some())
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(true));
        assert_eq!(
            b.gauge.get(),
            0,
            "the waiter's permit was dropped with its task"
        );
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let b = budget(100_000);
        assert_eq!(
            b.take(100_001, Instant::now()).await.unwrap_err(),
            BudgetRefusal::Exceeds { total: 100_000 }
        );
    }
}
