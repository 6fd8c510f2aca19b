//! Adaptive coalescing: how long a busy room may hold its outbox (`--max-hold-us`).
//!
//! The kernel's cost is per datagram, not per byte: on loopback one UDP send costs about
//! 1.5-2 µs whether it carries one event or fifty. Flushing every room at the end of every
//! wake-up is right when the server is idle (a lone message leaves at once), but under load
//! it sends datagrams of a few events each, and the datagram count, not the work, sets the
//! ceiling. So the loop measures its own busy share (time spent handling a wake-up over wall
//! time, in windows of [`WINDOW`]) and turns it into a hold:
//!
//! * below [`HOLD_FROM`] busy, no hold: today's behaviour, no added latency;
//! * from there to [`HOLD_FULL`], a hold growing linearly up to the configured maximum;
//! * above, the maximum.
//!
//! A room holds only if it had another event within the hold (a busy room): a lone message
//! in a quiet room leaves at the end of its wake-up even on a busy server. A room whose
//! outbox reaches a full datagram leaves at once whatever the hold (`Room::emit`).
//!
//! The feedback is negative and damped: holding lowers the busy share, which lowers the
//! hold, so the hold settles where the load needs it; the share is an exponential average
//! over windows so it neither chases one long wake-up nor oscillates. An idle gap counts as
//! windows of zero busy, so after a pause the hold is back to zero by the first wake-up.
//!
//! Sans-IO: it takes times, never reads a clock.

use std::time::{Duration, Instant};

/// Length of one measurement window: short enough to follow a load change within a few
/// tens of milliseconds, long enough to hold many wake-ups at load.
pub const WINDOW: Duration = Duration::from_millis(10);
/// Busy share below which nothing is held (a server this idle has time to send small
/// datagrams, and latency matters more).
pub const HOLD_FROM: f64 = 0.25;
/// Busy share from which the full hold applies.
pub const HOLD_FULL: f64 = 0.75;
/// Weight of the newest window in the average.
const ALPHA: f64 = 0.5;
/// Windows of idle time after which the old share is forgotten entirely (0.5^16 is noise).
const FORGET_WINDOWS: u32 = 16;

/// The loop's busy share and the hold it gives.
#[derive(Debug, Clone)]
pub struct Coalescer {
    max_hold: Duration,
    /// Start of the current window.
    window_start: Option<Instant>,
    /// Busy time in the current window.
    window_busy: Duration,
    /// Average busy share, 0 to 1.
    share: f64,
    hold: Duration,
}

impl Coalescer {
    /// A coalescer that holds at most `max_hold` (zero: never).
    pub fn new(max_hold: Duration) -> Coalescer {
        Coalescer {
            max_hold,
            window_start: None,
            window_busy: Duration::ZERO,
            share: 0.0,
            hold: Duration::ZERO,
        }
    }

    /// A wake-up begins at `now`: closes the window if it is over (the idle time before
    /// this wake-up counts in it) and updates the hold.
    pub fn on_wake(&mut self, now: Instant) {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < WINDOW {
            return;
        }
        let sample = (self.window_busy.as_secs_f64() / elapsed.as_secs_f64()).min(1.0);
        // A window that lasted k windows weighs as k windows of this sample.
        let k = (elapsed.as_nanos() / WINDOW.as_nanos()).min(u128::from(FORGET_WINDOWS)) as i32;
        let keep = (1.0 - ALPHA).powi(k);
        self.share = self.share * keep + sample * (1.0 - keep);
        self.window_start = Some(now);
        self.window_busy = Duration::ZERO;
        self.hold = self.hold_for(self.share);
    }

    /// The wake-up that began with [`Coalescer::on_wake`] spent `busy` working.
    pub fn on_busy(&mut self, busy: Duration) {
        self.window_busy += busy;
    }

    /// How long a busy room may hold its outbox now.
    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// The average busy share, 0 to 1 (for metrics).
    pub fn busy_share(&self) -> f64 {
        self.share
    }

    fn hold_for(&self, share: f64) -> Duration {
        if share <= HOLD_FROM {
            return Duration::ZERO;
        }
        let f = ((share - HOLD_FROM) / (HOLD_FULL - HOLD_FROM)).min(1.0);
        self.max_hold.mul_f64(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(400);

    /// Runs `windows` windows of wake-ups busy `share` of the time, every 100 µs.
    fn drive(c: &mut Coalescer, t: &mut Instant, windows: u32, share: f64) {
        let step = Duration::from_micros(100);
        for _ in 0..windows * 100 {
            c.on_wake(*t);
            c.on_busy(step.mul_f64(share));
            *t += step;
        }
    }

    #[test]
    fn an_idle_server_holds_nothing() {
        let mut c = Coalescer::new(MAX);
        let mut t = Instant::now();
        drive(&mut c, &mut t, 20, 0.05);
        assert!(c.busy_share() < 0.1, "{}", c.busy_share());
        assert_eq!(c.hold(), Duration::ZERO);
    }

    #[test]
    fn a_saturated_server_holds_the_maximum_and_a_half_busy_one_part_of_it() {
        let mut c = Coalescer::new(MAX);
        let mut t = Instant::now();
        drive(&mut c, &mut t, 20, 1.0);
        assert_eq!(c.hold(), MAX);
        drive(&mut c, &mut t, 20, 0.5);
        let half = c.hold();
        assert!(half > MAX / 3 && half < MAX * 2 / 3, "{half:?}");
    }

    #[test]
    fn after_a_pause_the_first_wake_up_holds_nothing() {
        let mut c = Coalescer::new(MAX);
        let mut t = Instant::now();
        drive(&mut c, &mut t, 20, 1.0);
        assert_eq!(c.hold(), MAX);
        // One second of silence, then a lone message.
        t += Duration::from_secs(1);
        c.on_wake(t);
        assert_eq!(c.hold(), Duration::ZERO, "share {}", c.busy_share());
    }

    #[test]
    fn zero_max_hold_never_holds() {
        let mut c = Coalescer::new(Duration::ZERO);
        let mut t = Instant::now();
        drive(&mut c, &mut t, 20, 1.0);
        assert_eq!(c.hold(), Duration::ZERO);
        assert!(c.busy_share() > 0.9);
    }

    #[test]
    fn one_long_wake_up_does_not_swing_the_hold_to_the_maximum() {
        let mut c = Coalescer::new(MAX);
        let mut t = Instant::now();
        drive(&mut c, &mut t, 20, 0.0);
        // One 10 ms wake-up (a burst), then idle again.
        c.on_wake(t);
        c.on_busy(WINDOW);
        t += WINDOW;
        c.on_wake(t);
        assert!(c.hold() < MAX, "{:?}", c.hold());
        drive(&mut c, &mut t, 5, 0.0);
        assert_eq!(c.hold(), Duration::ZERO);
    }
}
