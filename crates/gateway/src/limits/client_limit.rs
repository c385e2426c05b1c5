//! The client limit (`max_clients`): how many client connections are served at once.
//!
//! Owns both numbers drain and admission depend on, the current total and how many permits are
//! held, in one place, so a reload that changes the total can never make them disagree. A
//! [`ClientPermit`] travels with each session task and is returned when it drops; "no permit
//! held" is what drain waits for, whatever the total is now. Lowering the total below what is
//! held refuses new clients until enough have left; nobody is cut off.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy)]
struct Count {
    held: usize,
    total: usize,
}

/// The client limit. Clones share one count.
#[derive(Debug, Clone)]
pub struct ClientLimit {
    count: Arc<watch::Sender<Count>>,
}

/// One admitted client; returns its place when dropped.
#[derive(Debug)]
pub struct ClientPermit {
    count: Arc<watch::Sender<Count>>,
}

impl ClientLimit {
    /// A limit of `total` clients, none admitted yet.
    pub fn new(total: usize) -> ClientLimit {
        ClientLimit {
            count: Arc::new(watch::Sender::new(Count { held: 0, total })),
        }
    }

    /// Admits one client if the limit allows.
    pub fn try_acquire(&self) -> Option<ClientPermit> {
        let admitted = self.count.send_if_modified(|c| {
            let room = c.held < c.total;
            if room {
                c.held += 1;
            }
            room
        });
        admitted.then(|| ClientPermit {
            count: self.count.clone(),
        })
    }

    /// Changes the limit. Clients already admitted stay, even above a lower total.
    pub fn set_total(&self, total: usize) {
        self.count.send_if_modified(|c| {
            let changed = c.total != total;
            c.total = total;
            changed
        });
    }

    /// The current limit.
    pub fn total(&self) -> usize {
        self.count.borrow().total
    }

    /// Clients admitted and not yet gone.
    pub fn held(&self) -> usize {
        self.count.borrow().held
    }

    /// Resolves when no client holds a permit.
    pub async fn all_released(&self) {
        let mut rx = self.count.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = rx.wait_for(|c| c.held == 0).await;
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        self.count.send_modify(|c| c.held -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn admits_up_to_the_total() {
        let limit = ClientLimit::new(2);
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert_eq!(limit.held(), 1);
        assert!(limit.try_acquire().is_some());
    }

    #[test]
    fn shrinking_keeps_admitted_clients_and_refuses_until_below() {
        let limit = ClientLimit::new(3);
        let held: Vec<_> = (0..3).map(|_| limit.try_acquire().unwrap()).collect();
        limit.set_total(1);
        assert_eq!(limit.held(), 3);
        assert!(limit.try_acquire().is_none());
        drop(held);
        assert_eq!(limit.held(), 0);
        let _one = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
    }

    #[test]
    fn growing_admits_more_at_once() {
        let limit = ClientLimit::new(1);
        let _a = limit.try_acquire().unwrap();
        limit.set_total(3);
        assert_eq!(limit.total(), 3);
        let _b = limit.try_acquire().unwrap();
        let _c = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
    }

    /// The reload/drain bug: drain once waited for "all of the configured total back", which a
    /// reload could move away from what the admission count was built with.
    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_holders_whatever_the_total_became() {
        for new_total in [1, 2, 100] {
            let limit = ClientLimit::new(2);
            let a = limit.try_acquire().unwrap();
            let b = limit.try_acquire().unwrap();
            limit.set_total(new_total);
            let drained = tokio::spawn({
                let limit = limit.clone();
                async move { limit.all_released().await }
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(!drained.is_finished(), "drain ended with clients left");
            drop(a);
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(!drained.is_finished(), "drain ended with a client left");
            drop(b);
            tokio::time::timeout(Duration::from_millis(10), drained)
                .await
                .expect("drain must end as soon as the last client leaves")
                .unwrap();
        }
    }

    #[tokio::test]
    async fn drain_with_no_client_ends_at_once() {
        ClientLimit::new(5).all_released().await;
    }
}
