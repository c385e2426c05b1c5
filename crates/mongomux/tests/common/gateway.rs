//! `mongomux serve` as a child process, started exactly as an operator would (the command-line
//! contract in `docs/dev/gateway-contract.md`), with its log tail printed when a test fails.

use super::*;

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
