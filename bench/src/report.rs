//! Turning measurements into figures people read and files tools read: latency summaries from
//! histograms, aligned text tables on stdout, and CSV files under the output folder.
//!
//! What it owns: the units (latencies are recorded in nanoseconds and reported in microseconds)
//! and the output formats. It never measures anything itself.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;

/// A latency histogram in nanoseconds, 3 significant figures, up to 10 minutes.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("static histogram bounds are valid")
}

/// What one target did at one concurrency level.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub ops: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
    pub ops_per_s: f64,
}

impl Summary {
    /// Summarise `hist` (ns); `busy_secs` is the wall time the operations ran for.
    pub fn new(hist: &Histogram<u64>, errors: u64, busy_secs: f64) -> Summary {
        let us = |ns: u64| ns as f64 / 1000.0;
        Summary {
            ops: hist.len(),
            errors,
            p50_us: us(hist.value_at_quantile(0.5)),
            p99_us: us(hist.value_at_quantile(0.99)),
            p999_us: us(hist.value_at_quantile(0.999)),
            mean_us: hist.mean() / 1000.0,
            max_us: us(hist.max()),
            ops_per_s: if busy_secs > 0.0 {
                hist.len() as f64 / busy_secs
            } else {
                0.0
            },
        }
    }
}

/// A text table printed with right-aligned columns.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, columns separated by two spaces.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].len())
                    .chain([self.headers[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect();
            parts.join("  ")
        };
        let mut out = line(&self.headers);
        for r in &self.rows {
            out.push('\n');
            out.push_str(&line(r));
        }
        out
    }
}

/// Rows of a CSV file, written at the end of a scenario.
pub struct Csv {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    pub fn new(headers: &[&'static str]) -> Csv {
        Csv {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    /// Write `dir/name`, creating `dir`; returns the path written.
    pub fn write(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join(name);
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?,
        );
        writeln!(f, "{}", self.headers.join(","))?;
        for r in &self.rows {
            let cells: Vec<String> = r.iter().map(|c| csv_cell(c)).collect();
            writeln!(f, "{}", cells.join(","))?;
        }
        f.flush()?;
        Ok(path)
    }
}

fn csv_cell(c: &str) -> String {
    if c.contains([',', '"', '\n']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_string()
    }
}

/// Microseconds with one decimal.
pub fn us(v: f64) -> String {
    format!("{v:.1}")
}

/// A signed difference with one decimal (`+12.3`, `-4.0`).
pub fn signed(v: f64) -> String {
    format!("{v:+.1}")
}

/// Seconds since the Unix epoch, to tag CSV rows of one run.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_microseconds() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap(); // 1..=1000 µs
        }
        let s = Summary::new(&h, 2, 0.5);
        assert_eq!(s.ops, 1000);
        assert_eq!(s.errors, 2);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{}", s.p50_us);
        assert!((s.p99_us - 990.0).abs() < 1.5, "{}", s.p99_us);
        assert!((s.ops_per_s - 2000.0).abs() < 1e-9);
    }

    #[test]
    fn table_aligns_and_csv_quotes() {
        let mut t = Table::new(&["a", "long"]);
        t.row(vec!["123".into(), "x".into()]);
        assert_eq!(t.render(), "  a  long\n123     x");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("plain"), "plain");
    }
}
