//! Unit tests of the exposition: the README's Metrics table and the rendered text agree on every
//! name, type and label; label sets stay closed; Prometheus's own parser (`promtool`) accepts
//! the output.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use super::*;

const README: &str = include_str!("../../../../README.md");

/// `name -> (type, label)` from the README's Metrics table, e.g.
/// `mongomux_operations_total -> ("counter", Some("command"))`.
fn documented() -> BTreeMap<String, (String, Option<String>)> {
    let section = README
        .split("\n## Metrics\n")
        .nth(1)
        .expect("README has a Metrics section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut out = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `mongomux_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let metric = cells[1].trim_matches('`');
        let (name, label) = match metric.split_once('{') {
            Some((n, l)) => (n, Some(l.trim_end_matches('}').to_string())),
            None => (metric, None),
        };
        out.insert(name.to_string(), (cells[2].to_string(), label));
    }
    assert!(out.len() >= 20, "README table parsed to {} rows", out.len());
    out
}

/// `name -> type` from the `# TYPE` lines, failing on a name typed twice.
fn types(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, ty) = line.split_once(' ').expect("TYPE line has a type");
        let old = out.insert(name.to_string(), ty.to_string());
        assert!(old.is_none(), "second # TYPE for {name}");
    }
    out
}

/// Sample lines (not comments) whose sample name is exactly `name`.
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.lines()
        .filter(move |l| !l.starts_with('#') && sample_name(l) == name)
}

/// The name of a sample line: up to its labels or its value.
fn sample_name(line: &str) -> &str {
    line.split(['{', ' ']).next().unwrap_or(line)
}

#[test]
fn every_documented_metric_is_rendered_with_its_type_and_label() {
    let m = Metrics::default();
    // Per-member families have samples (and so appear) only once a member is known; the
    // per-app and per-user ones once a client has run an operation.
    m.set_member("a.example:27017", "mongos", 1);
    m.app_ops.counter("billing").inc();
    m.user_ops.counter("alice").inc();
    m.count_data_api("findOne", 200);
    let text = m.render();
    let rendered = types(&text);
    let documented = documented();
    assert!(
        rendered.keys().eq(documented.keys()),
        "README and /metrics differ: {:?} vs {:?}",
        rendered.keys(),
        documented.keys()
    );
    for (name, (ty, _)) in &documented {
        assert_eq!(&rendered[name], ty, "type of {name}");
    }
    // Every sample belongs to a documented family and carries exactly its label.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let sample = sample_name(line);
        let (family, label) = match documented.get(sample) {
            Some((ty, label)) if ty != "histogram" => (sample, label.clone()),
            _ => {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| sample.strip_suffix(s))
                    .unwrap_or_else(|| panic!("undocumented sample {line}"));
                let is_histogram = documented
                    .get(family)
                    .is_some_and(|(t, _)| t == "histogram");
                assert!(is_histogram, "undocumented sample {line}");
                (
                    family,
                    sample.ends_with("_bucket").then(|| "le".to_string()),
                )
            }
        };
        match label {
            Some(l) => {
                // Exactly the documented labels (`{address,state}`), in that order.
                let want: Vec<&str> = l.split(',').map(str::trim).collect();
                let inner = line
                    .strip_prefix(&format!("{sample}{{"))
                    .and_then(|rest| rest.split_once('}'))
                    .map(|(inner, _)| inner)
                    .unwrap_or_else(|| panic!("{family}: no labels in {line}"));
                let got: Vec<&str> = inner
                    .split("\",")
                    .filter_map(|pair| pair.split_once("=\"").map(|(k, _)| k))
                    .collect();
                assert_eq!(got, want, "{family}: {line}");
            }
            None => assert!(line.starts_with(&format!("{sample} ")), "{family}: {line}"),
        }
    }
}

#[test]
fn histograms_keep_their_buckets_and_units() {
    let m = Metrics::default();
    m.checkout_wait.observe(Duration::from_micros(300));
    m.checkout_wait.observe(Duration::from_millis(20));
    let text = m.render();
    let les: Vec<&str> = samples(&text, "mongomux_checkout_wait_seconds_bucket")
        .map(|l| l.split('"').nth(1).expect("le value"))
        .collect();
    let want = [
        "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
        "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
    ];
    assert_eq!(les, want);
    for line in [
        "mongomux_checkout_wait_seconds_bucket{le=\"0.0005\"} 1",
        "mongomux_checkout_wait_seconds_bucket{le=\"0.025\"} 2",
        "mongomux_checkout_wait_seconds_bucket{le=\"+Inf\"} 2",
        "mongomux_checkout_wait_seconds_count 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let sum: f64 = samples(&text, "mongomux_checkout_wait_seconds_sum")
        .find_map(|l| l.split(' ').nth(1)?.parse().ok())
        .expect("sum");
    assert!((sum - 0.0203).abs() < 1e-9, "sum in seconds: {sum}");
}

#[test]
fn counters_and_gauges_move() {
    let m = Metrics::default();
    m.client_connections.inc();
    m.client_connections.inc();
    m.client_connections.dec();
    m.client_connections_total.inc();
    m.count_op("find");
    m.count_op("FIND");
    m.count_op("weirdCommand");
    m.count_sts("throttled");
    m.count_error(262);
    let text = m.render();
    for line in [
        "mongomux_client_connections 1",
        "mongomux_client_connections_total 1",
        "mongomux_client_connections_denied_total 0",
        "mongomux_operations_total{command=\"find\"} 2",
        "mongomux_operations_total{command=\"other\"} 1",
        "mongomux_operations_total{command=\"bulkWrite\"} 0",
        "mongomux_sts_requests_total{result=\"throttled\"} 1",
        "mongomux_gateway_errors_total{code=\"262\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    assert_eq!(m.op_count("find"), 2);
    assert_eq!(m.op_count("weirdCommand"), 1);
}

#[test]
fn label_sets_stay_closed() {
    let m = Metrics::default();
    let before = m.render().lines().count();
    for i in 0..1000 {
        m.count_op(&format!("invented{i}"));
        m.count_sts(&format!("result{i}"));
        m.count_error(100_000 + i);
        m.count_proxy_refused(&format!("reason{i}"));
    }
    let text = m.render();
    assert_eq!(text.lines().count(), before);
    assert!(text.contains("mongomux_operations_total{command=\"other\"} 1000\n"));
    assert_eq!(
        samples(&text, "mongomux_operations_total").count(),
        COMMANDS.len() + 1
    );
    assert_eq!(
        samples(&text, "mongomux_sts_requests_total").count(),
        STS_RESULTS.len()
    );
    assert_eq!(
        samples(&text, "mongomux_gateway_errors_total").count(),
        ERROR_CODES.len()
    );
    assert_eq!(
        samples(&text, "mongomux_client_connections_proxy_refused_total").count(),
        crate::proxy::REFUSAL_LABELS.len()
    );
}

/// Prometheus's own text parser, through `promtool check metrics` (Debian package
/// `prometheus`). Skipped, with a message, where promtool is not installed.
#[test]
fn promtool_accepts_the_exposition() {
    let promtool = std::env::var("MONGOMUX_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "SKIPPED promtool_accepts_the_exposition: cannot run {promtool:?} ({e}); \
                 `apt-get install prometheus` provides it"
            );
            return;
        }
    };
    let m = Metrics::default();
    m.count_op("find");
    m.upstream_latency.observe(Duration::from_millis(3));
    let text = m.render();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool rejected the exposition: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
