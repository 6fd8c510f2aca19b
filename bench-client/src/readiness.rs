//! Waiting for a worker's sockets: one mio `Poll`, a timerfd for precise wake-ups, and the
//! sockets left unread last turn. Shared by the OCM worker (`worker.rs`) and the Redis
//! worker (`redis/worker.rs`), whose sockets are registered with tokens 0..users.

use std::io;
use std::time::Duration;

use mio::{Events, Interest, Poll, Registry, Token};

use crate::sys::{MAX_POLL_WAIT, Timer};
use crate::topology::Clock;

/// The timer's token (users have 0..users).
const TIMER: Token = Token(usize::MAX - 1);

/// A worker's poll, its timer and the users whose sockets still have input.
pub struct Readiness {
    poll: Poll,
    events: Events,
    /// `None` where timerfd does not exist: the poll timeout paces instead.
    timer: Option<Timer>,
    /// Users whose socket was left with input last turn: read first, and no waiting.
    pending: Vec<usize>,
}

impl Readiness {
    /// A poll with the timer registered (when the system has one).
    pub fn new() -> io::Result<Readiness> {
        let poll = Poll::new()?;
        let timer = Timer::new().ok();
        #[cfg(target_os = "linux")]
        if let Some(t) = &timer {
            poll.registry().register(
                &mut mio::unix::SourceFd(&t.raw_fd()),
                TIMER,
                Interest::READABLE,
            )?;
        }
        Ok(Readiness {
            poll,
            events: Events::with_capacity(1024),
            timer,
            pending: Vec::new(),
        })
    }

    /// Where users' sockets are registered, user `i` with `Token(i)`.
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Waits until `wake_ns` at most (precisely, with the timer), at most
    /// [`MAX_POLL_WAIT`], not at all while users are left over; then fills `ready` with the
    /// users (below `users`) to read: those left over first, sorted, each once.
    pub fn wait(
        &mut self,
        clock: &Clock,
        wake_ns: Option<u64>,
        users: usize,
        ready: &mut Vec<usize>,
    ) -> io::Result<()> {
        ready.clear();
        let mut wait = MAX_POLL_WAIT;
        if let Some(w) = wake_ns {
            let left = Duration::from_nanos(w.saturating_sub(clock.now_ns()));
            if left < wait {
                match &self.timer {
                    Some(t) if !left.is_zero() => t.arm(left)?,
                    _ => wait = left,
                }
            }
        }
        if !self.pending.is_empty() {
            wait = Duration::ZERO;
        }
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        ready.append(&mut self.pending);
        for ev in self.events.iter() {
            match ev.token() {
                TIMER => {
                    if let Some(t) = &self.timer {
                        t.ack();
                    }
                }
                Token(i) if i < users => ready.push(i),
                _ => {}
            }
        }
        ready.sort_unstable();
        ready.dedup();
        Ok(())
    }

    /// User `i`'s socket still has input: read it first next turn.
    pub fn defer(&mut self, i: usize) {
        self.pending.push(i);
    }
}
