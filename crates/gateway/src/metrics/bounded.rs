//! A counter family whose label values come from clients (`appName`, user names), with a bound
//! on how many it shows: the first [`MAX_SERIES`] distinct values get a series of their own,
//! every later one is counted under [`OTHER`]. A client that invents a new appName per
//! connection therefore grows the exposition by at most that many series, never without end.
//!
//! A session resolves its counter once (at its `hello`, at its login) and increments the handle
//! per operation, so the map's lock is never taken on the request path.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::IntCounterVec;

use super::Counter;
use crate::text::bounded_prefix;

/// Most distinct label values shown per family.
pub const MAX_SERIES: usize = 100;
/// The label value of everything beyond the bound.
pub const OTHER: &str = "_other";
/// Longest label value kept; longer ones are cut on a character boundary.
const MAX_VALUE: usize = 128;

/// A counter family with a bounded set of label values.
#[derive(Debug)]
pub struct BoundedCounters {
    family: IntCounterVec,
    seen: Mutex<HashMap<String, Counter>>,
}

impl BoundedCounters {
    /// Wraps a registered one-label family.
    pub fn new(family: IntCounterVec) -> BoundedCounters {
        BoundedCounters {
            family,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The counter for `value`, or the shared [`OTHER`] one once the bound is reached.
    pub fn counter(&self, value: &str) -> Counter {
        let value = bounded_prefix(value, MAX_VALUE);
        let mut seen = self.seen.lock().expect("metrics lock");
        if let Some(c) = seen.get(value) {
            return c.clone();
        }
        let key = if seen.len() < MAX_SERIES {
            value
        } else {
            OTHER
        };
        seen.entry(key.to_string())
            .or_insert_with(|| self.family.with_label_values(&[key]))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    #[test]
    fn values_beyond_the_bound_share_one_series() {
        let family = IntCounterVec::new(Opts::new("t", "t"), &["app"]).unwrap();
        let b = BoundedCounters::new(family.clone());
        for i in 0..MAX_SERIES + 50 {
            b.counter(&format!("app-{i}")).inc();
        }
        b.counter("app-0").inc();
        assert_eq!(family.with_label_values(&["app-0"]).get(), 2);
        assert_eq!(family.with_label_values(&[OTHER]).get(), 50);
        // MAX_SERIES own series and OTHER.
        assert_eq!(b.seen.lock().unwrap().len(), MAX_SERIES + 1);
        let long = "é".repeat(200);
        b.counter(&long).inc();
        assert_eq!(
            family.with_label_values(&[OTHER]).get(),
            51,
            "a long value, past the bound"
        );
    }
}
