//! What one invocation did with the environment's client, so that a user can see in CloudWatch
//! that reusing the client is taking effect: whether the client was created in this invocation
//! (a cold start) or reused, how many connections were opened and how long opening them took
//! (connect, handshake, authentication), and how many of those logins were MONGODB-AWS, each of
//! which fetched the function's IAM credentials and had the gateway call STS.
//!
//! Reported twice: as fields of one `tracing` event (`mongomux-lambda: invocation`), and as one
//! line of CloudWatch Embedded Metric Format on stdout, which CloudWatch Logs turns into metrics
//! (namespace `mongomux/lambda`, dimension `FunctionName`) with no API call from the function.
//!
//! The connection figures come from the driver's connection-pool events, counted in
//! [`ConnectionStats`]; an invocation reports the difference between its start and its end.
//! With concurrent invocations (Lambda Managed Instances) a connection opened during two
//! overlapping invocations is reported by both: the figures say what the environment did while
//! the invocation ran.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mongodb::event::cmap::CmapEvent;
use serde_json::{json, Value};

/// Connections the environment's client opened, as the driver reported them.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    opened: AtomicU64,
    connect_micros: AtomicU64,
}

impl ConnectionStats {
    /// Counts a connection that became ready, with the time it took.
    pub fn note(&self, event: &CmapEvent) {
        if let CmapEvent::ConnectionReady(e) = event {
            self.opened.fetch_add(1, Ordering::Relaxed);
            let micros = u64::try_from(e.duration.as_micros()).unwrap_or(u64::MAX);
            self.connect_micros.fetch_add(micros, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.connect_micros.load(Ordering::Relaxed),
        )
    }
}

/// An invocation in progress; [`Invocation::finish`] reports it.
#[derive(Debug)]
pub struct Invocation {
    pub(crate) kit: crate::Kit,
    pub(crate) started: Instant,
    pub(crate) created_before: u64,
    pub(crate) stats_before: (u64, u64),
}

/// What one invocation did with the client.
#[derive(Debug, Clone, PartialEq)]
pub struct InvocationReport {
    /// The client was created in this invocation: the first of the environment.
    pub cold_start: bool,
    /// Connections opened while the invocation ran.
    pub connections_opened: u64,
    /// Time those connections took to open (connect, handshake, authentication), summed.
    pub connect_time: Duration,
    /// Of those, logins with MONGODB-AWS (each fetched the role's credentials).
    pub iam_authentications: u64,
    /// The invocation's own duration, from [`crate::Kit::begin_invocation`] to `finish`.
    pub duration: Duration,
}

impl Invocation {
    /// Ends the invocation: logs the report and prints its Embedded Metric Format line.
    pub fn finish(self) -> InvocationReport {
        let report = self.report();
        let function = self.kit.function_name();
        tracing::info!(
            cold_start = report.cold_start,
            client_reused = !report.cold_start,
            connections_opened = report.connections_opened,
            connect_ms = millis(report.connect_time),
            iam_authentications = report.iam_authentications,
            "mongomux-lambda: invocation"
        );
        println!("{}", report.emf(function, unix_millis()));
        report
    }

    /// The report, without logging it.
    pub fn report(&self) -> InvocationReport {
        let created = self.kit.clients_created();
        let (opened, micros) = self.kit.connection_stats();
        let opened = opened.saturating_sub(self.stats_before.0);
        InvocationReport {
            cold_start: self.created_before == 0 && created > 0,
            connections_opened: opened,
            connect_time: Duration::from_micros(micros.saturating_sub(self.stats_before.1)),
            iam_authentications: if self.kit.uses_iam() { opened } else { 0 },
            duration: self.started.elapsed(),
        }
    }
}

impl InvocationReport {
    /// The CloudWatch Embedded Metric Format document of this report, for `function`, stamped
    /// `timestamp_ms` (milliseconds since the Unix epoch).
    pub fn emf(&self, function: &str, timestamp_ms: u64) -> Value {
        json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": "mongomux/lambda",
                    "Dimensions": [["FunctionName"]],
                    "Metrics": [
                        { "Name": "ColdStart", "Unit": "Count" },
                        { "Name": "ClientReused", "Unit": "Count" },
                        { "Name": "ConnectionsOpened", "Unit": "Count" },
                        { "Name": "ConnectTime", "Unit": "Milliseconds" },
                        { "Name": "IamAuthentications", "Unit": "Count" },
                    ],
                }],
            },
            "FunctionName": function,
            "ColdStart": u8::from(self.cold_start),
            "ClientReused": u8::from(!self.cold_start),
            "ConnectionsOpened": self.connections_opened,
            "ConnectTime": millis(self.connect_time),
            "IamAuthentications": self.iam_authentications,
        })
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emf_line_declares_every_metric_it_carries() {
        let r = InvocationReport {
            cold_start: true,
            connections_opened: 2,
            connect_time: Duration::from_micros(12_500),
            iam_authentications: 2,
            duration: Duration::from_millis(40),
        };
        let doc = r.emf("orders-fn", 1_700_000_000_000);
        let declared: Vec<&str> = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        for name in &declared {
            assert!(doc.get(*name).is_some(), "{name} declared but absent");
        }
        assert_eq!(doc["ColdStart"], 1);
        assert_eq!(doc["ClientReused"], 0);
        assert_eq!(doc["ConnectTime"], 12.5);
        assert_eq!(doc["FunctionName"], "orders-fn");
        assert_eq!(doc["_aws"]["Timestamp"], 1_700_000_000_000u64);
    }
}
