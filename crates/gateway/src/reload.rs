//! Applying new settings to a running gateway (SIGHUP): a reload either builds a complete new
//! [`Settings`] or fails and leaves the running one untouched; what may change is decided by
//! [`SettingsChange::reconcile`]. The swap is one `ArcSwap` store, so a connection sees either the
//! old or the new settings, never a mix; the parts with state of their own (client limit, pool,
//! STS client) are resized or re-timed here, and sessions are told through the reload signal so
//! that those of removed or changed users, or of addresses the access list no longer admits,
//! close themselves.
//!
//! The access list also changes without a reload, when a temporary entry expires:
//! [`watch_access_expiry`] sleeps until the next expiry and then sends sessions the same signal,
//! so that a connection admitted only by that entry is closed as if a reload had removed it.

use std::sync::Arc;
use std::time::SystemTime;

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

/// The longest the expiry watch sleeps before looking at the wall clock again.
const LONGEST_SLEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// Signals every session each time an access-list entry expires, until the gateway drains: one
/// task for the whole gateway, sleeping until the earliest expiry still ahead (and starting over
/// on every reload, which may add or remove entries), so idle connections need no timer of
/// their own.
pub async fn watch_access_expiry(gateway: Shared) {
    let live = &gateway.live;
    let mut rechecks = live.rechecks();
    let mut draining = gateway.draining.clone();
    loop {
        let now = SystemTime::now();
        let next = live.settings.load().access.next_expiry(now);
        // No expiry ahead: sleep until a reload (or the drain) says otherwise. At most a minute
        // at a time, so that a wall clock set forward is noticed.
        let wait = next.map(|t| t.duration_since(now).unwrap_or_default().min(LONGEST_SLEEP));
        tokio::select! {
            _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {
                // The timer and the wall clock may disagree by a little: signal only once the
                // entry really is out, otherwise sleep for the rest.
                if next.is_some_and(|t| SystemTime::now() >= t) {
                    tracing::info!(event = "access_entry_expired", "an access-list entry expired; connections it admitted are judged again");
                    live.signal_recheck();
                }
            }
            changed = rechecks.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = draining.changed() => return,
        }
    }
}
