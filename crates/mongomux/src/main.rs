//! The `mongomux` binary: parses the command line, layers flags and environment variables over
//! the optional TOML file, sets up logging, and runs the gateway. Nothing else lives here.

#![forbid(unsafe_code)]

mod serve_args;
mod status;

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use mongomux_gateway::reload;
use mongomux_gateway::{ConfigError, Gateway, RawConfig, Settings};
use serve_args::{LogFormat, ServeArgs};

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
    /// Show a running gateway's pools, upstream connections, clients and per-command figures,
    /// as one of its operators (a user with the gatewayMonitor or gatewayAdmin role).
    Status {
        /// The gateway's connection string with an operator's credentials, e.g.
        /// mongodb://ops:PASSWORD@127.0.0.1:27017/?authSource=admin
        #[arg(long, env = "MONGOMUX_STATUS_URI", hide_env_values = true)]
        uri: String,
        /// Print the reply as JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Most clients listed.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=10_000))]
        clients: u32,
    },
    /// Manage Data API keys.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Print a new random bearer token for the JSON admin endpoints, and the
    /// admin_token_sha256 line to put in the configuration.
    AdminToken,
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
enum ApiKeyCommand {
    /// Print a new random key (once; keep it) and the `[[api_keys]]` entry holding its SHA-256,
    /// acting as gateway user USER.
    Add {
        /// A name for the key (logs, revocation).
        name: String,
        /// The gateway user the key acts as.
        #[arg(long)]
        user: String,
        /// That user's authentication database.
        #[arg(long, default_value = "admin")]
        db: String,
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
        /// `read` or `readWrite`; or an operator role with no data access, `gatewayMonitor`
        /// (the admin commands that show state) or `gatewayAdmin` (all admin commands).
        #[arg(long, default_value = "readWrite")]
        role: String,
        /// Database the user may use; repeat for more [default: all].
        #[arg(long = "database")]
        databases: Vec<String>,
    },
}

/// Every flag also reads an environment variable; flags win over the file.
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
        Command::Status { uri, json, clients } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(status::run(&uri, json, clients)),
        Command::AdminToken => admin_token(),
        Command::ApiKey(ApiKeyCommand::Add { name, user, db }) => {
            let (key, digest) = mongomux_gateway::identity::api_keys::generate();
            let quote = |s: &str| format!("{s:?}");
            println!("# The key (shown once; give it to the function as its apiKey header):");
            println!("# {key}");
            println!(
                "[[api_keys]]\nname = {}\nuser = {}\ndb = {}\nsha256 = {}",
                quote(&name),
                quote(&user),
                quote(&db),
                quote(&digest)
            );
            Ok(())
        }
        Command::Serve(args) => {
            init_logging(&args)?;
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
/// Logs to stderr, as text for a terminal or one JSON object per line (`--log-format json`) for
/// log pipelines: the event's fields at the top level, user-controlled values escaped by the
/// JSON encoder (a CR/LF in an appName cannot start a new line).
fn init_logging(args: &ServeArgs) -> Result<()> {
    let filter = args.log_level.clone().unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).context("bad --log-level")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}

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
    let shared = gateway.shared();
    shared.admin.set_reloader(std::sync::Arc::new({
        let shared = shared.clone();
        move || reload_now(&shared, &args)
    }));
    tokio::spawn(reload_on_sighup(shared));
    let mut out = std::io::stdout().lock();
    writeln!(out, "mongomux: listening on {}", gateway.local_addr())?;
    if let Some(addr) = gateway.metrics_addr() {
        writeln!(out, "mongomux: metrics on {addr}")?;
    }
    if let Some(addr) = gateway.data_api_addr() {
        writeln!(out, "mongomux: data api on {addr}")?;
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

/// SIGHUP: reload, as `mongomuxReload` does.
async fn reload_on_sighup(shared: mongomux_gateway::Shared) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install a SIGHUP handler; reload is unavailable");
        return;
    };
    while hup.recv().await.is_some() {
        let _ = shared.admin.reload();
    }
}

/// Re-reads the file and the environment, layers the flags again, applies the result, and
/// logs what happened; the error is one line without secrets.
fn reload_now(
    shared: &mongomux_gateway::Shared,
    args: &ServeArgs,
) -> std::result::Result<mongomux_gateway::settings::SettingsChange, String> {
    let fd_limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    let applied = args.clone().into_raw().and_then(|mut raw| {
        // The same lowering as at start, so an unchanged file does not read as a change.
        fit_clients_to_fd_limit(&mut raw, fd_limit);
        reload::reload(shared, raw)
    });
    match applied {
        Ok(change) => {
            tracing::info!(event = "reload", users = change.users, applied = ?change.applied, "configuration reloaded");
            if !change.needs_restart.is_empty() {
                tracing::warn!(settings = ?change.needs_restart, "changed settings that take effect only after a restart; their running values stay");
            }
            Ok(change)
        }
        Err(e) => {
            let e = invalid(e).to_string();
            tracing::error!("reload failed, keeping the running configuration: {e}");
            Err(e)
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

/// Prints a random token (256 bits, hex) and the configuration line holding its SHA-256.
fn admin_token() -> Result<()> {
    // The same kind of secret as an API key: 256 random bits, configured by its SHA-256.
    let (secret, hash) = mongomux_gateway::identity::api_keys::generate();
    println!("# Give this token to the tools that read /admin/... (Authorization: Bearer TOKEN):");
    println!("# {secret}");
    println!("admin_token_sha256 = \"{hash}\"");
    Ok(())
}

/// Prints a `[[users]]` entry with SCRAM-SHA-256 and SCRAM-SHA-1 stored keys.
fn user_add(name: &str, db: &str, role: &str, databases: &[String]) -> Result<()> {
    use mongomux_auth::{Mechanism, ScramCredential, Secret};
    use std::io::{BufRead, IsTerminal};
    if !["read", "readWrite", "gatewayMonitor", "gatewayAdmin"].contains(&role) {
        anyhow::bail!("--role must be read, readWrite, gatewayMonitor or gatewayAdmin");
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
