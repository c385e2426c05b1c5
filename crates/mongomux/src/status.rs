//! `mongomux status`: connects to a gateway as one of its operators (a user with the
//! gatewayMonitor or gatewayAdmin role) with the official Rust driver, runs `mongomuxStatus`
//! and prints the reply as tables for a terminal, or as JSON.
//!
//! Every value shown comes from the gateway and some from its clients (`appName`, driver,
//! user names): control characters are escaped before they reach the terminal, so a client
//! cannot move the cursor or rewrite the operator's screen.

use anyhow::{Context as _, Result};
use bson::{doc, Bson, Document};

/// One column: its heading and the path of its value in a row (`a.b` for nested fields).
struct Column(&'static str, &'static str);

const POOLS: &[Column] = &[
    Column("MEMBER", "member"),
    Column("TYPE", "serverType"),
    Column("SIZE", "size"),
    Column("OPEN", "open"),
    Column("IN USE", "inUse"),
    Column("IDLE", "idle"),
    Column("PINNED", "pinned"),
    Column("WAITING", "waiting"),
    Column("WAIT P50 µs", "checkoutWait.p50Micros"),
    Column("WAIT P99 µs", "checkoutWait.p99Micros"),
    Column("TIMEOUTS", "checkoutTimeouts"),
];

const SERVERS: &[Column] = &[
    Column("MEMBER", "member"),
    Column("ID", "id"),
    Column("STATE", "state"),
    Column("AGE s", "ageSecs"),
    Column("IN STATE s", "stateSecs"),
    Column("CURSORS", "openCursors"),
];

const CLIENTS: &[Column] = &[
    Column("ID", "id"),
    Column("ADDRESS", "address"),
    Column("USER", "user"),
    Column("APP", "appName"),
    Column("DRIVER", "driver"),
    Column("CONNECTED s", "connectedSecs"),
    Column("RUNNING", "inFlight.command"),
    Column("FOR s", "inFlight.secs"),
    Column("CURSORS", "cursors"),
    Column("SESSIONS", "sessions"),
];

const COMMANDS: &[Column] = &[
    Column("COMMAND", "command"),
    Column("COUNT", "count"),
    Column("ERRORS", "errors"),
    Column("P50 µs", "p50Micros"),
    Column("P95 µs", "p95Micros"),
    Column("P99 µs", "p99Micros"),
    Column("MAX µs", "maxMicros"),
];

/// Runs the command and prints it.
pub async fn run(uri: &str, json: bool, clients: u32) -> Result<()> {
    let mut options = mongodb::options::ClientOptions::parse(uri)
        .await
        .context("bad --uri")?;
    if options.server_selection_timeout.is_none() {
        options.server_selection_timeout = Some(std::time::Duration::from_secs(5));
    }
    options
        .app_name
        .get_or_insert_with(|| "mongomux status".into());
    let client = mongodb::Client::with_options(options)?;
    let reply = client
        .database("admin")
        .run_command(doc! { "mongomuxStatus": 1, "clientLimit": i64::from(clients) })
        .await
        .context("mongomuxStatus failed")?;
    if json {
        println!("{}", Bson::Document(reply).into_relaxed_extjson());
    } else {
        print!("{}", render(&reply));
    }
    Ok(())
}

