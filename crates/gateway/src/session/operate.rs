//! The gateway's admin commands, answered by the session (never forwarded), for users with a
//! gateway operator role on the `admin` database (the authorizer checks role and database):
//!
//! | command | role | does |
//! |---|---|---|
//! | `mongomuxStatus` | monitor | everything below at once (`clientLimit`, default 100) |
//! | `mongomuxPools` | monitor | pools per member: size, open, in use, idle, pinned, waiting, checkout wait percentiles |
//! | `mongomuxClients` | monitor | clients (`address`, `user`, `appName` filter; `limit`, default 1000) |
//! | `mongomuxServers` | monitor | upstream connections |
//! | `mongomuxStats` | monitor | per-command counts, errors and time percentiles |
//! | `mongomuxPause` | admin | requests wait at the gate, each at most `maxWaitMS` (default 30000) |
//! | `mongomuxResume` | admin | ends the pause |
//! | `mongomuxReload` | admin | re-reads the configuration, as SIGHUP |
//! | `mongomuxKillClients` | admin | closes the clients a filter names (at least one part) |
//!
//! Arguments are checked strictly: a field given twice, of the wrong type, or unknown is an
//! error, never a guess. Every control command writes an `admin_command` log event.

use std::time::Duration;

use bson::{doc, Document, RawBsonRef, RawDocument};

use super::reply::Outcome;
use super::Session;
use crate::admin::clients::{AddressFilter, ClientFilter};
use crate::admin::report;
use crate::command::CommandView;
use crate::error::GatewayError;
use crate::identity::users::UserStore;

/// Most clients one reply lists.
const MAX_LISTED: usize = 10_000;
/// Longest pause wait an operator may set: one hour.
const MAX_WAIT_MS: i64 = 3_600_000;

/// The arguments of an admin command, read once.
#[derive(Debug, Default)]
struct Args {
    filter: ClientFilter,
    limit: Option<usize>,
    max_wait_ms: Option<i64>,
}

fn bad(text: String) -> GatewayError {
    GatewayError::AdminCommand(text)
}

/// Fields drivers add to every command; they carry no argument.
fn is_envelope(key: &str) -> bool {
    key.starts_with('$')
        || matches!(
            key,
            "lsid" | "apiVersion" | "apiStrict" | "apiDeprecationErrors" | "comment"
        )
}

fn integer(key: &str, value: RawBsonRef<'_>) -> Result<i64, GatewayError> {
    match value {
        RawBsonRef::Int32(n) => Ok(n.into()),
        RawBsonRef::Int64(n) => Ok(n),
        RawBsonRef::Double(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(bad(format!("{key} must be an integer"))),
    }
}

fn string<'a>(key: &str, value: RawBsonRef<'a>) -> Result<&'a str, GatewayError> {
    match value {
        RawBsonRef::String(s) if !s.is_empty() => Ok(s),
        _ => Err(bad(format!("{key} must be a non-empty string"))),
    }
}

impl Args {
    /// Reads the arguments `allowed` for `command` out of `body`.
    fn read(command: &str, body: &RawDocument, allowed: &[&str]) -> Result<Args, GatewayError> {
        let mut args = Args::default();
        let mut seen: Vec<&str> = Vec::new();
        for element in body {
            let (key, value) = element.map_err(|e| GatewayError::InvalidBson(e.to_string()))?;
            if key == command || is_envelope(key) {
                continue;
            }
            if !allowed.contains(&key) {
                return Err(bad(format!(
                    "{} does not take the field {}",
                    command,
                    key.escape_debug()
                )));
            }
            if seen.contains(&key) {
                return Err(bad(format!("the field {key} is given twice")));
            }
            seen.push(key);
            match key {
                "address" => {
                    let text = string(key, value)?;
                    let parsed = AddressFilter::parse(text).ok_or_else(|| {
                        bad(format!(
                            "address {} is not an IP address or ip:port",
                            text.escape_debug()
                        ))
                    })?;
                    args.filter.address = Some(parsed);
                }
                "user" => args.filter.user = Some(string(key, value)?.to_string()),
                "appName" => args.filter.app_name = Some(string(key, value)?.to_string()),
                "limit" | "clientLimit" => {
                    let n = integer(key, value)?;
                    if !(0..=MAX_LISTED as i64).contains(&n) {
                        return Err(bad(format!("{key} must be between 0 and {MAX_LISTED}")));
                    }
                    args.limit = Some(n as usize);
                }
                "maxWaitMS" => {
                    let n = integer(key, value)?;
                    if !(1..=MAX_WAIT_MS).contains(&n) {
                        return Err(bad(format!(
                            "maxWaitMS must be between 1 and {MAX_WAIT_MS}"
                        )));
                    }
                    args.max_wait_ms = Some(n);
                }
                _ => unreachable!("every allowed field is read"),
            }
        }
        Ok(args)
    }
}

