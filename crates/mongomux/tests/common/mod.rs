//! Harness for the integration tests that drive the gateway with the official Rust `mongodb`
//! driver against real upstreams (FerretDB on SQLite with authentication, nx-27017 for
//! transactions).
//!
//! What it owns: starting and stopping those processes on free loopback ports with temporary data
//! folders, starting `mongomux serve` as a child process exactly as an operator would (the CLI
//! contract in `docs/dev/gateway-contract.md`), building driver clients, and observing the system
//! from the outside (established sockets by address, through `mongomux_testkit::sockets`, and
//! Prometheus text).
//!
//! What it must never do: reach into the gateway's internals, or let a test hang. Every wait here
//! has a deadline, and every child process is killed when its handle is dropped (a failing test
//! prints the tail of the child's log so the failure can be understood without re-running).
//!
//! Results are checked against FerretDB with [`mongomux_testkit::RawConn`], not the driver: the
//! Rust driver cannot authenticate to FerretDB v1.24.2 (see that crate).
//!
//! Environment: `MONGOMUX_FERRETDB` and `MONGOMUX_NX` override the binaries (defaults
//! `.local/bin/ferretdb`, `.venv/bin/nx-27017`, installed by `scripts/install-deps`; a missing one
//! fails the test, it is never skipped); `MONGOMUX_LOG` sets the gateway's log filter (its stderr
//! is kept in a temp folder and its tail printed when a test fails).
//!
//! `MONGOMUX_TEST_DIRECT=1` is a development aid: the "gateway" handed to tests is then FerretDB
//! itself, started without authentication (which the driver could not pass). It exists to tell a
//! test bug from a gateway bug; tests about gateway-only behaviour (cursor ownership, drain,
//! transactions, which the driver refuses against a standalone server) are expected to fail in
//! that mode.

// Signals child processes through libc (kill).
#![allow(unsafe_code)]
#![allow(dead_code)] // each test binary uses a different subset of the harness

mod driver;
mod gateway;
mod observe;
mod servers;

pub use driver::*;
pub use gateway::*;
pub use observe::*;
pub use servers::*;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, Document};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::{ClientOptions, Credential, ServerAddress};
use mongodb::Client;

/// The user FerretDB is set up with; the gateway authenticates upstream as this user.
pub const UPSTREAM_USER: &str = "mmux-test";
/// Test-only password of [`UPSTREAM_USER`] (a throwaway FerretDB in a temporary folder).
pub const UPSTREAM_PASSWORD: &str = "not-a-secret-Pa55";

const INSTALL_HINT: &str = "run scripts/install-deps from the repository root to install it";

/// Root of the checkout (two levels above this crate's manifest).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required_binary(env_var: &str, default_rel: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(default_rel));
    assert!(
        path.is_file(),
        "{what} not found at {} (override with {env_var}): {INSTALL_HINT}",
        path.display()
    );
    path
}

/// FerretDB v1.24.2 binary: `$MONGOMUX_FERRETDB`, default `.local/bin/ferretdb`.
/// Panics (the test fails, it is not skipped) when it is missing.
pub fn ferretdb_bin() -> PathBuf {
    required_binary("MONGOMUX_FERRETDB", ".local/bin/ferretdb", "FerretDB")
}

/// nx-27017 binary: `$MONGOMUX_NX`, default `.venv/bin/nx-27017`.
pub fn nx_bin() -> PathBuf {
    required_binary("MONGOMUX_NX", ".venv/bin/nx-27017", "nx-27017")
}

/// The gateway binary built by Cargo for this test run.
pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mongomux"))
}

/// See the module docs.
pub fn direct_mode() -> bool {
    std::env::var("MONGOMUX_TEST_DIRECT").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Run `fut` and panic if it takes longer than `limit`: no test may hang.
pub async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {limit:?}"),
    }
}

/// Poll `check` every 50 ms until it returns `Some`, or panic after `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it, so call this
/// before starting the gateway). Returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE")
}

// ---------------------------------------------------------------------------------------------
// Temporary folders and ports

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port that was free a moment ago (bind to port 0 and release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn log_tail(path: &Path, lines: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Send a signal to a child we started.
pub fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: plain kill(2) on the pid of a child process this harness owns and has not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({}, {sig}) failed", child.id());
}

// Stacks

/// A fresh FerretDB and a gateway in front of it (`tweak` adjusts the gateway's flags).
pub async fn ferret_stack(tweak: impl FnOnce(&mut GatewayConfig)) -> (Ferret, Gateway) {
    let ferret = Ferret::start().await;
    let mut cfg = GatewayConfig::for_ferret(&ferret);
    tweak(&mut cfg);
    let gw = Gateway::start(cfg).await;
    (ferret, gw)
}
