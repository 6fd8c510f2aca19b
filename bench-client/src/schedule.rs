//! The open-loop send schedule: when each message is *meant* to leave.
//!
//! A schedule is fixed before the first send: message `j` is due at
//! `start + j × period`, whatever the server does. A sender that falls behind sends at once
//! and still stamps the intended time, so its lateness counts as latency (no coordinated
//! omission, as in wrk2).
//!
//! The aggregate `--rate` is split over worker threads: thread `t` of `T` owns the users
//! `u` with `u % T == t`, sends at `rate × its users / all users`, and starts `t / rate`
//! seconds late, so that when `T` divides the user count the threads together send exactly
//! the global round-robin schedule (message `k` at `k / rate`, from user `k % users`).

/// Nanoseconds in a second.
pub const NS_PER_S: f64 = 1e9;

/// Message `j` is due at `start_ns + round(j × period_ns)`, for `j < len`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    start_ns: u64,
    period_ns: f64,
    len: u64,
}

impl Schedule {
    /// The messages of one sender group sending `rate` messages/s from `start_ns` on, up to
    /// (not including) `end_ns`. A rate that is not positive gives an empty schedule.
    pub fn new(start_ns: u64, rate: f64, end_ns: u64) -> Schedule {
        if rate.is_nan() || rate <= 0.0 || end_ns <= start_ns {
            return Schedule {
                start_ns,
                period_ns: f64::INFINITY,
                len: 0,
            };
        }
        let period_ns = NS_PER_S / rate;
        let mut s = Schedule {
            start_ns,
            period_ns,
            len: ((end_ns - start_ns) as f64 / period_ns).ceil() as u64,
        };
        // Float rounding may put one message on the wrong side of the end.
        while s.len > 0 && s.due(s.len - 1) >= end_ns {
            s.len -= 1;
        }
        while s.due(s.len) < end_ns {
            s.len += 1;
        }
        s
    }

    /// The schedule of worker `worker` of `workers` owning `owned` of `users` users, for
    /// an aggregate `rate` from `start_ns` to `end_ns` (see the module doc).
    pub fn for_worker(
        start_ns: u64,
        end_ns: u64,
        rate: f64,
        worker: usize,
        owned: usize,
        users: usize,
    ) -> Schedule {
        if users == 0 || owned == 0 {
            return Schedule::new(start_ns, 0.0, end_ns);
        }
        let phase = (worker as f64 * NS_PER_S / rate).round() as u64;
        Schedule::new(
            start_ns.saturating_add(phase),
            rate * owned as f64 / users as f64,
            end_ns,
        )
    }

    /// When message `j` is due, in ns since the base instant.
    pub fn due(&self, j: u64) -> u64 {
        if self.period_ns.is_infinite() {
            return u64::MAX;
        }
        self.start_ns + (j as f64 * self.period_ns).round() as u64
    }

    /// How many messages the schedule holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_and_bounded() {
        let s = Schedule::new(1_000, 1000.0, 1_000 + 1_000_000_000);
        assert_eq!(s.len(), 1000);
        assert_eq!(s.due(0), 1_000);
        assert_eq!(s.due(1), 1_001_000);
        assert_eq!(s.due(999), 1_000 + 999_000_000);
        assert!(s.due(s.len()) >= 1_000 + 1_000_000_000);
    }

    #[test]
    fn fractional_periods_do_not_drift() {
        // 3 per µs-ish: period 333.33 ns; after 3e6 messages we are still on time.
        let s = Schedule::new(0, 3e6, 1_000_000_000);
        assert_eq!(s.len(), 3_000_000);
        assert_eq!(s.due(3_000_000 - 1), 999_999_667);
    }

    #[test]
    fn empty_when_nothing_fits() {
        assert!(Schedule::new(10, 100.0, 10).is_empty());
        assert!(Schedule::new(10, 0.0, 1_000).is_empty());
        assert!(Schedule::new(10, f64::NAN, 1_000).is_empty());
        assert_eq!(Schedule::new(0, 0.0, 1_000).due(0), u64::MAX);
    }

    #[test]
    fn workers_together_make_the_global_round_robin() {
        // 4 users on 2 workers at 1000 msg/s: message k at k ms from user k % 4.
        let (users, workers, rate) = (4, 2, 1000.0);
        let end = 1_000_000_000;
        let mut all: Vec<(u64, usize)> = Vec::new();
        for w in 0..workers {
            let owned: Vec<usize> = (0..users).filter(|u| u % workers == w).collect();
            let s = Schedule::for_worker(0, end, rate, w, owned.len(), users);
            for j in 0..s.len() {
                all.push((s.due(j), owned[(j % owned.len() as u64) as usize]));
            }
        }
        all.sort();
        assert_eq!(all.len(), 1000);
        for (k, &(due, user)) in all.iter().enumerate() {
            assert_eq!(due, k as u64 * 1_000_000, "message {k}");
            assert_eq!(user, k % users, "message {k}");
        }
    }

    #[test]
    fn uneven_split_keeps_the_aggregate_rate() {
        let (users, workers, rate) = (5, 2, 10_000.0);
        let end = 2_000_000_000;
        let total: u64 = (0..workers)
            .map(|w| {
                let owned = (0..users).filter(|u| u % workers == w).count();
                Schedule::for_worker(0, end, rate, w, owned, users).len()
            })
            .sum();
        assert!((19_999..=20_001).contains(&total), "{total}");
    }
}
