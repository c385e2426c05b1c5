//! The `mongomux` binary: parses the command line, layers flags and environment variables over
//! the optional TOML file, sets up logging, and runs the gateway. Nothing else lives here.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use mongomux_gateway::reload;
use mongomux_gateway::settings::parse_uri;
use mongomux_gateway::{ConfigError, Gateway, RawConfig, Settings};

/// A configuration error as one line, its causes included, introduced once.
fn invalid(e: ConfigError) -> anyhow::Error {
    anyhow::anyhow!("invalid configuration: {:#}", anyhow::Error::from(e))
}

#[derive(Parser)]
#[command(
    name = "mongomux",
    version,
    about = "A MongoDB connection gateway for serverless clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(Box<ServeArgs>),
    /// Manage gateway users.
    #[command(subcommand)]
    User(UserCommand),
    /// Validate a configuration (a TOML file, flags and environment, as `serve` would layer
    /// them), resolve a mongodb+srv upstream, print a summary and exit.
    CheckConfig {
        /// The file to check (same as --config).
        file: Option<PathBuf>,
        /// The settings `serve` takes; they override the file.
        #[command(flatten)]
        args: Box<ServeArgs>,
        /// Also print the connection budget: the most upstream connections this many gateways
        /// with this configuration open to each member and in total (docs/deploy.md).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        gateways: Option<u32>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Read a password from stdin and print the `[[users]]` entry (stored keys only) to add to
    /// the configuration file.
    Add {
        /// User name.
        name: String,
        /// Authentication database.
        #[arg(long, default_value = "admin")]
        db: String,
        /// `read` or `readWrite`.
        #[arg(long, default_value = "readWrite")]
        role: String,
        /// Database the user may use; repeat for more [default: all].
        #[arg(long = "database")]
        databases: Vec<String>,
    },
}

