//! Applying new settings to a running gateway (SIGHUP): a reload either builds a complete new
//! [`Settings`] or fails and leaves the running one untouched; what may change is decided by
//! [`SettingsChange::reconcile`]. The swap is one `ArcSwap` store, so a connection sees either the
//! old or the new settings, never a mix; the parts with state of their own (client limit, pool,
//! STS client) are resized or re-timed here, and sessions are told through the reload signal so
//! that those of removed or changed users close themselves.

use std::sync::Arc;

use crate::context::Shared;
use crate::settings::{ConfigError, RawConfig, Settings, SettingsChange};

/// Validates `raw` (all layers applied) and applies it; on error nothing changes.
pub fn reload(gateway: &Shared, raw: RawConfig) -> Result<SettingsChange, ConfigError> {
    Ok(apply(gateway, Settings::from_raw(raw)?))
}

/// Applies validated settings to a running gateway.
pub fn apply(gateway: &Shared, mut new: Settings) -> SettingsChange {
    let old = gateway.live.settings.load_full();
    let change = SettingsChange::reconcile(&old, &mut new);
    gateway.clients.set_total(new.max_clients);
    gateway.edge.sts.set_timeout(new.sts_timeout);
    gateway.upstream.reshape(crate::context::pool_shape(&new));
    gateway.live.settings.store(Arc::new(new));
    gateway.live.signal_reload();
    change
}
