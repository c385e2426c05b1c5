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
//! Resizing takes a small lock. A returning permit takes it only while a debt is recorded: the
//! common case (no shrink being paid) is one atomic load. A permit returned at the very moment
//! a shrink records its debt may be released instead of retired; the debt is then paid by the
//! next permits to come back, so the total number of permits still ends at the new capacity.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// A resizable FIFO semaphore.
#[derive(Debug)]
pub(crate) struct Bound {
    sem: Arc<Semaphore>,
    state: Mutex<BoundState>,
    /// `state.capacity`, readable without the lock.
    capacity: AtomicUsize,
    /// `state.debt`, readable without the lock: zero means returning permits are released.
    debt: AtomicUsize,
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
            capacity: AtomicUsize::new(capacity),
            debt: AtomicUsize::new(0),
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

    /// A permit if one is free now, without waiting.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let permit = self.sem.clone().try_acquire_owned().ok()?;
        Some(Permit {
            permit: Some(permit),
            bound: self.clone(),
        })
    }

    /// Whether a shrink is still being paid by returning permits.
    pub(crate) fn in_debt(&self) -> bool {
        self.debt.load(Ordering::Acquire) > 0
    }

    /// The capacity in force (the target, while a shrink is still being paid).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Acquire)
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
        self.capacity.store(capacity, Ordering::Release);
        self.debt.store(state.debt, Ordering::Release);
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
        if self.bound.debt.load(Ordering::Acquire) == 0 {
            drop(permit);
            return;
        }
        let mut state = self.bound.state.lock().expect("bound lock");
        if state.debt > 0 {
            state.debt -= 1;
            self.bound.debt.store(state.debt, Ordering::Release);
            permit.forget();
        } else {
            drop(permit);
        }
    }
}