/// Every flag also reads an environment variable; flags win over the file.
#[derive(Args, Clone)]
struct ServeArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "MONGOMUX_CONFIG")]
    config: Option<PathBuf>,
    /// The TOML configuration itself, instead of a file (for containers without a shell or a
    /// writable file system; prefer the environment variable, it may hold secrets).
    #[arg(long, env = "MONGOMUX_CONFIG_TOML", hide_env_values = true)]
    config_toml: Option<String>,
    /// Address clients connect to [default: 127.0.0.1:27018].
    #[arg(long, env = "MONGOMUX_LISTEN")]
    listen: Option<SocketAddr>,
    /// Upstream mongodb:// or mongodb+srv:// URI (credentials may be given here or in
    /// --upstream-username / --upstream-password).
    #[arg(long, env = "MONGOMUX_UPSTREAM", hide_env_values = true)]
    upstream: Option<String>,
    /// DNS server (IP:PORT) for mongodb+srv lookups [default: the system's resolver].
    #[arg(long, env = "MONGOMUX_UPSTREAM_RESOLVER")]
    upstream_resolver: Option<SocketAddr>,
    /// Interval between lookups of a sharded mongodb+srv upstream's SRV records, for tests
    /// [default: the lowest SRV TTL, at least 60s].
    #[arg(long, env = "MONGOMUX_UPSTREAM_SRV_RESCAN_INTERVAL", value_parser = humantime::parse_duration)]
    upstream_srv_rescan_interval: Option<Duration>,
    /// Upstream user name, overriding the URI's.
    #[arg(long, env = "MONGOMUX_UPSTREAM_USERNAME")]
    upstream_username: Option<String>,
    /// Upstream password, overriding the URI's (prefer the environment variable).
    #[arg(long, env = "MONGOMUX_UPSTREAM_PASSWORD", hide_env_values = true)]
    upstream_password: Option<String>,
    /// Most pooled connections per upstream member [default: 10].
    #[arg(long, env = "MONGOMUX_POOL_SIZE")]
    pool_size: Option<usize>,
    /// Most pooled connections across all upstream members [default: no cap beyond
    /// pool-size per member].
    #[arg(long, env = "MONGOMUX_MAX_UPSTREAM_CONNECTIONS")]
    max_upstream_connections: Option<usize>,
    /// Longest wait for an upstream connection, e.g. 500ms, 5s [default: 5s].
    #[arg(long, env = "MONGOMUX_CHECKOUT_TIMEOUT", value_parser = humantime::parse_duration)]
    checkout_timeout: Option<Duration>,
    /// Longest wait for an upstream reply before its connection is closed and the client gets
    /// NetworkTimeout (89); a command's longer maxTimeMS, plus 2s, extends it [default: 60s].
    #[arg(long, env = "MONGOMUX_UPSTREAM_TIMEOUT", value_parser = humantime::parse_duration)]
    upstream_timeout: Option<Duration>,
    /// Most client connections at once [default: 10000].
    #[arg(long, env = "MONGOMUX_MAX_CLIENTS")]
    max_clients: Option<usize>,
    /// Address of the Prometheus endpoint (GET /metrics).
    #[arg(long, env = "MONGOMUX_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How long a new client has to send its first message [default: 10s].
    #[arg(long, env = "MONGOMUX_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    handshake_timeout: Option<Duration>,
    /// Idle upstream connections are closed after this [default: 60s].
    #[arg(long, env = "MONGOMUX_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Longest graceful drain on SIGTERM/SIGINT [default: 30s].
    #[arg(long, env = "MONGOMUX_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    drain_timeout: Option<Duration>,
    /// Most upstream connections pinned by open transactions [default: pool-size/2].
    #[arg(long, env = "MONGOMUX_MAX_PINNED")]
    max_pinned: Option<usize>,
    /// Source address or CIDR block allowed to connect; repeat for more [default: loopback only].
    #[arg(long = "access", env = "MONGOMUX_ACCESS", value_delimiter = ',')]
    access: Vec<String>,
    /// Permit an access entry that admits every address (0.0.0.0/0 or ::/0).
    #[arg(long, env = "MONGOMUX_ALLOW_ANY_ADDRESS")]
    allow_any_address: bool,
    /// Permit anonymous mode (no users) on a listener that is not loopback.
    #[arg(long, env = "MONGOMUX_ALLOW_ANONYMOUS_NON_LOOPBACK")]
    allow_anonymous_non_loopback: bool,
    /// Most concurrent connections from one source address; 0 = no limit [default: 0].
    #[arg(long, env = "MONGOMUX_MAX_CONNECTIONS_PER_SOURCE")]
    max_connections_per_source: Option<usize>,
    /// PROXY protocol headers from load balancers: off, optional or required [default: off].
    #[arg(long, env = "MONGOMUX_PROXY_PROTOCOL")]
    proxy_protocol: Option<mongomux_gateway::proxy::ProxyMode>,
    /// Address or CIDR block allowed to send a PROXY header (the load balancers); repeat or
    /// separate with commas. Required when --proxy-protocol is not off.
    #[arg(
        long = "proxy-protocol-sources",
        env = "MONGOMUX_PROXY_PROTOCOL_SOURCES",
        value_delimiter = ','
    )]
    proxy_protocol_sources: Vec<String>,
    /// TLS for clients: disabled, allowed or required [default: disabled].
    #[arg(long, env = "MONGOMUX_TLS_MODE")]
    tls_mode: Option<mongomux_gateway::tls::TlsMode>,
    /// Load-balanced clients (loadBalanced=true): allow, off or required [default: allow].
    #[arg(long, env = "MONGOMUX_LOAD_BALANCED")]
    load_balanced: Option<mongomux_gateway::settings::LoadBalancedMode>,
    /// Server certificate chain, PEM.
    #[arg(long, env = "MONGOMUX_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// Server private key, PEM.
    #[arg(long, env = "MONGOMUX_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// CA that client certificates must chain to (turns on client certificates).
    #[arg(long, env = "MONGOMUX_TLS_CLIENT_CA_FILE")]
    tls_client_ca_file: Option<PathBuf>,
    /// CA file to verify the upstream's certificate (implies TLS to the upstream).
    #[arg(long, env = "MONGOMUX_UPSTREAM_TLS_CA_FILE")]
    upstream_tls_ca_file: Option<PathBuf>,
    /// STS host handed to MONGODB-AWS clients [default: sts.amazonaws.com].
    #[arg(long, env = "MONGOMUX_AWS_STS_HOST")]
    aws_sts_host: Option<String>,
    /// Where STS requests go, e.g. a VPC endpoint [default: https://<aws-sts-host>].
    #[arg(long, env = "MONGOMUX_STS_ENDPOINT")]
    sts_endpoint: Option<String>,
    /// Most concurrent STS calls [default: 32].
    #[arg(long, env = "MONGOMUX_STS_MAX_CONCURRENCY")]
    sts_max_concurrency: Option<usize>,
    /// Deadline of one IAM verification, queueing included [default: 10s].
    #[arg(long, env = "MONGOMUX_STS_TIMEOUT", value_parser = humantime::parse_duration)]
    sts_timeout: Option<Duration>,
    /// Key of session namespacing, hex or base64 (at least 16 bytes); give every gateway of a
    /// deployment the same one [default: random per process].
    #[arg(long, env = "MONGOMUX_SESSION_KEY", hide_env_values = true)]
    session_key: Option<String>,
    /// Most cursors one client connection may hold open [default: 1000].
    #[arg(long, env = "MONGOMUX_MAX_CURSORS_PER_CLIENT")]
    max_cursors_per_client: Option<usize>,
    /// Most cursors one user may hold open over all its connections [default: 5000].
    #[arg(long, env = "MONGOMUX_MAX_CURSORS_PER_USER")]
    max_cursors_per_user: Option<usize>,
    /// Most logical sessions one client connection may use [default: 1000].
    #[arg(long, env = "MONGOMUX_MAX_SESSIONS_PER_CLIENT")]
    max_sessions_per_client: Option<usize>,
    /// Log filter in RUST_LOG syntax [default: info].
    #[arg(long, env = "MONGOMUX_LOG")]
    log_level: Option<String>,
}

