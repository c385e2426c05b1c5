//! The differential harness of the Rust suite: the same contract as `compat/lib/harness.mjs`
//! and `compat/python/harness.py`, so `compat/lib/report.py` reads its results like any other.
//!
//! A scenario runs once per target (`direct` = the upstream, `gateway` = through mongomux) and
//! returns an outcome, compared between the two, and info, only recorded. One JSON line per
//! target and one verdict line per scenario go to `$COMPAT_RESULTS`; a difference is a failure
//! unless `compat/known-differences.json` lists it. Errors are compared by kind, code, code name
//! and labels, never by message.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bson::{Bson, Document};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::event::command::CommandEvent;
use mongodb::event::sdam::SdamEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::Client;
use serde_json::{json, Map, Value};

/// How long one side of one scenario may take (the slowest, a connection drop, takes seconds).
const SCENARIO_DEADLINE: Duration = Duration::from_secs(120);

pub const SUITE: &str = "rust";
pub const DRIVER: &str = "rust";

pub fn env(name: &str) -> Result<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => bail!("{name} is not set: run the suites through compat/run"),
    }
}

/// The connection strings and server names of one side.
///
/// The Rust driver cannot log in to FerretDB 1.24 with SCRAM (FerretDB answers the client's
/// final message with `done: false`, the driver requires `done: true` there), so on the direct
/// side every scenario that is not about authentication runs against a second FerretDB without
/// authentication (`ferretdb-noauth`); the SCRAM and IAM scenarios go to the authenticating one.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: &'static str,
    pub plain: String,
    pub sha256: String,
    pub sha1: String,
    pub seed: String,
    pub txn: String,
    pub iam: String,
    /// What `compat/ctl restart` restarts for a connection drop on this side.
    pub restart: String,
}

impl Target {
    pub fn both() -> Result<[Target; 2]> {
        Ok([
            Target {
                name: "direct",
                plain: env("COMPAT_DIRECT_NOAUTH_URI")?,
                sha256: env("COMPAT_DIRECT_SHA256_URI")?,
                sha1: env("COMPAT_DIRECT_SHA1_URI")?,
                seed: env("COMPAT_DIRECT_NOAUTH_URI")?,
                txn: env("COMPAT_TXN_DIRECT_URI")?,
                iam: env("COMPAT_DIRECT_IAM_URI")?,
                restart: env("COMPAT_RESTART_DIRECT_NOAUTH")?,
            },
            Target {
                name: "gateway",
                plain: env("COMPAT_GATEWAY_URI")?,
                sha256: env("COMPAT_GATEWAY_SHA256_URI")?,
                sha1: env("COMPAT_GATEWAY_SHA1_URI")?,
                seed: env("COMPAT_GATEWAY_SEED_URI")?,
                txn: env("COMPAT_TXN_GATEWAY_URI")?,
                iam: env("COMPAT_GATEWAY_IAM_URI")?,
                restart: env("COMPAT_RESTART_GATEWAY")?,
            },
        ])
    }
}

/// `uri` with extra query options appended.
pub fn with_options(uri: &str, opts: &str) -> String {
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{opts}")
}

/// A database name for one (scenario, target): FerretDB accepts `[A-Za-z0-9_]`.
pub fn db_name(scenario: &str, target: &Target) -> String {
    let mut name = format!(
        "compat_rust_{}_{}",
        scenario.replace('-', "_"),
        &target.name[..1]
    );
    name.truncate(60);
    name
}

/// What one scenario produced on one side.
pub struct Run {
    pub outcome: Value,
    pub info: Value,
}

impl Run {
    pub fn new(outcome: Value) -> Run {
        Run {
            outcome,
            info: json!({}),
        }
    }

    pub fn with_info(outcome: Value, info: Value) -> Run {
        Run { outcome, info }
    }
}

/// A document as relaxed extended JSON, the form every suite compares and the report shows.
pub fn plain(doc: Document) -> Value {
    Bson::Document(doc).into_relaxed_extjson()
}

pub fn plain_all(docs: Vec<Document>) -> Value {
    Value::Array(docs.into_iter().map(plain).collect())
}

pub fn plain_bson(b: Option<&Bson>) -> Value {
    b.cloned().map_or(Value::Null, Bson::into_relaxed_extjson)
}

/// What of an error is compared: its kind, code, code name and labels (never the message).
/// The driver wraps a server's refusal of a login in an `Authentication` error without a code;
/// the code and code name are then those of the first error in its source chain that has one
/// (the server's reply, e.g. 18 AuthenticationFailed).
pub fn error_shape(e: &Error) -> Value {
    let (kind, code, code_name) = kind_and_code(e);
    let (code, code_name) = match code {
        Some(_) => (code, code_name),
        None => chain_code(e).unwrap_or((None, None)),
    };
    let labels: BTreeSet<&String> = e.labels().iter().collect();
    json!({ "kind": kind, "code": code, "codeName": code_name, "labels": labels })
}

type Code = (Option<i32>, Option<String>);

