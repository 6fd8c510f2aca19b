//! Flood control: per-member message buckets and per-IP password-failure throttling.
//! Both take `now` as an argument; neither reads a clock.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens, refilled at `rate` per second. Each chat message takes
/// one; heartbeats take none.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(burst: u32, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes a token if one is there. `rate` 0 or `burst` 0 means no limit.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        if rate == 0 || burst == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst.max(1)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How many wrong passwords one IP may send within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// The window over which wrong passwords are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Remembers, per IP, the times of its last [`MAX_FAILURES`] wrong passwords. Memory is
/// bounded by the failures of the last minute: [`PasswordThrottle::prune`] forgets the rest.
#[derive(Debug, Default)]
pub struct PasswordThrottle {
    failures: HashMap<IpAddr, VecDeque<Instant>>,
}

impl PasswordThrottle {
    /// Whether JOINs from `ip` are refused now (TOO_MANY_REQUESTS).
    pub fn is_throttled(&self, ip: IpAddr, now: Instant) -> bool {
        self.failures.get(&ip).is_some_and(|f| {
            f.len() >= MAX_FAILURES
                && f.front()
                    .is_some_and(|&oldest| now.saturating_duration_since(oldest) < FAILURE_WINDOW)
        })
    }

    /// Records a BAD_PASSWORD answer to `ip`.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        let f = self.failures.entry(ip).or_default();
        f.push_back(now);
        while f.len() > MAX_FAILURES {
            f.pop_front();
        }
    }

    /// Forgets IPs whose failures are all older than the window.
    pub fn prune(&mut self, now: Instant) {
        self.failures.retain(|_, f| {
            f.back()
                .is_some_and(|&newest| now.saturating_duration_since(newest) < FAILURE_WINDOW)
        });
    }

    /// IPs remembered (for metrics and tests).
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    /// Whether no IP is remembered.
    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3, t0);
        assert!((0..3).all(|_| b.take(2, 3, t0)));
        assert!(!b.take(2, 3, t0));
        let later = t0 + Duration::from_millis(500);
        assert!(b.take(2, 3, later));
        assert!(!b.take(2, 3, later));
        // Refill is capped at the burst.
        let much_later = t0 + Duration::from_secs(100);
        assert!((0..3).all(|_| b.take(2, 3, much_later)));
        assert!(!b.take(2, 3, much_later));
        // Rate 0 or burst 0: unlimited.
        assert!((0..1000).all(|_| b.take(0, 3, much_later)));
        let mut none = Bucket::full(0, t0);
        assert!((0..1000).all(|_| none.take(20, 0, t0)));
    }

    #[test]
    fn five_failures_throttle_until_the_oldest_is_a_minute_old() {
        let t0 = Instant::now();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let mut t = PasswordThrottle::default();
        for i in 0..5 {
            assert!(!t.is_throttled(ip, t0));
            t.record_failure(ip, t0 + Duration::from_secs(i));
        }
        assert!(t.is_throttled(ip, t0 + Duration::from_secs(10)));
        assert!(!t.is_throttled(other, t0));
        assert!(t.is_throttled(ip, t0 + Duration::from_millis(59_999)));
        assert!(!t.is_throttled(ip, t0 + Duration::from_secs(60)));
        t.prune(t0 + Duration::from_secs(63));
        assert_eq!(t.len(), 1);
        t.prune(t0 + Duration::from_secs(64));
        assert!(t.is_empty());
    }
}