impl ServeArgs {
    /// The file with the environment and flags layered over it; checked by
    /// [`Settings::from_raw`], not here.
    fn into_raw(self) -> Result<RawConfig, ConfigError> {
        let mut cfg = match (&self.config, &self.config_toml) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give the configuration as a file (--config) or as text (MONGOMUX_CONFIG_TOML), not both".into(),
                ))
            }
            (Some(path), None) => RawConfig::from_file(path)?,
            (None, Some(text)) => RawConfig::from_toml(text)?,
            (None, None) => RawConfig::default(),
        };
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(uri) = self.upstream {
            cfg.upstream = Some(parse_uri(&uri)?);
        }
        if self.upstream_resolver.is_some() {
            cfg.upstream_resolver = self.upstream_resolver;
        }
        if self.upstream_srv_rescan_interval.is_some() {
            cfg.upstream_srv_rescan_interval = self.upstream_srv_rescan_interval;
        }
        if let Some(v) = self.upstream_username {
            cfg.upstream_username = Some(v);
        }
        if let Some(v) = self.upstream_password {
            cfg.upstream_password = Some(mongomux_auth::Secret::new(v));
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { cfg.$f = v; } )* };
        }
        set!(
            pool_size,
            checkout_timeout,
            max_clients,
            handshake_timeout,
            idle_timeout,
            drain_timeout,
            max_connections_per_source
        );
        set!(tls_mode, aws_sts_host, sts_max_concurrency, sts_timeout);
        set!(load_balanced);
        set!(upstream_timeout);
        set!(
            max_cursors_per_client,
            max_cursors_per_user,
            max_sessions_per_client
        );
        if let Some(v) = self.session_key {
            cfg.session_key = Some(mongomux_auth::Secret::new(v));
        }
        if self.sts_endpoint.is_some() {
            cfg.sts_endpoint = self.sts_endpoint;
        }
        for (flag, field) in [
            (self.tls_cert_file, &mut cfg.tls_cert_file),
            (self.tls_key_file, &mut cfg.tls_key_file),
            (self.tls_client_ca_file, &mut cfg.tls_client_ca_file),
            (self.upstream_tls_ca_file, &mut cfg.upstream_tls_ca_file),
        ] {
            if flag.is_some() {
                *field = flag;
            }
        }
        if self.metrics_listen.is_some() {
            cfg.metrics_listen = self.metrics_listen;
        }
        if !self.access.is_empty() {
            cfg.access = self
                .access
                .iter()
                .map(|cidr| mongomux_gateway::access::AccessEntryConfig {
                    cidr: cidr.clone(),
                    expires: None,
                    comment: None,
                })
                .collect();
        }
        if let Some(v) = self.proxy_protocol {
            cfg.proxy_protocol = v;
        }
        if !self.proxy_protocol_sources.is_empty() {
            cfg.proxy_protocol_sources = self.proxy_protocol_sources;
        }
        cfg.allow_any_address |= self.allow_any_address;
        cfg.allow_anonymous_non_loopback |= self.allow_anonymous_non_loopback;
        if self.max_pinned.is_some() {
            cfg.max_pinned = self.max_pinned;
        }
        if self.max_upstream_connections.is_some() {
            cfg.max_upstream_connections = self.max_upstream_connections;
        }
        Ok(cfg)
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig {
            file,
            mut args,
            gateways,
        } => {
            if file.is_some() {
                args.config = file;
            }
            let name = match (&args.config, &args.config_toml) {
                (Some(f), _) => f.display().to_string(),
                (None, Some(_)) => "MONGOMUX_CONFIG_TOML".into(),
                (None, None) => "configuration".into(),
            };
            let settings = args
                .into_raw()
                .and_then(Settings::from_raw)
                .map_err(invalid)?;
            check_upstream(&settings, gateways.map(|n| n as usize))?;
            println!("{name}: ok");
            Ok(())
        }
        Command::User(UserCommand::Add {
            name,
            db,
            role,
            databases,
        }) => user_add(&name, &db, &role, &databases),
        Command::Serve(args) => {
            let filter = args.log_level.clone().unwrap_or_else(|| "info".into());
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_new(&filter).context("bad --log-level")?,
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let fd_limit = raise_fd_limit();
            let settings = args
                .clone()
                .into_raw()
                .and_then(|mut raw| {
                    fit_clients_to_fd_limit(&mut raw, fd_limit);
                    Settings::from_raw(raw)
                })
                .map_err(invalid)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(settings, *args))
        }
    }
}

