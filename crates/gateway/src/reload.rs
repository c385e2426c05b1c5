//! Applying a new configuration to a running gateway (SIGHUP).
//!
//! Owns what may change without a restart: users and their scopes, the access list, the
//! per-source connection limit, timeouts read per connection. Everything is swapped atomically
//! (`ArcSwap`), so a connection sees either the old or the new settings, never a mix. Connections
//! of users who were removed or whose role or scope changed are told through the context's
//! reload signal and close themselves; everyone else carries on. Settings that shape sockets or
//! the pool (listen address, upstream, pool size) need a restart and are reported as ignored.

use std::sync::Arc;

use crate::config::Config;
use crate::context::Live;
use crate::error::GatewayError;
use crate::users::UserStore;

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Users defined after the reload.
    pub users: usize,
    /// Settings that differ but need a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Validates and applies `new` (already layered and `finish`ed).
pub fn apply(live: &Live, new: Config) -> Result<ReloadSummary, GatewayError> {
    let access = new.access_list()?;
    let users = UserStore::from_config(&new.users)?;
    let tls = new.tls_server()?;
    let old = live.config.load_full();
    let mut needs_restart = Vec::new();
    if old.listen != new.listen {
        needs_restart.push("listen");
    }
    if old.metrics_listen != new.metrics_listen {
        needs_restart.push("metrics_listen");
    }
    if old.upstream().address != new.upstream().address
        || old.upstream().username != new.upstream().username
    {
        needs_restart.push("upstream");
    }
    if old.pool_size != new.pool_size || old.pinned_limit() != new.pinned_limit() {
        needs_restart.push("pool_size");
    }
    if old.max_clients != new.max_clients {
        needs_restart.push("max_clients");
    }
    let summary = ReloadSummary {
        users: new.users.len(),
        needs_restart,
    };
    live.access.store(Arc::new(access));
    live.tls.store(Arc::new(tls));
    live.users.store(Arc::new(users));
    live.config.store(Arc::new(new));
    live.signal_reload();
    Ok(summary)
}
