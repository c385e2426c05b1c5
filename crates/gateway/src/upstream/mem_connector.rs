//! An in-memory [`Connector`] for unit tests: it opens connections that carry nothing, counts
//! how many the "upstream" sees at once, and can be told to refuse or hang the next attempts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::sleep;

use super::conn::{ConnMeta, UpstreamInfo};
use super::connector::{Connector, PoolConn};
use super::error::UpstreamError;

/// What the next connection attempt does; the default is to succeed.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Fail as a refused TCP connection does.
    Refuse,
    /// Never finish.
    Hang,
}

/// The far end as the tests see it: connections open now, the most ever open at once, all
/// ever opened, and the plans for the next attempts.
#[derive(Debug, Default)]
pub(crate) struct Upstream {
    pub(crate) live: AtomicUsize,
    pub(crate) peak: AtomicUsize,
    pub(crate) opened: AtomicUsize,
    pub(crate) plans: Mutex<VecDeque<Plan>>,
}

/// The in-memory connector.
#[derive(Debug, Default)]
pub(crate) struct Mem(pub(crate) Arc<Upstream>);

/// An in-memory connection; counts itself out of [`Upstream::live`] when closed.
#[derive(Debug)]
pub(crate) struct MemConn {
    meta: Arc<ConnMeta>,
    pub(crate) healthy: Arc<AtomicBool>,
    upstream: Arc<Upstream>,
}

impl Drop for MemConn {
    fn drop(&mut self) {
        self.upstream.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PoolConn for MemConn {
    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    fn meta(&self) -> &Arc<ConnMeta> {
        &self.meta
    }
}

impl Connector for Mem {
    type Conn = MemConn;

    async fn connect(&self, id: u64) -> Result<(MemConn, UpstreamInfo), UpstreamError> {
        let plan = self.0.plans.lock().unwrap().pop_front();
        match plan {
            Some(Plan::Refuse) => Err(UpstreamError::Connect {
                address: self.address().to_string(),
                source: std::io::ErrorKind::ConnectionRefused.into(),
            }),
            Some(Plan::Hang) => std::future::pending().await,
            None => {
                // A real connect takes a while; let other checkouts interleave.
                sleep(Duration::from_millis(3)).await;
                let up = &self.0;
                let live = up.live.fetch_add(1, Ordering::SeqCst) + 1;
                up.peak.fetch_max(live, Ordering::SeqCst);
                up.opened.fetch_add(1, Ordering::SeqCst);
                let conn = MemConn {
                    meta: Arc::new(ConnMeta::new(id, self.address())),
                    healthy: Arc::new(AtomicBool::new(true)),
                    upstream: up.clone(),
                };
                Ok((conn, UpstreamInfo::default()))
            }
        }
    }

    fn address(&self) -> &str {
        "mem:27017"
    }
}