/// The tables for a `mongomuxStatus` reply.
pub fn render(reply: &Document) -> String {
    let mut out = String::new();
    if let Ok(g) = reply.get_document("gateway") {
        let paused = match g.get_document("paused") {
            Ok(p) => format!(
                "PAUSED since {} (max wait {} ms, {} waiting)",
                text(p.get("since")),
                text(p.get("maxWaitMS")),
                text(p.get("waiting"))
            ),
            Err(_) => "forwarding".to_string(),
        };
        out.push_str(&format!(
            "mongomux {}  up {}s  clients {}/{}  topology {}  sessions {}  cursors {}  reloads {}  {}{}\n",
            text(g.get("version")),
            text(g.get("uptimeSecs")),
            text(g.get("clients")),
            text(g.get("maxClients")),
            text(g.get("topology")),
            text(g.get("sessions")),
            text(g.get("cursors")),
            text(g.get("reloads")),
            paused,
            if g.get_bool("draining").unwrap_or(false) { "  DRAINING" } else { "" },
        ));
    }
    section(&mut out, "POOLS", reply.get_array("pools").ok(), POOLS);
    section(
        &mut out,
        "SERVERS",
        reply.get_array("servers").ok(),
        SERVERS,
    );
    let clients = reply.get_document("clients").ok();
    let title = match clients {
        Some(c) if c.get_bool("truncated").unwrap_or(false) => format!(
            "CLIENTS (first {} of {})",
            c.get_array("clients").map_or(0, |a| a.len()),
            text(c.get("total"))
        ),
        _ => "CLIENTS".to_string(),
    };
    let list = clients.and_then(|c| c.get_array("clients").ok());
    section(&mut out, &title, list, CLIENTS);
    section(
        &mut out,
        "COMMANDS",
        reply.get_array("commands").ok(),
        COMMANDS,
    );
    out
}

fn section(out: &mut String, title: &str, rows: Option<&bson::Array>, columns: &[Column]) {
    out.push('\n');
    out.push_str(title);
    out.push('\n');
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .flatten()
        .filter_map(Bson::as_document)
        .map(|row| columns.iter().map(|c| text(lookup(row, c.1))).collect())
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.0.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    out.push_str(&line(columns.iter().map(|c| c.0).collect()));
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
}

fn lookup<'a>(row: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut value = row.get(parts.next()?)?;
    for part in parts {
        value = value.as_document()?.get(part)?;
    }
    Some(value)
}

/// A value as a cell: numbers and strings plainly, nothing as `-`, control characters escaped.
fn text(value: Option<&Bson>) -> String {
    let raw = match value {
        None | Some(Bson::Null) => return "-".to_string(),
        Some(Bson::String(s)) => s.clone(),
        Some(Bson::Double(f)) => format!("{f}"),
        Some(other) => other.to_string(),
    };
    raw.chars()
        .flat_map(|c| match c.is_control() {
            true => c.escape_default().collect::<Vec<_>>(),
            false => vec![c],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_escape_client_strings() {
        let reply = doc! {
            "gateway": { "version": "0.1.0", "uptimeSecs": 5_i64, "clients": 1_i64, "maxClients": 10_i64,
                "topology": "Single", "sessions": 0_i64, "cursors": 0_i64, "reloads": 0_i64, "paused": Bson::Null, "draining": false },
            "pools": [ { "member": "127.0.0.1:27017", "serverType": "standalone", "size": 4_i64, "open": 1_i64,
                "inUse": 0_i64, "idle": 1_i64, "pinned": 0_i64, "waiting": 0_i64,
                "checkoutWait": { "p50Micros": 3_i64, "p99Micros": 9_i64 }, "checkoutTimeouts": 0_i64 } ],
            "servers": [],
            "clients": { "total": 1_i64, "truncated": false, "clients": [
                { "id": 7_i64, "address": "127.0.0.1:5000", "user": Bson::Null, "appName": "evil\x1b[2J\r\nx",
                  "inFlight": { "command": "find", "secs": 0.5 }, "cursors": 0_i64, "sessions": 1_i64 } ] },
            "commands": [],
        };
        let out = render(&reply);
        assert!(
            out.starts_with("mongomux 0.1.0  up 5s  clients 1/10  topology Single"),
            "{out}"
        );
        assert!(out.contains("127.0.0.1:27017  standalone  4"), "{out}");
        assert!(!out.contains('\x1b') && !out.contains('\r'), "{out}");
        assert!(out.contains("evil\\u{1b}[2J\\r\\nx"), "{out}");
        assert!(out.contains("find"), "{out}");
        assert!(
            out.contains("SERVERS\nMEMBER  ID  STATE  AGE s  IN STATE s  CURSORS\n(none)\n"),
            "{out}"
        );
    }
}
