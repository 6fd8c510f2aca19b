//! `--sweep`: which rate to try next. Doubles while the server keeps up, halves while it
//! does not, then bisects between the highest rate that passed and the lowest that failed
//! until they are within [`PRECISION`] of each other or the step budget runs out.

/// Bisection stops when `(failed - passed) / passed` is at most this.
pub const PRECISION: f64 = 0.05;

/// Rates above this are not tried (messages/s): a guard against a runaway doubling.
pub const MAX_RATE: f64 = 20e6;

/// Rates below this are not tried (messages/s).
pub const MIN_RATE: f64 = 1.0;

/// The state of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    current: f64,
    passed: Option<f64>,
    failed: Option<f64>,
    steps_left: u32,
}

impl Sweep {
    /// Starts at `rate` with at most `max_steps` steps.
    pub fn new(rate: f64, max_steps: u32) -> Sweep {
        Sweep {
            current: rate.clamp(MIN_RATE, MAX_RATE),
            passed: None,
            failed: None,
            steps_left: max_steps,
        }
    }

    /// The rate to run now (messages/s).
    pub fn current(&self) -> f64 {
        self.current
    }

    /// The highest rate that passed so far.
    pub fn best(&self) -> Option<f64> {
        self.passed
    }

    /// The lowest rate that failed so far.
    pub fn lowest_failed(&self) -> Option<f64> {
        self.failed
    }

    /// Records whether the current rate passed; returns the next rate to run, or `None`
    /// when the sweep is over.
    pub fn record(&mut self, passed: bool) -> Option<f64> {
        let r = self.current;
        if passed {
            self.passed = Some(self.passed.map_or(r, |p| p.max(r)));
        } else {
            self.failed = Some(self.failed.map_or(r, |f| f.min(r)));
        }
        self.steps_left = self.steps_left.saturating_sub(1);
        if self.steps_left == 0 {
            return None;
        }
        let next = match (self.passed, self.failed) {
            (Some(p), None) => p * 2.0,
            (None, Some(f)) => f / 2.0,
            (Some(p), Some(f)) if f <= p => return None, // noisy: a higher rate passed
            (Some(p), Some(f)) if (f - p) / p <= PRECISION => return None,
            (Some(p), Some(f)) => (p + f) / 2.0,
            (None, None) => return None,
        };
        if !(MIN_RATE..=MAX_RATE).contains(&next) {
            return None;
        }
        self.current = next.round();
        Some(self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a sweep against a server that sustains `limit` msg/s; returns the rates tried.
    fn run(start: f64, steps: u32, limit: f64) -> (Vec<f64>, Sweep) {
        let mut s = Sweep::new(start, steps);
        let mut tried = vec![s.current()];
        while let Some(next) = s.record(s.current() <= limit) {
            tried.push(next);
        }
        (tried, s)
    }

    #[test]
    fn doubles_then_bisects_to_precision() {
        let (tried, s) = run(10_000.0, 20, 50_000.0);
        assert_eq!(&tried[..4], &[10_000.0, 20_000.0, 40_000.0, 80_000.0]);
        let best = s.best().unwrap();
        let failed = s.lowest_failed().unwrap();
        assert!(best <= 50_000.0 && failed > 50_000.0);
        assert!((failed - best) / best <= PRECISION);
        assert!(tried.len() < 20);
    }

    #[test]
    fn halves_when_the_start_is_too_high() {
        let (tried, s) = run(100_000.0, 20, 30_000.0);
        assert_eq!(&tried[..3], &[100_000.0, 50_000.0, 25_000.0]);
        assert!(s.best().unwrap() <= 30_000.0);
    }

    #[test]
    fn step_budget_is_respected() {
        let (tried, s) = run(1_000.0, 3, 1e9);
        assert_eq!(tried, vec![1_000.0, 2_000.0, 4_000.0]);
        assert_eq!(s.best(), Some(4_000.0));
    }

    #[test]
    fn never_passes() {
        let (tried, s) = run(8.0, 10, 0.0);
        assert_eq!(tried, vec![8.0, 4.0, 2.0, 1.0]);
        assert_eq!(s.best(), None);
    }

    #[test]
    fn noisy_results_end_the_sweep() {
        let mut s = Sweep::new(1000.0, 10);
        assert_eq!(s.record(false), Some(500.0));
        assert_eq!(s.record(true), Some(750.0));
        // 750 failed while 500 passed: bisect on.
        assert_eq!(s.record(false), Some(625.0));
        assert!(s.record(true).is_some());
    }

    #[test]
    fn stops_at_the_rate_ceiling() {
        let (tried, _) = run(MAX_RATE, 10, f64::INFINITY);
        assert_eq!(tried, vec![MAX_RATE]);
    }
}
