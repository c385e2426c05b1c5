//! What the pool and the cursor table share about one upstream connection: which member it is
//! connected to, and whether it may still carry cursors a client uses, which decides how long
//! the pool keeps it idle. It never touches the connection itself.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Per-connection facts shared with the cursor table, which must know whether a connection
/// still carries open cursors before the pool reaps it.
#[derive(Debug, Default)]
pub struct ConnMeta {
    /// Gateway-local id of the upstream connection.
    pub id: u64,
    /// The member it is connected to (`host:port`): cursors opened on it continue there.
    pub address: Arc<str>,
    /// Cursors opened on this connection that are still open.
    pub open_cursors: AtomicI64,
    /// When cursors opened on this connection were last handed off: forgotten by this gateway
    /// but left open upstream for another gateway to continue (`route::Routes::leave`).
    handed_off: Mutex<Option<Instant>>,
}

impl ConnMeta {
    /// The facts of a new connection to `address`.
    pub fn new(id: u64, address: &str) -> ConnMeta {
        ConnMeta {
            id,
            address: Arc::from(address),
            ..ConnMeta::default()
        }
    }

    /// Cursors opened here were just handed off to other gateways.
    pub fn note_handed_off(&self) {
        *self.handed_off.lock().expect("handed_off lock") = Some(Instant::now());
    }

    /// Whether this connection may still carry cursors a client uses: some open here, or some
    /// handed off less than `keepalive` ago. FerretDB 1.x ties a cursor to the connection that
    /// opened it, so the pool keeps such a connection open (up to `keepalive` idle).
    pub fn may_carry_cursors(&self, keepalive: Duration) -> bool {
        self.open_cursors.load(Ordering::Relaxed) > 0
            || self
                .handed_off
                .lock()
                .expect("handed_off lock")
                .is_some_and(|at| at.elapsed() < keepalive)
    }
}
