//! Harness for the integration tests that drive the gateway with the official Rust `mongodb`
//! driver against real upstreams (FerretDB on SQLite with authentication, nx-27017 for
//! transactions).
//!
//! What it owns: starting and stopping those processes on free loopback ports with temporary data
//! folders, starting `mongomux serve` as a child process exactly as an operator would (the CLI
//! contract in `docs/dev/gateway-contract.md`), building driver clients, and observing the system
//! from the outside (established sockets by port, through sock_diag or `/proc/net/tcp{,6}`, and
//! Prometheus text).
//!
//! What it must never do: reach into the gateway's internals, or let a test hang. Every wait here
//! has a deadline, and every child process is killed when its handle is dropped (a failing test
//! prints the tail of the child's log so the failure can be understood without re-running).
//!
//! Results are checked against FerretDB with [`raw::RawConn`], not the driver: the Rust driver
//! cannot authenticate to FerretDB v1.24.2 (see that module).
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

#![allow(dead_code)] // each test binary uses a different subset of the harness

pub mod raw;
pub mod sockdiag;

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

// ---------------------------------------------------------------------------------------------
// FerretDB

/// A FerretDB process on SQLite with authentication on, in its own temp folder.
pub struct Ferret {
    child: Option<Child>,
    pub port: u16,
    pub debug_port: u16,
    dir: TempDir,
    starts: u32,
    /// Authentication on (always, except in direct mode).
    auth: bool,
}

impl Ferret {
    /// Start FerretDB on a free port and wait until an authenticated `ping` succeeds.
    pub async fn start() -> Ferret {
        let bin = ferretdb_bin();
        let dir = TempDir::new("mongomux-ferret");
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let mut f = Ferret {
            child: None,
            port: free_port(),
            debug_port: free_port(),
            dir,
            starts: 0,
            auth: !direct_mode(),
        };
        f.spawn(&bin);
        f.wait_ready().await;
        f
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("ferretdb.log")
    }