/// Resolves a mongodb+srv upstream (the only part of a configuration that needs the network)
/// and prints the upstream's summary, and with `gateways` the connection budget of that many
/// gateways; never a password.
fn check_upstream(settings: &Settings, gateways: Option<usize>) -> Result<()> {
    use mongomux_gateway::upstream::{srv, summary, Seeds};
    let resolved = match &settings.upstream.seeds {
        Seeds::Hosts(_) => None,
        Seeds::Srv { .. } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let resolved = runtime.block_on(async {
                srv::SrvResolver::new(settings.upstream_resolver)?
                    .resolve(&settings.upstream)
                    .await
            });
            Some(resolved.map_err(|e| {
                anyhow::anyhow!("the upstream URI is valid, but its SRV resolution failed: {e}")
            })?)
        }
    };
    for line in summary::summary(&settings.upstream, resolved.as_ref()) {
        println!("{line}");
    }
    if let Some(n) = gateways {
        let budget = summary::budget(
            &settings.upstream,
            resolved.as_ref(),
            settings.pool_size,
            settings.max_upstream_connections,
            n,
        );
        for line in budget {
            println!("{line}");
        }
    }
    Ok(())
}

async fn serve(settings: Settings, args: ServeArgs) -> Result<()> {
    // One line with its cause, like configuration errors.
    let gateway = Gateway::bind(settings)
        .await
        .map_err(|e| anyhow::anyhow!("{:#}", anyhow::Error::from(e)))?;
    tokio::spawn(reload_on_sighup(gateway.shared(), args));
    let mut out = std::io::stdout().lock();
    writeln!(out, "mongomux: listening on {}", gateway.local_addr())?;
    if let Some(addr) = gateway.metrics_addr() {
        writeln!(out, "mongomux: metrics on {addr}")?;
    }
    out.flush()?;
    drop(out);
    tracing::info!(listen = %gateway.local_addr(), "mongomux started");
    if mongomux_gateway::settings::anonymous_beyond_loopback(&gateway.shared().live.settings.load())
    {
        tracing::warn!(
            "ANONYMOUS MODE ON A NON-LOOPBACK LISTENER: no users are configured, so every client that passes the access list acts as the upstream account with no authorization (allowed by allow_anonymous_non_loopback)"
        );
    }
    if gateway.shared().live.settings.load().access.admits_any() {
        tracing::warn!(
            "the access list admits every address: anyone who can reach this port may connect"
        );
    }
    gateway.run(shutdown_signal()).await;
    tracing::info!("mongomux stopped");
    Ok(())
}