fn kind_and_code(e: &Error) -> (&'static str, Option<i32>, Option<String>) {
    match &*e.kind {
        ErrorKind::Command(c) => ("Command", Some(c.code), Some(c.code_name.clone())),
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            ("Write", Some(w.code), w.code_name.clone())
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            ("WriteConcern", Some(w.code), Some(w.code_name.clone()))
        }
        ErrorKind::InsertMany(i) => {
            let first = i.write_errors.as_ref().and_then(|w| w.first());
            (
                "InsertMany",
                first.map(|w| w.code),
                first.and_then(|w| w.code_name.clone()),
            )
        }
        ErrorKind::BulkWrite(b) => {
            let first = b
                .write_errors
                .iter()
                .min_by_key(|(i, _)| **i)
                .map(|(_, w)| w);
            (
                "BulkWrite",
                first.map(|w| w.code),
                first.and_then(|w| w.code_name.clone()),
            )
        }
        ErrorKind::Authentication { .. } => ("Authentication", None, None),
        ErrorKind::Io(_) => ("Io", None, None),
        ErrorKind::ConnectionPoolCleared { .. } => ("ConnectionPoolCleared", None, None),
        ErrorKind::ServerSelection { .. } => ("ServerSelection", None, None),
        ErrorKind::IncompatibleServer { .. } => ("IncompatibleServer", None, None),
        ErrorKind::InvalidArgument { .. } => ("InvalidArgument", None, None),
        ErrorKind::InvalidResponse { .. } => ("InvalidResponse", None, None),
        ErrorKind::SessionsNotSupported => ("SessionsNotSupported", None, None),
        ErrorKind::Transaction { .. } => ("Transaction", None, None),
        _ => ("other", None, None),
    }
}

/// The code of the first driver error below `e` in its source chain that has one.
fn chain_code(e: &Error) -> Option<Code> {
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        // The driver keeps its source as a `Box<Error>`, which is what `source()` hands out.
        let inner = err
            .downcast_ref::<Error>()
            .or_else(|| err.downcast_ref::<Box<Error>>().map(|b| b.as_ref()));
        if let Some((_, Some(code), name)) = inner.map(kind_and_code) {
            return Some((Some(code), name));
        }
        cur = err.source();
    }
    None
}

/// The error of a failed scenario, by its most specific cause.
fn failure_shape(e: &anyhow::Error) -> Value {
    match e.downcast_ref::<Error>() {
        Some(m) => error_shape(m),
        None => json!({ "kind": "scenario", "code": null, "codeName": null, "labels": [] }),
    }
}

/// What one client's monitors saw. The driver calls the handlers from its own tasks.
#[derive(Default)]
pub struct Events {
    pub started: Vec<String>,
    pub succeeded: Vec<(String, Document)>,
    pub failed: Vec<(String, Value)>,
    /// `awaited` of every heartbeat started.
    pub heartbeats: Vec<bool>,
    /// Last known type of each server (closing a client turns them back to Unknown: not kept).
    pub servers: BTreeMap<String, String>,
}

pub type SharedEvents = Arc<Mutex<Events>>;

pub fn lock(ev: &SharedEvents) -> std::sync::MutexGuard<'_, Events> {
    ev.lock().unwrap_or_else(|p| p.into_inner())
}

/// A client for `uri` with command and SDAM monitoring; `tweak` adjusts its options.
pub async fn client(
    uri: &str,
    tweak: impl FnOnce(&mut ClientOptions),
) -> Result<(Client, SharedEvents)> {
    let mut opts = ClientOptions::parse(uri).await?;
    opts.server_selection_timeout = Some(Duration::from_secs(10));
    let ev: SharedEvents = Arc::default();
    let sink = ev.clone();
    opts.command_event_handler = Some(EventHandler::callback(move |e: CommandEvent| {
        let mut ev = lock(&sink);
        match e {
            CommandEvent::Started(s) => ev.started.push(s.command_name),
            CommandEvent::Succeeded(s) => ev.succeeded.push((s.command_name, s.reply)),
            CommandEvent::Failed(f) => ev.failed.push((f.command_name, error_shape(&f.failure))),
            _ => {}
        }
    }));
    let sink = ev.clone();
    opts.sdam_event_handler = Some(EventHandler::callback(move |e: SdamEvent| {
        let mut ev = lock(&sink);
        match e {
            SdamEvent::ServerHeartbeatStarted(h) => ev.heartbeats.push(h.awaited),
            SdamEvent::TopologyDescriptionChanged(t) => {
                for (addr, info) in t.new_description.servers() {
                    let kind = format!("{:?}", info.server_type());
                    let key = addr.to_string();
                    if kind != "Unknown" || !ev.servers.contains_key(&key) {
                        ev.servers.insert(key, kind);
                    }
                }
            }
            _ => {}
        }
    }));
    tweak(&mut opts);
    Ok((Client::with_options(opts)?, ev))
}

/// The known differences for this driver (`compat/known-differences.json`).
pub struct Known(Vec<Value>);

