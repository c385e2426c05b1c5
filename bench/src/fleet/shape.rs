//! Traffic shapes: when invocations arrive at the fleet.
//!
//! What it owns: turning a shape's parameters into waves of arrival offsets. A wave's offsets are
//! relative to the wave's start; the dispatcher starts the first wave at once and each later wave
//! `gap` after the previous one has completed, so a burst's later waves meet a fleet that is
//! entirely frozen (they thaw environments instead of creating them). Steady and ramp shapes are
//! one wave. It never touches a clock: arrivals are pure arithmetic, so they are unit-tested.
//!
//! A burst's first wave stands for N requests in flight at once, which Lambda serves with N
//! environments: it is marked `cold`, and the dispatcher gives each of its arrivals a new
//! environment even when an earlier one of the wave has already finished. Otherwise a fast
//! handler would let a few environments serve the whole second, and the number of cold starts
//! would depend on each mode's latency instead of being the N the scenario asks for.

use std::time::Duration;

use clap::ValueEnum;

/// How long a burst wave's arrivals are spread over.
pub const BURST_SPAN: Duration = Duration::from_secs(1);

/// The kinds of traffic, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShapeKind {
    /// N invocations spread evenly over one second while no environment exists (N cold starts),
    /// then further waves of N that thaw the frozen fleet.
    Burst,
    /// A constant rate for a duration.
    Steady,
    /// A rate rising linearly from 0 to `--rate` over the duration.
    Ramp,
}

/// A fully specified shape.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub kind: ShapeKind,
    /// Burst: invocations per wave (all arriving within one second).
    pub burst: u32,
    /// Burst: number of waves (the first cold, the others warm).
    pub waves: u32,
    /// Burst: pause between one wave's completion and the next wave's start.
    pub gap: Duration,
    /// Steady: invocations per second; ramp: the final rate.
    pub rate: f64,
    /// Steady and ramp: how long arrivals go on.
    pub duration: Duration,
}

impl Shape {
    /// A short name for tables and CSV, e.g. `burst`, `steady`, `ramp`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            ShapeKind::Burst => "burst",
            ShapeKind::Steady => "steady",
            ShapeKind::Ramp => "ramp",
        }
    }

    /// The parameters in words, for the run header.
    pub fn describe(&self) -> String {
        match self.kind {
            ShapeKind::Burst => format!(
                "burst: {} cold starts within 1 s, then {} warm wave(s) of {} after the fleet \
                 froze for {:?}",
                self.burst,
                self.waves.saturating_sub(1),
                self.burst,
                self.gap
            ),
            ShapeKind::Steady => format!("steady: {}/s for {:?}", self.rate, self.duration),
            ShapeKind::Ramp => format!("ramp: 0 to {}/s over {:?}", self.rate, self.duration),
        }
    }

    /// The waves of arrivals, in order.
    pub fn waves(&self) -> Vec<Wave> {
        match self.kind {
            ShapeKind::Burst => {
                let n = self.burst;
                // Evenly over [0, 1 s): the i-th of n arrives at i/n seconds.
                let offsets: Vec<Duration> = (0..n).map(|i| BURST_SPAN * i / n).collect();
                (0..self.waves)
                    .map(|w| Wave {
                        offsets: offsets.clone(),
                        cold: w == 0,
                    })
                    .collect()
            }
            ShapeKind::Steady => {
                let total = (self.rate * self.duration.as_secs_f64()).round() as u64;
                vec![Wave {
                    offsets: (0..total)
                        .map(|i| Duration::from_secs_f64(i as f64 / self.rate))
                        .collect(),
                    cold: false,
                }]
            }
            ShapeKind::Ramp => {
                // Rate r(t) = R t / D, so arrivals up to t number R t² / (2D): the i-th arrives
                // at t = sqrt(2 D i / R); R D / 2 in all.
                let d = self.duration.as_secs_f64();
                let total = (self.rate * d / 2.0).round() as u64;
                vec![Wave {
                    offsets: (0..total)
                        .map(|i| Duration::from_secs_f64((2.0 * d * i as f64 / self.rate).sqrt()))
                        .collect(),
                    cold: false,
                }]
            }
        }
    }
}

/// One wave of arrivals.
#[derive(Clone, Debug, PartialEq)]
pub struct Wave {
    /// Sorted, relative to the wave's start.
    pub offsets: Vec<Duration>,
    /// Every arrival gets a new environment (requests in flight at once; see the module doc).
    pub cold: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(kind: ShapeKind) -> Shape {
        Shape {
            kind,
            burst: 4,
            waves: 2,
            gap: Duration::from_secs(1),
            rate: 10.0,
            duration: Duration::from_secs(2),
        }
    }

    #[test]
    fn burst_spreads_each_wave_over_one_second() {
        let w = shape(ShapeKind::Burst).waves();
        assert_eq!(w.len(), 2);
        let ms: Vec<u128> = w[0].offsets.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 250, 500, 750]);
        assert_eq!(w[0].offsets, w[1].offsets);
        assert!(w[0].cold && !w[1].cold);
    }

    #[test]
    fn steady_is_evenly_spaced() {
        let w = shape(ShapeKind::Steady).waves();
        assert_eq!(w.len(), 1);
        let w = &w[0].offsets;
        assert_eq!(w.len(), 20);
        assert_eq!(w[1].as_millis(), 100);
        assert_eq!(w[19].as_millis(), 1900);
    }

    #[test]
    fn ramp_accelerates_and_stays_within_the_duration() {
        let w = &shape(ShapeKind::Ramp).waves()[0].offsets;
        assert_eq!(w.len(), 10); // 10/s * 2 s / 2
        assert!(w.windows(2).all(|p| p[0] <= p[1]));
        assert!(*w.last().unwrap() < Duration::from_secs(2));
        // Gaps shrink as the rate rises.
        let first_gap = w[1] - w[0];
        let last_gap = w[9] - w[8];
        assert!(first_gap > last_gap, "{first_gap:?} vs {last_gap:?}");
    }
}
