//! The few system calls the bench needs that std and mio do not offer, each behind a small
//! safe function: the open-file limit, CPU time, `recvmmsg`, a timerfd for precise pacing,
//! socket receive buffers, and the kernel's per-socket UDP drop counters.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use ocm::protocol::MAX_DATAGRAM;

/// Raises the soft open-file limit to the hard limit (500+ UDP sockets need it).
/// Returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

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

/// Sets a socket's receive buffer to `bytes`: SO_RCVBUFFORCE when permitted (root),
/// SO_RCVBUF otherwise (capped by `net.core.rmem_max`). Returns the size now in force.
pub fn set_rcvbuf(sock: &impl AsRawFd, bytes: usize) -> io::Result<usize> {
    let fd = sock.as_raw_fd();
    let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let set = |opt| {
        // SAFETY: the option value is a c_int that lives for the call.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&val as *const libc::c_int).cast(),
                len,
            )
        }
    };
    #[cfg(target_os = "linux")]
    let forced = set(libc::SO_RCVBUFFORCE) == 0;
    #[cfg(not(target_os = "linux"))]
    let forced = false;
    if !forced && set(libc::SO_RCVBUF) != 0 {
        return Err(io::Error::last_os_error());
    }
    rcvbuf(sock)
}

/// A socket's receive buffer size as the kernel reports it.
pub fn rcvbuf(sock: &impl AsRawFd) -> io::Result<usize> {
    let fd = sock.as_raw_fd();
    let mut got: libc::c_int = 0;
    let mut got_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `got_len` bytes into `got`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut got_len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(got).unwrap_or(0))
}

/// How many datagrams one [`RecvBatch::recv`] reads at most.
pub const RECV_BATCH: usize = 32;

/// Buffers for reading up to [`RECV_BATCH`] datagrams from a socket in one system call
/// (`recvmmsg` on Linux, a loop of `recv` elsewhere).
pub struct RecvBatch {
    bufs: Box<[u8]>,
    lens: [usize; RECV_BATCH],
    truncated: [bool; RECV_BATCH],
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![0u8; RECV_BATCH * MAX_DATAGRAM].into_boxed_slice(),
            lens: [0; RECV_BATCH],
            truncated: [false; RECV_BATCH],
        }
    }
}

impl RecvBatch {
    /// Reads what is queued on the non-blocking, connected socket `fd`, up to
    /// [`RECV_BATCH`] datagrams. Returns how many were read; `WouldBlock` when none was
    /// queued. Fewer than [`RECV_BATCH`] means the queue was empty when the call returned.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        {
            self.recv_mmsg(fd)
        }
        #[cfg(not(target_os = "linux"))]
        {
            self.recv_loop(fd)
        }
    }

    #[cfg(target_os = "linux")]
    fn recv_mmsg(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY (zeroed): iovec and mmsghdr are plain C structs; all-zero is valid.
        let mut iov: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for (i, (v, h)) in iov.iter_mut().zip(hdrs.iter_mut()).enumerate() {
            v.iov_base = self.bufs[i * MAX_DATAGRAM..].as_mut_ptr().cast();
            v.iov_len = MAX_DATAGRAM;
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        let n = loop {
            // SAFETY: every header points at one iovec of ours, each iovec at a distinct
            // MAX_DATAGRAM-byte slice of `self.bufs`; all outlive the call. No name or
            // control buffers are given (the socket is connected).
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    RECV_BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        for (i, h) in hdrs.iter().take(n).enumerate() {
            self.lens[i] = (h.msg_len as usize).min(MAX_DATAGRAM);
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    #[cfg(not(target_os = "linux"))]
    fn recv_loop(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut n = 0;
        while n < RECV_BATCH {
            let buf = &mut self.bufs[n * MAX_DATAGRAM..(n + 1) * MAX_DATAGRAM];
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let rc = unsafe {
                libc::recv(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock if n > 0 => break,
                    _ => return Err(e),
                }
            }
            self.lens[n] = (rc as usize).min(MAX_DATAGRAM);
            self.truncated[n] = rc as usize > MAX_DATAGRAM;
            n += 1;
        }
        Ok(n)
    }

    /// Datagram `i` of the last read, and whether the kernel cut it short (it was longer
    /// than [`MAX_DATAGRAM`], which no OCM server sends).
    pub fn get(&self, i: usize) -> (&[u8], bool) {
        let start = i * MAX_DATAGRAM;
        (&self.bufs[start..start + self.lens[i]], self.truncated[i])
    }
}

/// A one-shot monotonic timer with nanosecond resolution, readable through mio (a Linux
/// timerfd). mio's own poll timeout has millisecond resolution, too coarse to pace sends
/// 50 µs apart. Where timerfd does not exist, [`Timer::new`] fails and the caller falls back
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
        Ok(Timer {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
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
    fn recv_batch_reads_several_datagrams_at_once() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::default();
        let e = batch.recv(b.as_raw_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        for i in 0..5u8 {
            a.send(&[i; 3]).unwrap();
        }
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while got.len() < 5 && std::time::Instant::now() < deadline {
            if let Ok(n) = batch.recv(b.as_raw_fd()) {
                for i in 0..n {
                    let (d, cut) = batch.get(i);
                    assert!(!cut);
                    got.push(d.to_vec());
                }
            }
        }
        assert_eq!(got, (0..5u8).map(|i| vec![i; 3]).collect::<Vec<_>>());
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
