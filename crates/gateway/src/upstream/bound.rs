//! [`Bound`]: a fair (FIFO) counting semaphore whose capacity can change while permits are
//! out. The pool uses one for its connection slots and one for transaction pins.
//!
//! Growing adds permits at once, so waiters are served immediately. Shrinking takes back the
//! permits that are free now and records the rest as a debt: the next permits to come back
//! are retired instead of released until the debt is paid. So the number of permits out never
//! exceeds the new capacity once the permits that were out at the time of the shrink have
//! come back, and never exceeds the larger of the old and new capacity before that.
//!
//! # Concurrency note
//! Resizing and returning a permit both take the same small lock, so a returning permit can
//! never slip past a shrink that is deciding how much debt to record.

use std::sync::{Arc, Mutex};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// A resizable FIFO semaphore.
#[derive(Debug)]
pub(crate) struct Bound {
    sem: Arc<Semaphore>,
    state: Mutex<BoundState>,
}

#[derive(Debug)]
struct BoundState {
    capacity: usize,
    /// Permits still out that must be retired, not released, when they come back.
    debt: usize,
}

/// One permit of a [`Bound`]; returned (or retired, to pay a shrink) on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    bound: Arc<Bound>,
}

impl Bound {
    /// A bound with `capacity` permits.
    pub(crate) fn new(capacity: usize) -> Arc<Bound> {
        Arc::new(Bound {
            sem: Arc::new(Semaphore::new(capacity)),
            state: Mutex::new(BoundState { capacity, debt: 0 }),
        })
    }

    /// Waits for a permit, in arrival order. Fails once the bound is closed.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Permit, AcquireError> {
        let permit = self.sem.clone().acquire_owned().await?;
        Ok(Permit {
            permit: Some(permit),
            bound: self.clone(),
        })
    }

    /// The capacity in force (the target, while a shrink is still being paid).
    pub(crate) fn capacity(&self) -> usize {
        self.state.lock().expect("bound lock").capacity
    }

    /// Changes the capacity; see the module docs for when a shrink takes effect.
    pub(crate) fn resize(&self, capacity: usize) {
        let mut state = self.state.lock().expect("bound lock");
        if capacity >= state.capacity {
            let grow = capacity - state.capacity;
            let forgiven = grow.min(state.debt);
            state.debt -= forgiven;
            self.sem.add_permits(grow - forgiven);
        } else {
            let shrink = state.capacity - capacity;
            let taken = self.sem.forget_permits(shrink);
            state.debt += shrink - taken;
        }
        state.capacity = capacity;
    }

    /// Fails every waiting and future [`Bound::acquire`].
    pub(crate) fn close(&self) {
        self.sem.close();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let mut state = self.bound.state.lock().expect("bound lock");
        if state.debt > 0 {
            state.debt -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
    }
}