fn to_doc<T: serde::Serialize>(value: &T) -> Document {
    bson::to_document(value).expect("reports serialize to BSON")
}

impl Session {
    /// Answers one admin command.
    pub(super) async fn operate(
        &mut self,
        users: &UserStore,
        view: &CommandView,
        body: &RawDocument,
    ) -> Outcome {
        if !users.auth_required() {
            let e = GatewayError::Unauthorized(format!(
                "{} needs a user with the gatewayMonitor or gatewayAdmin role; this gateway has no users configured",
                view.name
            ));
            return self.replier().error(view.request_id, e, false);
        }
        let answer = match self.operate_on(view, body) {
            Ok(mut reply) => {
                reply.insert("ok", 1.0);
                reply
            }
            Err(e) => return self.replier().error(view.request_id, e, false),
        };
        if view.more_to_come {
            return Outcome::Silent;
        }
        self.replier().reply(view.request_id, &answer)
    }

    fn operate_on(&self, view: &CommandView, body: &RawDocument) -> Result<Document, GatewayError> {
        let name = view.name.as_str();
        let shared = &self.shared;
        let reply = match name {
            "mongomuxStatus" => {
                let args = Args::read(name, body, &["clientLimit"])?;
                let limit = args.limit.unwrap_or(100);
                to_doc(&shared.with_report_parts(|p| report::status(p, limit)))
            }
            "mongomuxPools" => {
                Args::read(name, body, &[])?;
                let pools = shared.with_report_parts(report::pools);
                doc! { "pools": bson::to_bson(&pools).expect("pools serialize") }
            }
            "mongomuxServers" => {
                Args::read(name, body, &[])?;
                let servers = shared.with_report_parts(report::servers);
                doc! { "servers": bson::to_bson(&servers).expect("servers serialize") }
            }
            "mongomuxStats" => {
                Args::read(name, body, &[])?;
                let rows = shared.with_report_parts(report::commands);
                doc! { "commands": bson::to_bson(&rows).expect("rows serialize") }
            }
            "mongomuxClients" => {
                let args = Args::read(name, body, &["address", "user", "appName", "limit"])?;
                let limit = args.limit.unwrap_or(1000);
                to_doc(&shared.with_report_parts(|p| report::clients(p, &args.filter, limit)))
            }
            _ => return self.control(view, body),
        };
        Ok(reply)
    }

    /// The commands that change something; each is logged with who ran it.
    fn control(&self, view: &CommandView, body: &RawDocument) -> Result<Document, GatewayError> {
        let name = view.name.as_str();
        let admin = &self.shared.admin;
        let reply = match name {
            "mongomuxPause" => {
                let args = Args::read(name, body, &["maxWaitMS"])?;
                let ms = args.max_wait_ms.unwrap_or(30_000);
                let before = admin.pause.pause(Duration::from_millis(ms as u64));
                let in_use: usize = self
                    .shared
                    .with_report_parts(report::pools)
                    .iter()
                    .map(|p| p.pool.in_use)
                    .sum();
                doc! { "paused": true, "wasPaused": before.is_some(), "maxWaitMS": ms, "upstreamInUse": in_use as i64 }
            }
            "mongomuxResume" => {
                Args::read(name, body, &[])?;
                let waiting = admin.pause.waiting();
                let ended = admin.pause.resume();
                let secs = ended
                    .and_then(|p| p.since.elapsed().ok())
                    .map_or(0.0, |d| (d.as_secs_f64() * 1000.0).round() / 1000.0);
                doc! { "paused": false, "wasPaused": ended.is_some(), "pausedSecs": secs, "released": waiting as i64 }
            }
            "mongomuxReload" => {
                Args::read(name, body, &[])?;
                let change = admin.reload().map_err(|e| {
                    bad(format!(
                        "reload failed, the running configuration stays: {e}"
                    ))
                })?;
                doc! {
                    "users": change.users as i64,
                    "applied": change.applied.clone(),
                    "needsRestart": change.needs_restart.clone(),
                }
            }
            "mongomuxKillClients" => {
                let args = Args::read(name, body, &["address", "user", "appName"])?;
                if args.filter.is_empty() {
                    return Err(bad(
                        "mongomuxKillClients needs at least one of address, user, appName".into(),
                    ));
                }
                let n = admin.clients.close(&args.filter, self.connection_id);
                doc! { "closing": n as i64 }
            }
            other => {
                return Err(GatewayError::NotSupported(format!(
                    "no admin command {}",
                    other.escape_debug()
                )))
            }
        };
        let by = self.auth.identity.as_ref().map_or("", |u| u.name.as_str());
        tracing::info!(
            event = "admin_command",
            command = name,
            user = %by.escape_debug(),
            peer = %self.peer,
            result = %reply,
            "admin command"
        );
        Ok(reply)
    }
}
