//! Registering the gateway's metrics in its own registry: the small helpers [`super::Metrics`]
//! is built with.

use prometheus::core::Collector;
use prometheus::{HistogramOpts, IntCounterVec, Opts, Registry};

use super::{Counter, Gauge, Histogram, BUCKETS};

/// Builds metrics and registers them. Every definition is a compile-time constant, so a
/// failure here is a programming error (an invalid or duplicate name), caught by the unit
/// tests, which build a [`Metrics`] before anything else.
pub(super) struct Register(pub(super) Registry);

impl Register {
    pub(super) fn add<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .expect("fixed metric definitions are valid and distinct");
        c
    }

    pub(super) fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help).expect("valid gauge name"))
    }

    pub(super) fn counter(&self, name: &str, help: &str) -> Counter {
        self.add(Counter::new(name, help).expect("valid counter name"))
    }

    pub(super) fn histogram(&self, name: &str, help: &str) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
        Histogram(self.add(prometheus::Histogram::with_opts(opts).expect("valid histogram")))
    }

    /// A counter family with one label whose children are all created now, so each is
    /// rendered (as 0) from the start and recording never looks a label up.
    pub(super) fn counter_family<V: AsRef<str>>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: impl Iterator<Item = V>,
    ) -> Vec<Counter> {
        let family = self.add(IntCounterVec::new(Opts::new(name, help), &[label]).expect("family"));
        values
            .map(|v| family.with_label_values(&[v.as_ref()]))
            .collect()
    }
}