    fn spawn(&mut self, bin: &Path) {
        assert!(self.child.is_none(), "FerretDB already running");
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        writeln!(
            log,
            "==== harness: start #{} on port {} ====",
            self.starts, self.port
        )
        .unwrap();
        let err = log.try_clone().unwrap();
        let child = Command::new(bin)
            .arg("--handler=sqlite")
            .arg(format!(
                "--sqlite-url=file:{}/",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-addr=127.0.0.1:{}", self.port))
            .arg(format!("--debug-addr=127.0.0.1:{}", self.debug_port))
            .arg(format!("--state-dir={}", self.dir.path().display()))
            .arg("--telemetry=disable")
            .args(if self.auth {
                vec![
                    "--test-enable-new-auth".to_string(),
                    format!("--setup-username={UPSTREAM_USER}"),
                    format!("--setup-password={UPSTREAM_PASSWORD}"),
                    "--setup-database=admin".to_string(),
                ]
            } else {
                Vec::new()
            })
            .arg("--log-level=WARN")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last_err = String::from("port not accepting connections");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "FerretDB exited during start-up with {status}; log:\n{}",
                        log_tail(&self.log_path(), 40)
                    );
                }
            }
            if port_accepts(self.port) {
                match self.try_direct().await {
                    Ok(mut c) => match c.command("admin", doc! {"ping": 1}).await {
                        Ok(_) => return,
                        Err(e) => last_err = e.to_string(),
                    },
                    Err(e) => last_err = e,
                }
            }
            assert!(
                Instant::now() < deadline,
                "FerretDB did not become ready on port {} within 30 s (last ping error: \
                    {last_err}); log:\n{}",
                self.port,
                log_tail(&self.log_path(), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL FerretDB (the port and data folder are kept for [`Ferret::restart`]).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
    }

    /// Start FerretDB again on the same port and data folder and wait until it is ready.
    pub async fn restart(&mut self) {
        self.kill();
        let bin = ferretdb_bin();
        // The old listener is gone once the process is reaped; Go listeners set SO_REUSEADDR.
        self.spawn(&bin);
        self.wait_ready().await;
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Upstream URI as given to `mongomux serve --upstream` (credentials come from the env).
    pub fn upstream_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?authSource=admin", self.port)
    }

    /// A connection straight to FerretDB, authenticated as the setup user (see [`raw`]).
    pub async fn direct(&self) -> raw::RawConn {
        self.try_direct()
            .await
            .unwrap_or_else(|e| panic!("direct connection to FerretDB: {e}"))
    }

    async fn try_direct(&self) -> Result<raw::RawConn, String> {
        if self.auth {
            raw::RawConn::connect_scram(self.addr(), UPSTREAM_USER, UPSTREAM_PASSWORD).await
        } else {
            raw::RawConn::connect(self.addr())
                .await
                .map_err(|e| e.to_string())
        }
    }

    /// Text of FerretDB's Prometheus endpoint (`--debug-addr`), if reachable.
    pub fn debug_metrics(&self) -> Option<String> {
        http_get(
            SocketAddr::from(([127, 0, 0, 1], self.debug_port)),
            "/debug/metrics",
        )
    }
}

impl Drop for Ferret {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- FerretDB log tail ({}) ----\n{}",
                self.log_path().display(),
                log_tail(&self.log_path(), 30)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// nx-27017

/// An nx-27017 process (in-memory, no authentication), for transactions.
pub struct Nx {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl Nx {
    pub async fn start() -> Nx {
        let bin = nx_bin();
        let dir = TempDir::new("mongomux-nx");
        let port = free_port();
        let log = File::create(dir.path().join("nx.log")).unwrap();
        let err = log.try_clone().unwrap();
        let child = Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--db",
                "memory",
            ])
            // The defaults are shared files in /tmp: a second instance would refuse to start.
            .arg("--pid-file")
            .arg(dir.path().join("nx.pid"))
            .arg("--log-file")
            .arg(dir.path().join("nx-file.log"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut nx = Nx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = nx.child.try_wait().unwrap() {
                panic!(
                    "nx-27017 exited during start-up with {status}; log:\n{}",
                    log_tail(&nx.log_path(), 40)
                );
            }
            if port_accepts(port) {
                let c = nx.client();
                let ok = c
                    .database("admin")
                    .run_command(doc! {"ping": 1})
                    .await
                    .is_ok();
                c.shutdown().immediate(true).await;
                if ok {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nx-27017 not ready within 30 s; log:\n{}",
                log_tail(&nx.log_path(), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        nx
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nx.log")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn upstream_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> Client {
        client_to(self.addr(), None, |o| {
            o.server_selection_timeout = Some(Duration::from_secs(2))
        })
    }
}

impl Drop for Nx {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "---- nx-27017 log tail ----\n{}",
                log_tail(&self.log_path(), 30)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway

/// How to start `mongomux serve`.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub upstream_uri: String,
    /// Passed through MONGOMUX_UPSTREAM_USERNAME / MONGOMUX_UPSTREAM_PASSWORD.
    pub upstream_credentials: Option<(String, String)>,
    pub pool_size: u32,
    pub checkout_timeout: &'static str,
    pub max_clients: Option<u32>,
    pub drain_timeout: Option<&'static str>,
    pub extra_args: Vec<String>,
}

impl GatewayConfig {
    /// A gateway in front of this FerretDB, authenticating as the setup user.
    pub fn for_ferret(ferret: &Ferret) -> GatewayConfig {
        GatewayConfig {
            upstream_uri: ferret.upstream_uri(),
            upstream_credentials: Some((UPSTREAM_USER.into(), UPSTREAM_PASSWORD.into())),
            pool_size: 10,
            checkout_timeout: "5s",
            max_clients: None,
            drain_timeout: None,
            extra_args: Vec::new(),
        }
    }

    /// A gateway in front of nx-27017 (no authentication).
    pub fn for_nx(nx: &Nx) -> GatewayConfig {
        GatewayConfig {
            upstream_uri: nx.upstream_uri(),
            upstream_credentials: None,
            pool_size: 10,
            checkout_timeout: "5s",
            max_clients: None,
            drain_timeout: None,
            extra_args: Vec::new(),
        }
    }
}

/// A running `mongomux serve` (or, in direct mode, a stand-in that points at the upstream).
pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    dir: TempDir,
    exit_status: Option<ExitStatus>,
    stdout_thread: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Start `mongomux serve` with `cfg`, listening and serving metrics on free loopback ports,
    /// and wait (20 s at most) for both start-up lines on its stdout. Needs the multi-thread
    /// runtime (it blocks a worker thread while reading them).
    pub async fn start(cfg: GatewayConfig) -> Gateway {
        let dir = TempDir::new("mongomux-gw");
        if direct_mode() {
            let url = cfg.upstream_uri.trim_start_matches("mongodb://");
            let hostport = url.split('/').next().unwrap();
            let addr: SocketAddr = hostport.parse().expect("direct mode: upstream host:port");
            eprintln!("MONGOMUX_TEST_DIRECT: clients talk to the upstream {addr} directly");
            return Gateway {
                child: None,
                addr,
                metrics_addr: None,
                dir,
                exit_status: None,
                stdout_thread: None,
            };
        }
        let bin = gateway_bin();
        let stderr = File::create(dir.path().join("gateway.log")).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--upstream", &cfg.upstream_uri])
            .args(["--pool-size", &cfg.pool_size.to_string()])
            .args(["--checkout-timeout", cfg.checkout_timeout])
            .args(["--metrics-listen", "127.0.0.1:0"]);
        if let Some(n) = cfg.max_clients {
            cmd.args(["--max-clients", &n.to_string()]);
        }
        if let Some(d) = cfg.drain_timeout {
            cmd.args(["--drain-timeout", d]);
        }
        cmd.args(&cfg.extra_args);
        // Keep a developer's environment from changing what the test starts.
        for var in [
            "MONGOMUX_LISTEN",
            "MONGOMUX_UPSTREAM",
            "MONGOMUX_UPSTREAM_USERNAME",
            "MONGOMUX_UPSTREAM_PASSWORD",
            "MONGOMUX_POOL_SIZE",
            "MONGOMUX_CHECKOUT_TIMEOUT",
            "MONGOMUX_MAX_CLIENTS",
            "MONGOMUX_METRICS_LISTEN",
            "MONGOMUX_HANDSHAKE_TIMEOUT",
            "MONGOMUX_IDLE_TIMEOUT",
            "MONGOMUX_DRAIN_TIMEOUT",
            "MONGOMUX_MAX_PINNED",
            "MONGOMUX_CONFIG",
            "MONGOMUX_ACCESS",
            "MONGOMUX_ALLOW_ANY_ADDRESS",
            "MONGOMUX_MAX_CONNECTIONS_PER_SOURCE",
            "MONGOMUX_TLS_MODE",
            "MONGOMUX_TLS_CERT_FILE",
            "MONGOMUX_TLS_KEY_FILE",
            "MONGOMUX_TLS_CLIENT_CA_FILE",
            "MONGOMUX_UPSTREAM_TLS_CA_FILE",
        ] {
            cmd.env_remove(var);
        }
        if let Some((u, p)) = &cfg.upstream_credentials {
            cmd.env("MONGOMUX_UPSTREAM_USERNAME", u)
                .env("MONGOMUX_UPSTREAM_PASSWORD", p);
        }
        if std::env::var_os("MONGOMUX_LOG").is_none() {
            cmd.env("MONGOMUX_LOG", "info");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));

        // Read stdout on a thread for the whole life of the process, so the gateway can never
        // block on a full pipe; hand the lines over a channel.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let copy_path = dir.path().join("gateway.stdout");
        let stdout_thread = std::thread::spawn(move || {
            let mut copy = File::create(copy_path).ok();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = copy.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                let _ = tx.send(line);
            }
        });

        let mut gw = Gateway {
            child: Some(child),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            metrics_addr: None,
            dir,
            exit_status: None,
            stdout_thread: Some(stdout_thread),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut listen = None;
        let mut metrics = None;
        while listen.is_none() || metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match tokio::task::block_in_place(|| {
                rx.recv_timeout(left.min(Duration::from_millis(200)))
            }) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = gw.child.as_mut().unwrap().try_wait().unwrap() {
                        panic!(
                            "gateway exited during start-up with {status}; stderr:\n{}",
                            gw.log_tail(40)
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "gateway printed no `mongomux: listening on` / `mongomux: metrics on` \
                            within 20 s; stderr:\n{}",
                        gw.log_tail(40)
                    );
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = gw.child.as_mut().unwrap().wait().unwrap();
                    panic!(
                        "gateway closed stdout during start-up ({status}); stderr:\n{}",
                        gw.log_tail(40)
                    );
                }
            };
            if let Some(rest) = line.strip_prefix("mongomux: listening on ") {
                listen = Some(
                    rest.trim()
                        .parse::<SocketAddr>()
                        .unwrap_or_else(|e| panic!("bad listen line {line:?}: {e}")),
                );
            } else if let Some(rest) = line.strip_prefix("mongomux: metrics on ") {
                metrics = Some(
                    rest.trim()
                        .parse::<SocketAddr>()
                        .unwrap_or_else(|e| panic!("bad metrics line {line:?}: {e}")),
                );
            }
        }
        gw.addr = listen.unwrap();
        gw.metrics_addr = metrics;
        gw
    }

