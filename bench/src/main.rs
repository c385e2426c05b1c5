//! `mongomux-bench`: load tools that start their own FerretDB and gateway, measure, print a table
//! and write CSV. One module per scenario; this file only parses the command line and dispatches.
//!
//! ```text
//! mongomux-bench latency [--concurrency 1,16,64] [--ops N] [--smoke]
//! mongomux-bench data-api [--concurrency 1,16] [--ops N] [--smoke]
//! mongomux-bench idle-memory [--clients 1000,10000] [--smoke]
//! ```
//!
//! Scenario modules own their flags and their run; [`procs`] owns the child processes,
//! [`observe`] the view from `/proc`, [`wire`] the raw OP_MSG client (with [`scram`] to log in), [`report`] tables and CSV.

mod data_api;
mod fan_in;
mod fleet;
mod holder;
mod idle_memory;
mod latency;
mod load;
mod null_relay;
mod observe;
mod procs;
mod report;
mod stub_upstream;
mod throughput;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mongomux-bench",
    version,
    about = "Benchmarks for mongomux: each scenario starts its own FerretDB and gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Single-document find/insert latency, direct to FerretDB and through the gateway,
    /// interleaved in one run.
    Latency(latency::LatencyArgs),
    /// findOne through the HTTP Data API next to the same find over the wire, direct and
    /// through the gateway, interleaved in one run.
    DataApi(data_api::DataApiArgs),
    /// Idle client connections up to the descriptor limit, from several processes: proxy memory
    /// per connection and the upstream connection count.
    FanIn(fan_in::FanInArgs),
    /// (internal) A child of `fan-in` that holds idle client connections.
    #[command(hide = true)]
    HoldClients(holder::HoldArgs),
    /// Operations per second and proxy CPU per forwarded operation in front of the in-memory stub
    /// (and instructions per operation under callgrind).
    Throughput(throughput::ThroughputArgs),
    /// Gateway resident memory with many idle, handshaken client connections.
    IdleMemory(idle_memory::IdleMemoryArgs),
    /// A simulated serverless fleet: execution environments with frozen/thawed driver clients,
    /// three connection strategies, upstream connections counted from outside.
    Fleet(fleet::FleetArgs),
    /// The benchmark-only in-memory upstream the scenarios start (answers from memory, stores
    /// nothing; for measuring the proxies' own cost, never for correctness).
    StubUpstream(stub_upstream::StubArgs),
    /// The benchmark-only null relay: a byte pump, one upstream connection per client, to show
    /// the floor cost of any extra hop on this machine.
    NullRelay(null_relay::RelayArgs),
}

/// Settings every scenario shares.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// FerretDB v1.24 binary (relative paths are also tried from the checkout's root).
    #[arg(long, env = "MONGOMUX_FERRETDB", default_value = ".local/bin/ferretdb")]
    pub ferretdb: PathBuf,
    /// The mongomux binary to benchmark; build it with `cargo build --release -p mongomux`.
    #[arg(long, env = "MONGOMUX_BIN", default_value = "target/release/mongomux")]
    pub gateway: PathBuf,
    /// Folder for CSV results [default: bench/results, or bench/results/tmp with --smoke].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The gateway's upstream pool size (`--pool-size`).
    #[arg(long, default_value_t = 10)]
    pub pool_size: u32,
    /// The gateway's log filter (`--log-level`); its log goes to a temporary file.
    #[arg(long, default_value = "info")]
    pub gateway_log_level: String,
    /// Tiny counts that finish in seconds, so CI can keep the tool from rotting.
    #[arg(long)]
    pub smoke: bool,
}

impl Common {
    /// The folder CSV files go to. Smoke runs default to a git-ignored folder so they never
    /// overwrite the published figures.
    pub fn out_dir(&self) -> PathBuf {
        match &self.out {
            Some(p) => p.clone(),
            None => {
                let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
                if self.smoke {
                    results.join("tmp")
                } else {
                    results
                }
            }
        }
    }

    pub fn ferretdb_bin(&self) -> Result<PathBuf> {
        procs::resolve_bin(
            &self.ferretdb,
            "FerretDB",
            "run scripts/install-deps, or pass --ferretdb / set MONGOMUX_FERRETDB",
        )
    }

    pub fn gateway_bin(&self) -> Result<PathBuf> {
        procs::resolve_bin(
            &self.gateway,
            "mongomux",
            "run `cargo build --release -p mongomux`, or pass --gateway / set MONGOMUX_BIN",
        )
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let scenario = async {
        match cli.command {
            Command::Latency(args) => latency::run(args).await,
            Command::DataApi(args) => data_api::run(args).await,
            Command::IdleMemory(args) => idle_memory::run(args).await,
            Command::Throughput(args) => throughput::run(args).await,
            Command::FanIn(args) => fan_in::run(args).await,
            Command::HoldClients(args) => holder::run(args).await,
            Command::Fleet(args) => fleet::run(args).await,
            Command::StubUpstream(args) => stub_upstream::run(args).await,
            Command::NullRelay(args) => null_relay::run(args).await,
        }
    };
    // On SIGINT/SIGTERM the scenario future is dropped, and with it the child processes it
    // started (their handles kill them on drop), so an interrupted run leaves nothing behind.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = scenario => r,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted (SIGINT)"),
        _ = term.recv() => anyhow::bail!("interrupted (SIGTERM)"),
    }
}
