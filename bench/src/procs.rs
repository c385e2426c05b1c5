//! The processes a benchmark runs against: a FerretDB on SQLite with authentication on, and
//! `mongomux serve` in front of it, each started as a child process exactly as an operator would
//! start it (the command-line contract in `docs/dev/gateway-contract.md`).
//!
//! What it owns: finding the binaries (flags, then environment, then the checkout's defaults),
//! temporary data folders, free loopback ports, waiting for readiness with a deadline, and killing
//! every child when its handle is dropped. A child that fails to start is reported with the tail
//! of its log.
//!
//! What it must never do: reach into the gateway's internals, wait without a deadline, or print
//! the upstream password (it is handed to the gateway through its environment only).

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use bson::doc;

use crate::load::Target;
use crate::stub_upstream::StubUpstream;
use mongomux_testkit::{is_ok, Mechanism, RawConn};

/// The user FerretDB is set up with; the gateway authenticates upstream as this user.
pub const UPSTREAM_USER: &str = "mmux-bench";
/// Throwaway password of [`UPSTREAM_USER`] (a FerretDB in a temporary folder, on loopback).
pub(crate) const UPSTREAM_PASSWORD: &str = "bench-only-Pa55";

/// Longest wait for a child to become ready.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Where the checkout is, for the default binary paths when the bench runs from elsewhere.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Resolve a binary path: as given if it exists (relative to the working directory), else
/// relative to the checkout.
pub fn resolve_bin(path: &Path, what: &str, hint: &str) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_relative() {
        let in_repo = repo_root().join(path);
        if in_repo.is_file() {
            return Ok(in_repo);
        }
    }
    bail!("{what} not found at {}: {hint}", path.display())
}

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir(path))
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
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_tail(path: &Path, lines: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Fail if the child has already exited, with its log tail.
fn check_alive(child: &mut Child, what: &str, log: &Path) -> Result<()> {
    if let Some(status) = child.try_wait()? {
        bail!(
            "{what} exited during start-up with {status}; log tail:\n{}",
            log_tail(log, 30)
        );
    }
    Ok(())
}

/// A raw client connection to the FerretDB at `addr`, handshaken and logged in as the setup user;
/// each step within `limit`.
pub async fn login(addr: SocketAddr, limit: Duration) -> Result<RawConn> {
    let (mut conn, _) = RawConn::handshake(addr, None, limit).await?;
    conn.authenticate(
        Mechanism::ScramSha256,
        UPSTREAM_USER,
        UPSTREAM_PASSWORD,
        limit,
    )
    .await?;
    Ok(conn)
}

/// What the gateway is put in front of: an address, and whether it wants the bench's upstream
/// user to log in (FerretDB with auth) or no authentication at all (the benchmark-only stub, or
/// FerretDB started without auth for the fleet simulator, whose Rust driver cannot log in to
/// FerretDB directly).
#[derive(Clone, Copy, Debug)]
pub struct UpstreamSpec {
    pub addr: SocketAddr,
    pub auth: bool,
}

/// A FerretDB process on SQLite, in its own temp folder; authentication on unless started with
/// [`Ferret::start_without_auth`].
pub struct Ferret {
    child: Child,
    pub port: u16,
    dir: TempDir,
    auth: bool,
}

impl Ferret {
    /// Start FerretDB on a free loopback port and wait until an authenticated `ping` succeeds.
    pub async fn start(bin: &Path) -> Result<Ferret> {
        Ferret::start_with(bin, true).await
    }

    /// Start FerretDB with no authentication (its v1 default), for clients that cannot log in to
    /// it directly.
    pub async fn start_without_auth(bin: &Path) -> Result<Ferret> {
        Ferret::start_with(bin, false).await
    }

    async fn start_with(bin: &Path, auth: bool) -> Result<Ferret> {
        let dir = TempDir::new("mongomux-bench-ferret")?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let (port, debug_port) = (free_port()?, free_port()?);
        let log = std::fs::File::create(dir.path().join("ferretdb.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--handler=sqlite")
            .arg(format!("--sqlite-url=file:{}/", data.display()))
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .arg(format!("--debug-addr=127.0.0.1:{debug_port}"))
            .arg(format!("--state-dir={}", dir.path().display()))
            .arg("--telemetry=disable")
            .arg("--log-level=WARN");
        if auth {
            cmd.arg("--test-enable-new-auth")
                .arg(format!("--setup-username={UPSTREAM_USER}"))
                .arg(format!("--setup-password={UPSTREAM_PASSWORD}"))
                .arg("--setup-database=admin");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut ferret = Ferret {
            child,
            port,
            dir,
            auth,
        };
        ferret.wait_ready().await?;
        Ok(ferret)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("ferretdb.log")
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        let addr = self.addr();
        let log = self.log_path();
        let mut last_error = String::from("none");
        loop {
            check_alive(&mut self.child, "FerretDB", &log)?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                // The setup user may appear a moment after the port opens: retry until then.
                match self.ping().await {
                    Ok(()) => return Ok(()),
                    Err(e) => last_error = format!("{e:#}"),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "FerretDB on {addr}: no authenticated ping within {START_DEADLINE:?} \
                     (last error: {last_error}); log tail:\n{}",
                    log_tail(&log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.connect(Duration::from_secs(10)).await?;
        let reply = conn
            .command(&doc! {"ping": 1, "$db": "admin"}, Duration::from_secs(10))
            .await?;
        if !is_ok(&reply) {
            bail!("ping failed: {reply}");
        }
        Ok(())
    }

    /// A raw client connection straight to FerretDB, handshaken and (with auth on) logged in as
    /// the setup user; each step within `limit`.
    pub async fn connect(&self, limit: Duration) -> Result<RawConn> {
        if self.auth {
            login(self.addr(), limit).await
        } else {
            Ok(RawConn::handshake(self.addr(), None, limit).await?.0)
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn spec(&self) -> UpstreamSpec {
        UpstreamSpec {
            addr: self.addr(),
            auth: self.auth,
        }
    }
}

impl Drop for Ferret {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start the gateway, beyond the upstream it fronts.
pub struct GatewayOpts {
    pub pool_size: u32,
    pub max_clients: Option<u32>,
    pub log_level: String,
}

/// A running `mongomux serve` in front of a [`Ferret`].
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    log: PathBuf,
    _dir: TempDir,
}

impl Gateway {
    /// Start the gateway on a port the kernel picks and wait for its `listening on` line.
    pub fn start(bin: &Path, upstream: &UpstreamSpec, opts: &GatewayOpts) -> Result<Gateway> {
        let dir = TempDir::new("mongomux-bench-gateway")?;
        let log = dir.path().join("mongomux.log");
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg(format!(
                "--upstream=mongodb://{}/?authSource=admin",
                upstream.addr
            ))
            .arg(format!("--pool-size={}", opts.pool_size))
            .arg(format!("--log-level={}", opts.log_level));
        if upstream.auth {
            cmd.env("MONGOMUX_UPSTREAM_USERNAME", UPSTREAM_USER)
                .env("MONGOMUX_UPSTREAM_PASSWORD", UPSTREAM_PASSWORD);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        if let Some(n) = opts.max_clients {
            cmd.arg(format!("--max-clients={n}"));
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let pid = child.id();
        let addr = wait_listening_line(&mut child, &log, START_DEADLINE);
        let mut gw = Gateway {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
            log,
            _dir: dir,
        };
        // On failure `gw` is dropped, which kills the process.
        gw.addr = addr?;
        Ok(gw)
    }

    /// Whether the gateway is still running; an error carries its log tail.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "mongomux exited with {status}; log tail:\n{}",
                log_tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// The last lines of the gateway's log (stderr), for reports of misbehaviour.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The upstream a scenario runs against: FerretDB with auth (end to end) or the benchmark-only
/// in-memory stub (the proxies' own cost).
pub enum UpstreamProc {
    Ferret(Ferret),
    Stub(StubUpstream),
}

impl UpstreamProc {
    pub async fn ferret(bin: &Path) -> Result<UpstreamProc> {
        Ok(UpstreamProc::Ferret(Ferret::start(bin).await?))
    }

    pub fn stub() -> Result<UpstreamProc> {
        Ok(UpstreamProc::Stub(StubUpstream::start()?))
    }

    pub fn spec(&self) -> UpstreamSpec {
        match self {
            UpstreamProc::Ferret(f) => f.spec(),
            UpstreamProc::Stub(s) => s.spec(),
        }
    }

    pub fn port(&self) -> u16 {
        self.spec().addr.port()
    }

    pub fn pid(&self) -> u32 {
        match self {
            UpstreamProc::Ferret(f) => f.child.id(),
            UpstreamProc::Stub(s) => s.pid,
        }
    }

    /// How tables name it.
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamProc::Ferret(_) => "FerretDB (SQLite, auth)",
            UpstreamProc::Stub(_) => "benchmark-only in-memory stub upstream",
        }
    }

    /// The load target for clients going straight to the upstream.
    pub fn direct_target(&self) -> Target {
        let spec = self.spec();
        Target {
            name: "direct",
            addr: spec.addr,
            login: spec.auth,
            hello: true,
        }
    }

    /// A logged-in connection for seeding data; `None` for the stub, which stores nothing.
    pub async fn seed_conn(&self, limit: Duration) -> Result<Option<RawConn>> {
        match self {
            UpstreamProc::Ferret(f) => Ok(Some(f.connect(limit).await?)),
            UpstreamProc::Stub(_) => Ok(None),
        }
    }
}

/// The peer proxy mongobetween (github.com/coinbase/mongobetween), in front of the same upstream
/// with the same pool size, when the run is given its binary. Not installed by the project: the
/// Go module proxy does not serve that module (see docs/benchmarks.md).
pub struct Mongobetween {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    log: PathBuf,
    _dir: TempDir,
}

impl Mongobetween {
    pub async fn start(
        bin: &Path,
        upstream: &UpstreamSpec,
        pool_size: u32,
    ) -> Result<Mongobetween> {
        let dir = TempDir::new("mongomux-bench-mongobetween")?;
        let log = dir.path().join("mongobetween.log");
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(bin);
        // It always creates a statsd client; aimed at a loopback port nobody listens on, the
        // datagrams are dropped.
        cmd.arg("-statsd=127.0.0.1:8125")
            .arg("-loglevel=warn")
            .arg("-ping");
        if upstream.auth {
            cmd.arg(format!("-username={UPSTREAM_USER}"))
                .arg(format!("-password={UPSTREAM_PASSWORD}"));
        }
        cmd.arg(format!(
            "{addr}=mongodb://{}/admin?maxPoolSize={pool_size}&label=bench",
            upstream.addr
        ));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.path().join("stderr.log"))?)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let pid = child.id();
        let mut mb = Mongobetween {
            child,
            addr,
            pid,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            check_alive(&mut mb.child, "mongobetween", &mb.log)?;
            // No `hello`: mongobetween forwards it to a handshaken upstream connection, which
            // refuses client metadata a second time (code 186).
            if let Ok(Ok(mut conn)) =
                tokio::time::timeout(Duration::from_secs(5), RawConn::connect(addr, None)).await
            {
                let ping = doc! {"ping": 1, "$db": "admin"};
                if let Ok(reply) = conn.command(&ping, Duration::from_secs(5)).await {
                    if is_ok(&reply) {
                        return Ok(mb);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("mongobetween did not answer hello on {addr} within {START_DEADLINE:?}; log tail:\n{}", log_tail(&mb.log, 30));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Mongobetween {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait for a `mongomux serve` child (piped stdout) to print `mongomux: listening on ADDR`;
/// keeps draining its stdout afterwards so it never blocks on a full pipe. Errors carry the tail
/// of `log` (its stderr).
pub fn wait_listening_line(child: &mut Child, log: &Path, limit: Duration) -> Result<SocketAddr> {
    let stdout = child.stdout.take().context("gateway stdout not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if let Some(a) = line.strip_prefix("mongomux: listening on ") {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let deadline = Instant::now() + limit;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(addr) => return addr.parse().context("gateway printed a bad address"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed without the line: the process is exiting.
                std::thread::sleep(Duration::from_millis(200));
                check_alive(child, "mongomux", log)?;
                bail!("mongomux closed stdout without printing `listening on`");
            }
        }
        check_alive(child, "mongomux", log)?;
        if Instant::now() > deadline {
            bail!(
                "mongomux did not print `listening on` within {limit:?}; log tail:\n{}",
                log_tail(log, 30)
            );
        }
    }
}
