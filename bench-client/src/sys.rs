//! The few system calls the bench needs that std and mio do not offer, each behind a small
//! safe function: CPU time, the timer slack, and the kernel's per-socket UDP drop counters.
//!
//! What the bench shares with the server comes from [`ocm::sys`], not from a copy here: the
//! open-file limit ([`raise_nofile_limit`]), the timerfd ([`Timer`]), receive buffers
//! (`ocm::sys::socket`) and the batched receive (`ocm::sys::udp::Receiver`). This file holds
//! `unsafe` (rusage, prctl), each block with its `SAFETY:` comment.

use std::collections::HashSet;
use std::time::Duration;

pub use ocm::sys::rlimit::raise_nofile_limit;
pub use ocm::sys::timer::Timer;

/// User and system CPU time this process has used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    /// Seconds in user space.
    pub user_s: f64,
    /// Seconds in the kernel.
    pub sys_s: f64,
}

impl CpuTime {
    /// The process's CPU time now (all threads).
    pub fn now() -> CpuTime {
        // SAFETY: rusage is plain data; zeroed is a valid value and getrusage fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: RUSAGE_SELF with a valid pointer cannot fail.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        CpuTime {
            user_s: secs(ru.ru_utime),
            sys_s: secs(ru.ru_stime),
        }
    }

    /// The time used since `earlier`.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_s: self.user_s - earlier.user_s,
            sys_s: self.sys_s - earlier.sys_s,
        }
    }
}

/// Asks the kernel for a timer slack of 1 ns on the calling thread, so that timer wake-ups
/// are not deferred by the default 50 µs (which would show up as send lag). Best effort.
pub fn tight_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Datagrams the kernel dropped because a socket's receive queue was full, summed over
/// the bench's sockets and over the server's data-plane socket (from `/proc/net/udp` and
/// `/proc/net/udp6`, Linux only). This says on which side a loss happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpDrops {
    /// Dropped at the bench's sockets: the bench did not read fast enough.
    pub bench: u64,
    /// Dropped at the server's socket: the server did not read fast enough.
    pub server: u64,
}

impl UdpDrops {
    /// Reads the counters now; `None` where `/proc/net/udp` does not exist.
    pub fn read(bench_ports: &HashSet<u16>, server_port: u16) -> Option<UdpDrops> {
        let mut total = UdpDrops::default();
        let mut any = false;
        for file in ["/proc/net/udp", "/proc/net/udp6"] {
            if let Ok(text) = std::fs::read_to_string(file) {
                any = true;
                let d = parse_proc_udp(&text, bench_ports, server_port);
                total.bench += d.bench;
                total.server += d.server;
            }
        }
        any.then_some(total)
    }

    /// The drops since `earlier`.
    pub fn since(self, earlier: UdpDrops) -> UdpDrops {
        UdpDrops {
            bench: self.bench.saturating_sub(earlier.bench),
            server: self.server.saturating_sub(earlier.server),
        }
    }
}

/// Sums the `drops` column of `/proc/net/udp` text for sockets whose local port is one of
/// `bench_ports` (bench side) or is `server_port` and that are not connected (the server).
pub fn parse_proc_udp(text: &str, bench_ports: &HashSet<u16>, server_port: u16) -> UdpDrops {
    let mut d = UdpDrops::default();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        if cols.len() < 13 {
            continue;
        }
        let port = |addr: &str| {
            addr.rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        let (Some(local), Some(remote)) = (port(cols[1]), port(cols[2])) else {
            continue;
        };
        let Ok(drops) = cols[12].parse::<u64>() else {
            continue;
        };
        if bench_ports.contains(&local) {
            d.bench += drops;
        } else if local == server_port && remote == 0 {
            d.server += drops;
        }
    }
    d
}

/// A poll timeout never longer than this, so that a missed wake-up costs little.
pub const MAX_POLL_WAIT: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_udp_drops_are_attributed_by_port() {
        let text = "\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 0100007F:1F91 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1111 2 0000000000000000 7
  101: 0100007F:C350 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 2222 2 0000000000000000 3
  102: 0100007F:C351 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 3333 2 0000000000000000 4
  103: 0100007F:D000 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 4444 2 0000000000000000 100
";
        let ports: HashSet<u16> = [0xC350, 0xC351].into_iter().collect();
        assert_eq!(
            parse_proc_udp(text, &ports, 0x1F91),
            UdpDrops {
                bench: 7,
                server: 7
            }
        );
    }

    #[test]
    fn cpu_time_grows() {
        let t0 = CpuTime::now();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let d = CpuTime::now().since(t0);
        assert!(d.user_s + d.sys_s >= 0.0);
    }

    #[test]
    fn nofile_limit_is_at_least_what_it_was() {
        assert!(raise_nofile_limit().unwrap() >= 256);
    }
}
