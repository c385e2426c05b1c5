//! The upstream processes the tests run against: FerretDB on SQLite with authentication, and
//! nx-27017 for transactions; each on a free loopback port, killed when its handle drops.

use super::*;

use mongomux_testkit::{RawConn, DEFAULT_LIMIT};

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
                    Ok(mut c) => match c
                        .command(&doc! {"ping": 1, "$db": "admin"}, DEFAULT_LIMIT)
                        .await
                    {
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

    /// A connection straight to FerretDB, authenticated as the setup user (see
    /// [`mongomux_testkit`]).
    pub async fn direct(&self) -> RawConn {
        self.try_direct()
            .await
            .unwrap_or_else(|e| panic!("direct connection to FerretDB: {e}"))
    }

    async fn try_direct(&self) -> Result<RawConn, String> {
        let conn = if self.auth {
            RawConn::connect_scram(self.addr(), UPSTREAM_USER, UPSTREAM_PASSWORD).await
        } else {
            RawConn::connect(self.addr(), None).await
        };
        conn.map_err(|e| e.to_string())
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
