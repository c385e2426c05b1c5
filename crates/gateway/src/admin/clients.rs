//! The registry of connected clients, for operators: who is connected (address, user,
//! `appName`, driver, since when), what each is running now, and a way to close them.
//!
//! Each session registers itself for its lifetime and updates its own entry; the registry's map
//! is bounded by the client limit, since an entry lives exactly as long as its session. An entry
//! is updated only by its own session (an uncontended lock, twice per request); reading the list
//! takes each entry's lock briefly, never the map's lock across anything slow.
//!
//! Closing is a request, not an interruption: the session ends at its next message boundary
//! (at once when idle, after its reply when a request is in flight), so a closed client never
//! loses a reply the upstream already sent, and no upstream connection is cut mid-exchange.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::Notify;

use crate::text::bounded_prefix;

/// Longest command name or database kept for the in-flight display.
const MAX_SHOWN: usize = 64;

/// Every connected client.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    entries: Mutex<HashMap<i64, Arc<ClientEntry>>>,
}

/// One connected client.
#[derive(Debug)]
pub struct ClientEntry {
    id: i64,
    peer: SocketAddr,
    connected: SystemTime,
    started: Instant,
    info: Mutex<ClientInfo>,
    sessions: AtomicUsize,
    close: Notify,
}

#[derive(Debug, Default)]
struct ClientInfo {
    user: Option<String>,
    app_name: Option<Box<str>>,
    driver: Option<Box<str>>,
    in_flight: Option<InFlight>,
}

#[derive(Debug)]
struct InFlight {
    command: Box<str>,
    db: Box<str>,
    since: Instant,
}

/// A session's registration; dropping it removes the entry.
#[derive(Debug)]
pub struct Registration {
    entry: Arc<ClientEntry>,
    registry: Arc<ClientRegistry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.entry.id);
    }
}

impl std::ops::Deref for Registration {
    type Target = ClientEntry;
    fn deref(&self) -> &ClientEntry {
        &self.entry
    }
}

/// Which clients an operator means: every given part must match; no part matches everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFilter {
    /// An IP address (any port), or an exact `ip:port`.
    pub address: Option<AddressFilter>,
    /// The authenticated user's name (clients that have not logged in never match).
    pub user: Option<String>,
    /// The `appName` the client sent in its handshake.
    pub app_name: Option<String>,
}

/// An address an operator names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressFilter {
    /// Every connection from this IP.
    Ip(IpAddr),
    /// The one connection from this address and port.
    Socket(SocketAddr),
}

impl AddressFilter {
    /// Parses `1.2.3.4`, `::1`, `1.2.3.4:5678` or `[::1]:5678`.
    pub fn parse(text: &str) -> Option<AddressFilter> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(AddressFilter::Ip(ip));
        }
        text.parse::<SocketAddr>().ok().map(AddressFilter::Socket)
    }

    fn matches(&self, peer: SocketAddr) -> bool {
        // A client that reached an IPv6 listener from IPv4 shows as ::ffff:a.b.c.d.
        let ip = peer.ip().to_canonical();
        match *self {
            AddressFilter::Ip(want) => want.to_canonical() == ip,
            AddressFilter::Socket(want) => {
                want.ip().to_canonical() == ip && want.port() == peer.port()
            }
        }
    }
}

impl ClientFilter {
    /// Whether no part is given (such a filter matches every client).
    pub fn is_empty(&self) -> bool {
        self.address.is_none() && self.user.is_none() && self.app_name.is_none()
    }

    fn matches(&self, entry: &ClientEntry, info: &ClientInfo) -> bool {
        self.address.is_none_or(|a| a.matches(entry.peer))
            && self
                .user
                .as_deref()
                .is_none_or(|u| info.user.as_deref() == Some(u))
            && self
                .app_name
                .as_deref()
                .is_none_or(|a| info.app_name.as_deref() == Some(a))
    }
}

/// One client, for operators.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientReport {
    /// The gateway's id of the connection (`connectionId` in its handshake reply and logs).
    pub id: i64,
    /// `ip:port` of the client (as the PROXY header gave it, behind a load balancer).
    pub address: String,
    /// The user it logged in as, if any.
    pub user: Option<String>,
    /// The `appName` of its handshake, if any.
    pub app_name: Option<String>,
    /// The driver's name and version from its handshake, if given.
    pub driver: Option<String>,
    /// When it connected (RFC 3339, UTC).
    pub connected_at: String,
    /// Seconds since it connected.
    pub connected_secs: f64,
    /// The command it is running now, if any.
    pub in_flight: Option<InFlightReport>,
    /// Cursors it opened that are still open.
    pub cursors: usize,
    /// Logical sessions it has used.
    pub sessions: usize,
}

/// A command in flight.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlightReport {
    /// Command name.
    pub command: String,
    /// Its database.
    pub db: String,
    /// Seconds since it arrived.
    pub secs: f64,
}