    pub fn is_direct(&self) -> bool {
        self.child.is_none()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    /// The last `n` lines of the gateway's stderr (its log).
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log_path(), n)
    }

    /// A driver client to the gateway, the way a serverless function would build one (a plain
    /// `mongodb://host:port/` URI, no credentials: client authentication is a later issue).
    pub fn client(&self) -> Client {
        self.client_with(|_| {})
    }

    pub fn client_with(&self, tweak: impl FnOnce(&mut ClientOptions)) -> Client {
        client_to(self.addr, None, tweak)
    }

    /// Like [`Gateway::client_with`], and also records every command event of the client.
    pub fn recorded_client(&self, tweak: impl FnOnce(&mut ClientOptions)) -> (Client, CommandLog) {
        let log = CommandLog::default();
        let sink = log.clone();
        let client = self.client_with(|o| {
            o.command_event_handler = Some(EventHandler::callback(move |ev| sink.push(ev)));
            tweak(o)
        });
        (client, log)
    }

    /// SIGTERM the gateway (no-op in direct mode).
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            signal(c, libc::SIGTERM);
        }
    }

    /// Wait up to `limit` for the gateway to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.exit_status.is_some() {
            return self.exit_status;
        }
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.exit_status = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the gateway process is still alive (true in direct mode).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(c) => c.try_wait().unwrap().is_none(),
        }
    }

    /// Prometheus text from `GET /metrics`, if the endpoint answers.
    pub fn metrics(&self) -> Option<String> {
        http_get(self.metrics_addr?, "/metrics")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill_child(c);
        }
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "---- gateway stderr tail ({}) ----\n{}",
                self.log_path().display(),
                self.log_tail(40)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver clients

