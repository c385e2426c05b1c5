//! The operators' view of a running gateway, the counterpart of PgBouncer's admin console:
//! who is connected ([`clients`]), the pause gate ([`pause`]), the reports built from the
//! gateway's parts ([`report`]), and the hook that reloads the configuration as SIGHUP does.
//!
//! This module holds state and builds reports; it does not speak any protocol. The admin
//! commands on the `admin` database are served by the session (`session::admin`), the same
//! reports as JSON by the metrics listener, each behind its own access control.

pub mod clients;
pub mod pause;
pub mod report;

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::settings::SettingsChange;

/// Re-reads the configuration from where the process got it and applies it (the binary
/// knows the file, flags and environment; the library does not). Errors are one line, without
/// secrets, as for SIGHUP.
pub type Reloader = Arc<dyn Fn() -> Result<SettingsChange, String> + Send + Sync>;

/// The operators' state.
pub struct Admin {
    /// Connected clients.
    pub clients: Arc<clients::ClientRegistry>,
    /// The pause gate.
    pub pause: pause::PauseGate,
    /// When the gateway started.
    pub started: SystemTime,
    reloader: OnceLock<Reloader>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("clients", &self.clients.len())
            .field("pause", &self.pause.current())
            .finish_non_exhaustive()
    }
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            clients: Arc::default(),
            pause: pause::PauseGate::default(),
            started: SystemTime::now(),
            reloader: OnceLock::new(),
        }
    }
}

impl Admin {
    /// Installs the reload hook; only the first one is kept (the binary installs it once at
    /// start-up, before serving).
    pub fn set_reloader(&self, reloader: Reloader) {
        let _ = self.reloader.set(reloader);
    }

    /// Reloads through the installed hook.
    pub fn reload(&self) -> Result<SettingsChange, String> {
        match self.reloader.get() {
            Some(reload) => reload(),
            None => Err("this process has no configuration to reload from".into()),
        }
    }
}