impl ClientRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<ClientEntry>>> {
        self.entries.lock().expect("client registry lock")
    }

    /// Registers a session's connection for as long as the returned value lives.
    pub fn register(self: &Arc<Self>, id: i64, peer: SocketAddr) -> Registration {
        let entry = Arc::new(ClientEntry {
            id,
            peer,
            connected: SystemTime::now(),
            started: Instant::now(),
            info: Mutex::default(),
            sessions: AtomicUsize::new(0),
            close: Notify::new(),
        });
        self.lock().insert(id, entry.clone());
        Registration {
            entry,
            registry: self.clone(),
        }
    }

    /// Clients connected now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Vec<Arc<ClientEntry>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|e| e.id);
        all
    }

    /// The clients `filter` matches, oldest connection first, at most `limit` of them, and
    /// how many matched in all. `cursors` tells how many cursors a connection holds.
    pub fn list(
        &self,
        filter: &ClientFilter,
        limit: usize,
        cursors: impl Fn(i64) -> usize,
    ) -> (Vec<ClientReport>, usize) {
        let now = Instant::now();
        let mut matched = 0;
        let mut out = Vec::new();
        for entry in self.snapshot() {
            let info = entry.lock();
            if !filter.matches(&entry, &info) {
                continue;
            }
            matched += 1;
            if out.len() < limit {
                out.push(entry.report(&info, now, cursors(entry.id)));
            }
        }
        (out, matched)
    }

    /// Asks every client `filter` matches, except connection `except`, to close at its next
    /// message boundary; returns how many were asked.
    pub fn close(&self, filter: &ClientFilter, except: i64) -> usize {
        let mut asked = 0;
        for entry in self.snapshot() {
            if entry.id == except || !filter.matches(&entry, &entry.lock()) {
                continue;
            }
            entry.close.notify_one();
            asked += 1;
        }
        asked
    }
}

impl ClientEntry {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClientInfo> {
        self.info.lock().expect("client entry lock")
    }

    /// Records the handshake's `appName` and driver.
    pub fn set_handshake(&self, app_name: Option<&str>, driver: Option<String>) {
        let mut info = self.lock();
        info.app_name = app_name.map(Into::into);
        info.driver = driver.map(|d| bounded_prefix(&d, 2 * MAX_SHOWN).into());
    }

    /// Records the number of logical sessions the client has used.
    pub fn set_sessions(&self, n: usize) {
        self.sessions.store(n, Ordering::Relaxed);
    }

    /// Marks a command as running.
    pub fn begin(&self, command: &str, db: &str) {
        self.lock().in_flight = Some(InFlight {
            command: bounded_prefix(command, MAX_SHOWN).into(),
            db: bounded_prefix(db, MAX_SHOWN).into(),
            since: Instant::now(),
        });
    }

    /// Marks the running command as done, and records the user the client is logged in as
    /// after it (a login or logout happens inside a command).
    pub fn end(&self, user: Option<&str>) {
        let mut info = self.lock();
        info.in_flight = None;
        if info.user.as_deref() != user {
            info.user = user.map(str::to_string);
        }
    }

    /// Resolves when an operator asked this client to close (at once if already asked).
    pub async fn close_requested(&self) {
        self.close.notified().await;
    }

    fn report(&self, info: &ClientInfo, now: Instant, cursors: usize) -> ClientReport {
        let secs =
            |since: Instant| (now.duration_since(since).as_secs_f64() * 1000.0).round() / 1000.0;
        ClientReport {
            id: self.id,
            address: self.peer.to_string(),
            user: info.user.clone(),
            app_name: info.app_name.as_deref().map(str::to_string),
            driver: info.driver.as_deref().map(str::to_string),
            connected_at: humantime::format_rfc3339_millis(self.connected).to_string(),
            connected_secs: secs(self.started),
            in_flight: info.in_flight.as_ref().map(|f| InFlightReport {
                command: f.command.to_string(),
                db: f.db.to_string(),
                secs: secs(f.since),
            }),
            cursors,
            sessions: self.sessions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn filters_list_and_close_only_what_they_name() {
        let reg = Arc::new(ClientRegistry::default());
        let a = reg.register(1, peer("127.0.0.1:1000"));
        let b = reg.register(2, peer("127.0.0.1:2000"));
        let c = reg.register(3, peer("[::ffff:10.0.0.1]:3000"));
        a.end(Some("alice"));
        a.set_handshake(Some("etl"), Some("nodejs 6.9".into()));
        b.set_handshake(Some("etl"), None);
        c.begin("find", "shop");
        assert_eq!(reg.len(), 3);

        let all = ClientFilter::default();
        let (rows, n) = reg.list(&all, 2, |_| 7);
        assert_eq!((rows.len(), n), (2, 3));
        assert_eq!(rows[0].id, 1);
        assert_eq!(rows[0].cursors, 7);
        assert_eq!(rows[0].driver.as_deref(), Some("nodejs 6.9"));

        let by_app = ClientFilter {
            app_name: Some("etl".into()),
            ..Default::default()
        };
        assert_eq!(reg.list(&by_app, 10, |_| 0).1, 2);
        let app_and_user = ClientFilter {
            user: Some("alice".into()),
            ..by_app.clone()
        };
        assert_eq!(reg.list(&app_and_user, 10, |_| 0).1, 1);
        let v4 = ClientFilter {
            address: AddressFilter::parse("10.0.0.1"),
            ..Default::default()
        };
        let (rows, _) = reg.list(&v4, 10, |_| 0);
        assert_eq!(rows[0].id, 3);
        assert_eq!(rows[0].in_flight.as_ref().unwrap().command, "find");
        let exact = ClientFilter {
            address: AddressFilter::parse("127.0.0.1:2000"),
            ..Default::default()
        };
        assert_eq!(reg.list(&exact, 10, |_| 0).1, 1);
        assert_eq!(AddressFilter::parse("127.0.0.1:x"), None);

        // The caller itself is spared; a close request waits for the session to look.
        assert_eq!(reg.close(&by_app, 2), 1);
        tokio::time::timeout(std::time::Duration::from_secs(1), a.close_requested())
            .await
            .expect("asked to close");
        drop(b);
        assert_eq!(reg.len(), 2);
    }
}
