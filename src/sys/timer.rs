//! A one-shot timer with nanosecond resolution that mio can wait on (a Linux timerfd).
//!
//! mio's poll timeout has millisecond resolution: too coarse for bench-client's pacing
//! (sends 50 µs apart) and for the server's coalescing deadlines (a room's outbox held for a
//! few hundred microseconds). Both arm this instead. This file holds `unsafe`
//! (timerfd_create, timerfd_settime, read), each block with its `SAFETY:` comment.

use std::io;
#[cfg(target_os = "linux")]
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// A one-shot monotonic timer with nanosecond resolution, readable through mio (a Linux
/// timerfd). mio's own poll timeout has millisecond resolution, too coarse for pacing or
/// coalescing. Where timerfd does not exist, [`Timer::new`] fails and the caller falls back
/// to the poll timeout.
#[derive(Debug)]
pub struct Timer {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
}

impl Timer {
    /// A disarmed timer.
    #[cfg(target_os = "linux")]
    pub fn new() -> io::Result<Timer> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system call; on success we own the returned descriptor.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd })
    }

    /// A disarmed timer (unsupported on this system).
    #[cfg(not(target_os = "linux"))]
    pub fn new() -> io::Result<Timer> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "timerfd is Linux only",
        ))
    }

    /// Fires once, `after` from now (at least 1 ns from now).
    #[cfg(target_os = "linux")]
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the spec is read during the call; no old value is asked for.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Fires once, `after` from now (unsupported on this system).
    #[cfg(not(target_os = "linux"))]
    pub fn arm(&self, _after: Duration) -> io::Result<()> {
        Ok(())
    }

    /// Clears an expiry so that the next one wakes the poll again.
    pub fn ack(&self) {
        #[cfg(target_os = "linux")]
        {
            let mut ticks = [0u8; 8];
            // SAFETY: reads at most 8 bytes into `ticks`; WouldBlock when not expired.
            unsafe {
                libc::read(self.fd.as_raw_fd(), ticks.as_mut_ptr().cast(), ticks.len());
            }
        }
    }

    /// The descriptor to register with mio.
    #[cfg(target_os = "linux")]
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn an_armed_timer_wakes_a_mio_poll_after_its_delay_and_once() {
        let timer = Timer::new().unwrap();
        let mut poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&timer.raw_fd()),
                mio::Token(7),
                mio::Interest::READABLE,
            )
            .unwrap();
        let mut events = mio::Events::with_capacity(4);
        let t0 = Instant::now();
        timer.arm(Duration::from_millis(20)).unwrap();
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        let took = t0.elapsed();
        assert_eq!(
            events.iter().map(|e| e.token()).collect::<Vec<_>>(),
            [mio::Token(7)]
        );
        assert!(took >= Duration::from_millis(20), "woke early: {took:?}");
        timer.ack();
        // Fired once: nothing more without arming again.
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        assert!(events.is_empty());
        timer.arm(Duration::from_millis(5)).unwrap();
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(!events.is_empty(), "armed again, it wakes the poll again");
    }
}