/// Build a driver client to `addr`. Short server-selection and connect timeouts keep failing
/// tests fast; everything else is the driver's default unless `tweak` changes it.
pub fn client_to(
    addr: SocketAddr,
    credential: Option<Credential>,
    tweak: impl FnOnce(&mut ClientOptions),
) -> Client {
    let mut o = ClientOptions::default();
    o.hosts = vec![ServerAddress::Tcp {
        host: addr.ip().to_string(),
        port: Some(addr.port()),
    }];
    o.credential = credential;
    o.app_name = Some("mongomux-it".into());
    o.server_selection_timeout = Some(Duration::from_secs(10));
    o.connect_timeout = Some(Duration::from_secs(10));
    tweak(&mut o);
    Client::with_options(o).expect("client options")
}

/// Every command event one client produced, in order, with the instant it was observed
/// (a `Started` event is emitted just before the request is written to the socket).
#[derive(Clone, Default)]
pub struct CommandLog(Arc<Mutex<Vec<(Instant, CommandEvent)>>>);

impl CommandLog {
    fn push(&self, ev: CommandEvent) {
        self.0.lock().unwrap().push((Instant::now(), ev));
    }

    pub fn events(&self) -> Vec<CommandEvent> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Remove and return everything recorded so far.
    pub fn take(&self) -> Vec<(Instant, CommandEvent)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Replies of successful commands named `name`.
    pub fn replies(&self, name: &str) -> Vec<Document> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                CommandEvent::Succeeded(s) if s.command_name == name => Some(s.reply),
                _ => None,
            })
            .collect()
    }

    /// Commands named `name` as sent.
    pub fn started(&self, name: &str) -> Vec<Document> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                CommandEvent::Started(s) if s.command_name == name => Some(s.command),
                _ => None,
            })
            .collect()
    }

    /// Driver connection ids that commands named `name` were sent on.
    pub fn connection_ids(&self, name: &str) -> Vec<u32> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                CommandEvent::Started(s) if s.command_name == name => Some(s.connection.id),
                _ => None,
            })
            .collect()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// The server error code carried by a driver error, wherever the driver put it.