/// SIGHUP: re-read the file and the environment, layer the flags again, and apply.
async fn reload_on_sighup(shared: mongomux_gateway::Shared, args: ServeArgs) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install a SIGHUP handler; reload is unavailable");
        return;
    };
    while hup.recv().await.is_some() {
        let fd_limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(soft, _)| soft);
        let applied = args.clone().into_raw().and_then(|mut raw| {
            // The same lowering as at start, so an unchanged file does not read as a change.
            fit_clients_to_fd_limit(&mut raw, fd_limit);
            reload::reload(&shared, raw)
        });
        match applied {
            Ok(change) => {
                tracing::info!(users = change.users, applied = ?change.applied, "configuration reloaded");
                if !change.needs_restart.is_empty() {
                    tracing::warn!(settings = ?change.needs_restart, "changed settings that take effect only after a restart; their running values stay");
                }
            }
            Err(e) => tracing::error!(
                "reload failed, keeping the running configuration: {}",
                invalid(e)
            ),
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
}

/// Many client sockets need many descriptors: use everything the hard limit allows.
fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::debug!(limit = n, "file descriptor limit");
            Some(n)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the file descriptor limit");
            None
        }
    }
}

/// Descriptors kept back from clients beyond the pool and the STS bound: listeners, the metrics
/// endpoint and its scrapers, TLS and config files read on reload, the spare accept descriptor.
const FD_RESERVE: u64 = 64;

/// Lowers `max_clients` so that clients can never take the descriptors the upstream pool and
/// STS calls need. Without this, a gateway at its descriptor limit could hold its clients but
/// fail to reopen a pooled connection; with it, the clients beyond the limit are refused at
/// accept (with a log line) and every held client keeps being served.
fn fit_clients_to_fd_limit(cfg: &mut RawConfig, limit: Option<u64>) {
    let Some(limit) = limit else { return };
    let needed_elsewhere = cfg.pool_size as u64 + cfg.sts_max_concurrency as u64 + FD_RESERVE;
    let room = limit.saturating_sub(needed_elsewhere).max(1);
    if cfg.max_clients as u64 > room {
        tracing::warn!(
            max_clients = cfg.max_clients,
            fd_limit = limit,
            lowered_to = room,
            "max-clients does not fit the file descriptor limit; lowering it so the upstream \
             pool always has descriptors (clients beyond it are refused at accept)"
        );
        cfg.max_clients = room as usize;
    }
}

/// Prints a `[[users]]` entry with SCRAM-SHA-256 and SCRAM-SHA-1 stored keys.
fn user_add(name: &str, db: &str, role: &str, databases: &[String]) -> Result<()> {
    use mongomux_auth::{Mechanism, ScramCredential, Secret};
    use std::io::{BufRead, IsTerminal};
    if role != "read" && role != "readWrite" {
        anyhow::bail!("--role must be read or readWrite");
    }
    if std::io::stdin().is_terminal() {
        eprint!("password for {name} (input is echoed; pipe it in to avoid that): ");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = Secret::new(line.trim_end_matches(['\n', '\r']));
    if password.expose().is_empty() {
        anyhow::bail!("empty password");
    }
    let quote = |s: &str| format!("{s:?}");
    let mut out = String::new();
    out.push_str(&format!(
        "[[users]]\nname = {}\ndb = {}\nrole = {}\n",
        quote(name),
        quote(db),
        quote(role)
    ));
    let dbs: Vec<String> = databases.iter().map(|d| quote(d)).collect();
    out.push_str(&format!("databases = [{}]\n", dbs.join(", ")));
    for m in [Mechanism::ScramSha256, Mechanism::ScramSha1] {
        let c = ScramCredential::try_derive(m, name, &password, m.default_iterations())
            .map_err(|e| anyhow::anyhow!("cannot derive keys: {e}"))?;
        out.push_str(&format!(
            "[[users.scram]]\nmechanism = {}\nsalt = {}\niterations = {}\nstored_key = {}\nserver_key = {}\n",
            quote(m.name()),
            quote(&c.salt),
            c.iterations,
            quote(&c.stored_key),
            quote(&c.server_key)
        ));
    }
    print!("{out}");
    Ok(())
}