impl Known {
    pub fn load() -> Result<Known> {
        let path = env("COMPAT_KNOWN")?;
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let file: Value = serde_json::from_str(&text).with_context(|| format!("parsing {path}"))?;
        let list = file["differences"].as_array().cloned().unwrap_or_default();
        Ok(Known(list))
    }

    fn find(&self, scenario: &str) -> Option<String> {
        self.0
            .iter()
            .find(|k| (k["driver"] == DRIVER || k["driver"] == "*") && k["scenario"] == scenario)
            .and_then(|k| k["id"].as_str().map(str::to_owned))
    }
}

/// Records results and verdicts, and remembers what failed.
pub struct Harness {
    results: PathBuf,
    known: Known,
    pub version: String,
    pub failures: Vec<String>,
}

impl Harness {
    pub fn new(version: String) -> Result<Harness> {
        Ok(Harness {
            results: PathBuf::from(env("COMPAT_RESULTS")?),
            known: Known::load()?,
            version,
            failures: Vec::new(),
        })
    }

    fn record(&self, rec: Value) -> Result<()> {
        let mut line = Map::new();
        let ts = bson::DateTime::now()
            .try_to_rfc3339_string()
            .unwrap_or_default();
        line.insert("ts".into(), json!(ts));
        line.insert("suite".into(), json!(SUITE));
        line.insert("driver".into(), json!(DRIVER));
        line.insert("driver_version".into(), json!(self.version));
        if let Value::Object(m) = rec {
            line.extend(m);
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.results)
            .with_context(|| format!("opening {}", self.results.display()))?;
        writeln!(f, "{}", Value::Object(line))?;
        Ok(())
    }

    /// Runs `run` on both targets, records both and the verdict, and compares. A difference not
    /// listed as known, or a side that failed (an expected server error belongs in the outcome),
    /// is remembered as a failure. Returns the gateway side, for checks of its own.
    pub async fn differential<F, Fut>(
        &mut self,
        scenario: &str,
        targets: &[Target; 2],
        run: F,
    ) -> Result<Value>
    where
        F: Fn(Target) -> Fut,
        Fut: Future<Output = Result<Run>>,
    {
        let mut sides = Vec::new();
        for target in targets {
            let t0 = Instant::now();
            let result = tokio::time::timeout(SCENARIO_DEADLINE, run(target.clone()))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no result within {SCENARIO_DEADLINE:?}")));
            let mut side = match result {
                Ok(r) => json!({ "status": "ok", "outcome": r.outcome, "info": r.info }),
                Err(e) => json!({
                    "status": "error",
                    "outcome": { "exception": failure_shape(&e) },
                    "info": { "message": format!("{e:#}") },
                }),
            };
            side["ms"] = json!(t0.elapsed().as_millis() as u64);
            let mut rec = side.clone();
            rec["scenario"] = json!(scenario);
            rec["target"] = json!(target.name);
            self.record(rec)?;
            sides.push(side);
        }
        let gateway = sides.pop().unwrap_or_default();
        let direct = sides.pop().unwrap_or_default();
        let same = direct["outcome"] == gateway["outcome"];
        let both_ok = direct["status"] == "ok" && gateway["status"] == "ok";
        let known = self.known.find(scenario);
        let verdict = match (same, both_ok, known.is_some()) {
            (false, _, true) => "known-difference",
            (false, _, false) => "differs",
            (true, true, _) => "same",
            (true, false, true) => "known-difference",
            (true, false, false) => "error",
        };
        self.record(json!({
            "scenario": scenario, "target": "verdict", "verdict": verdict, "known": known,
        }))?;
        let mark = match verdict {
            "same" => "ok  ",
            "known-difference" => "ok~ ",
            _ => "FAIL",
        };
        println!("{mark} {scenario}: {verdict}");
        if verdict == "differs" || verdict == "error" {
            println!("  direct:  {direct}\n  gateway: {gateway}");
            self.failures.push(format!("{scenario}: {verdict}"));
        }
        Ok(gateway)
    }

    /// A check of the gateway side on its own, beyond the comparison.
    pub fn check(&mut self, scenario: &str, ok: bool, what: &str, got: &Value) {
        if !ok {
            println!("FAIL {scenario}: {what}; got {got}");
            self.failures.push(format!("{scenario}: {what}"));
        }
    }
}

/// `compat/ctl freeze NAME`: SIGSTOP the server.
pub async fn ctl_freeze(name: &str) -> Result<()> {
    let out = tokio::process::Command::new(env("COMPAT_CTL")?)
        .args(["freeze", name])
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "ctl freeze {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Starts `compat/ctl restart NAME DELAY_MS` in the background; await the handle for its output.
pub fn ctl_restart_later(
    name: &str,
    delay_ms: u64,
) -> Result<tokio::task::JoinHandle<Result<String>>> {
    let mut cmd = tokio::process::Command::new(env("COMPAT_CTL")?);
    cmd.args(["restart", name, &delay_ms.to_string()])
        .stdin(std::process::Stdio::null());
    let name = name.to_owned();
    Ok(tokio::spawn(async move {
        let out = cmd.output().await?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() {
            bail!(
                "ctl restart {name}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    }))
}