pub fn error_code(e: &Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|w| w.first().map(|w| w.code))
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

/// Code and message of a server error, for comparing what two servers said.
pub fn error_code_and_message(e: &Error) -> Option<(i32, String)> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some((c.code, c.message.clone())),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some((w.code, w.message.clone())),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|w| w.first().map(|w| (w.code, w.message.clone()))),
        _ => None,
    }
}

/// Codes the driver retries or treats as "node is recovering / shutting down"
/// (retryable-reads/-writes specs) plus the gateway's own codes in the CLI contract.
pub const RETRYABLE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// Whether `e` is a failure a driver or application may safely retry: a network error, a cleared
/// pool, a server-selection timeout, a retryable code, or a retryable/transient label.
pub fn is_retryable_failure(e: &Error) -> bool {
    if e.contains_label("RetryableWriteError")
        || e.contains_label("TransientTransactionError")
        || e.contains_label("RetryableError")
    {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. } => true,
        _ => error_code(e).is_some_and(|c| RETRYABLE_CODES.contains(&c)),
    }
}

/// Whether the driver never got a reply from anything listening (network or selection error).
pub fn is_connection_failure(e: &Error) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::ServerSelection { .. }
    )
}

// ---------------------------------------------------------------------------------------------
// Observing from the outside

/// Number of ESTABLISHED TCP sockets whose *local* port is `port`: on loopback, that is the
/// server side of every connection the process listening on `port` has accepted (the client side
/// of each connection has `port` as its remote port and is not counted). Asks the kernel through
/// sock_diag ([`sockdiag`]), which stays cheap with tens of thousands of sockets; falls back to
/// [`established_to_port_proc`] if netlink is unavailable.
pub fn established_to_port(port: u16) -> usize {
    sockdiag::established_with_local_port(port).unwrap_or_else(|_| established_to_port_proc(port))
}

/// [`established_to_port`], read from /proc/net/tcp and /proc/net/tcp6 (the plain reference:
/// it formats every socket on the machine, so it is slow with many).
pub fn established_to_port_proc(port: u16) -> usize {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(_sl), Some(local), Some(_remote), Some(state)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            // state 01 = TCP_ESTABLISHED
            if state != "01" {
                continue;
            }
            let Some((_, p)) = local.rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16) == Ok(port) {
                n += 1;
            }
        }
    }
    n
}

/// Samples the ESTABLISHED sockets with local port `port` on its own thread until stopped, and
/// keeps the maximum. IPv4 only (the servers here listen on 127.0.0.1): see [`sockdiag`] for why
/// each sample costs milliseconds, and so why the interval should not be tiny.
pub struct ConnSampler {
    max: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConnSampler {
    pub fn start(port: u16, interval: Duration) -> ConnSampler {
        let max = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s, st) = (max.clone(), samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let n = sockdiag::established_with_local_port_in(port, &[libc::AF_INET])
                    .unwrap_or_else(|_| established_to_port_proc(port));
                m.fetch_max(n, Ordering::Relaxed);
                s.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(interval);
            }
        });
        ConnSampler {
            max,
            samples,
            stop,
            thread: Some(thread),
        }
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Stop sampling; returns (maximum seen, number of samples).
    pub fn stop(mut self) -> (usize, usize) {
        self.halt();
        (self.max(), self.samples.load(Ordering::Relaxed))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ConnSampler {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Minimal HTTP/1.0 GET on loopback; returns the body of a 200 reply.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then_some(())?;
    head.split_whitespace().nth(1).filter(|c| *c == "200")?;
    Some(body.to_string())
}

/// Sum of every sample of `metric` (any labels) in Prometheus text.
pub fn metric_sum(text: &str, metric: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest
            .rsplit_once('}')
            .map(|(_, v)| v)
            .unwrap_or(rest)
            .split_whitespace()
            .next()?;
        if let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Stacks

/// A fresh FerretDB and a gateway in front of it (`tweak` adjusts the gateway's flags).
pub async fn ferret_stack(tweak: impl FnOnce(&mut GatewayConfig)) -> (Ferret, Gateway) {
    let ferret = Ferret::start().await;
    let mut cfg = GatewayConfig::for_ferret(&ferret);
    tweak(&mut cfg);
    let gw = Gateway::start(cfg).await;
    (ferret, gw)
}
