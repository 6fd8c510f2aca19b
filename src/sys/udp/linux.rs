//! Batched UDP system calls on Linux: `recvmmsg` in, `sendmmsg` out, behind a safe
//! interface.
//!
//! * [`Receiver`] reads up to [`RECV_BATCH`] datagrams per system call into fixed slots.
//! * [`BatchTx`] sends one payload to a whole fan-out with one `sendmmsg`, every message
//!   header pointing at the *same* bytes (no copy per receiver). Small fan-outs (rooms of
//!   a few members) can instead be *staged*: the payload is copied once into an arena and
//!   the datagrams of many rooms leave together in one `sendmmsg`, where one call per room
//!   would cost more in system calls than in sending.
//! * On a wildcard bind (`0.0.0.0`, `::`) both carry the local address in `IP_PKTINFO` /
//!   `IPV6_PKTINFO`, so that each member's datagrams leave from the address that member
//!   sends to, as the protocol asks of multi-homed servers.
//!
//! This file holds `unsafe`: each block fills plain C structs that point into buffers owned
//! by the same struct, for the duration of one system call.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::ptr;

use super::{Dest, RECV_BATCH, SLOT, STAGE_BYTES, drive};
/// Most messages per `sendmmsg` (the kernel's UIO_MAXIOV).
const SEND_BATCH: usize = 1024;

/// Room for one packet-info control message, aligned as `cmsghdr` wants.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Ctrl([u8; 64]);

/// Turns on delivery of the local address of each received datagram.
pub fn enable_pktinfo(socket: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    let one: libc::c_int = 1;
    let opts: &[(libc::c_int, libc::c_int)] = if ipv6 {
        &[
            (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
            (libc::IPPROTO_IP, libc::IP_PKTINFO),
        ]
    } else {
        &[(libc::IPPROTO_IP, libc::IP_PKTINFO)]
    };
    for &(level, name) in opts {
        // SAFETY: setsockopt reads one c_int from a valid pointer.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Fixed buffers for `recvmmsg`: [`RECV_BATCH`] slots of one datagram each.
pub struct Receiver {
    bufs: Box<[u8]>,
    names: Box<[libc::sockaddr_storage]>,
    ctrl: Box<[Ctrl]>,
    iovs: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
    filled: usize,
    pktinfo: bool,
}

// SAFETY: the raw pointers inside the C headers point only into buffers this Receiver owns
// (boxed, so they do not move with it), and they are all rewritten before each `recvmmsg`;
// nothing reads them between calls. Moving the Receiver to another thread is thus sound.
unsafe impl Send for Receiver {}

impl Receiver {
    /// Buffers for one batch; `pktinfo` asks for each datagram's local address.
    pub fn new(pktinfo: bool) -> Self {
        Receiver {
            bufs: vec![0u8; RECV_BATCH * SLOT].into_boxed_slice(),
            names: zeroed_slice(RECV_BATCH),
            ctrl: vec![Ctrl([0; 64]); RECV_BATCH].into_boxed_slice(),
            iovs: zeroed_slice(RECV_BATCH),
            msgs: zeroed_slice(RECV_BATCH),
            filled: 0,
            pktinfo,
        }
    }

    /// Reads up to [`RECV_BATCH`] datagrams without blocking; `WouldBlock` when none wait.
    pub fn recv(&mut self, socket: &impl AsFd) -> io::Result<usize> {
        self.filled = 0;
        for i in 0..RECV_BATCH {
            self.iovs[i] = libc::iovec {
                // SAFETY: i * SLOT + SLOT <= bufs.len(), so the pointer stays in bounds.
                iov_base: unsafe { self.bufs.as_mut_ptr().add(i * SLOT) }.cast(),
                iov_len: SLOT,
            };
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            if self.pktinfo {
                h.msg_control = self.ctrl[i].0.as_mut_ptr().cast();
                h.msg_controllen = size_of::<Ctrl>() as _;
            } else {
                h.msg_control = ptr::null_mut();
                h.msg_controllen = 0;
            }
            h.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by `self` that outlive the call,
        // with the lengths of those buffers.
        let r = unsafe {
            libc::recvmmsg(
                socket.as_fd().as_raw_fd(),
                self.msgs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.filled = r as usize;
        Ok(self.filled)
    }

    /// Datagram `i` of the last batch: source, local address (with pktinfo), bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, Option<IpAddr>, &[u8])> {
        if i >= self.filled {
            return None;
        }
        let m = &self.msgs[i];
        let len = (m.msg_len as usize).min(SLOT);
        let from = read_sockaddr(&self.names[i])?;
        let local = if self.pktinfo {
            // SAFETY: the kernel filled msg_control/msg_controllen for this header.
            unsafe { read_pktinfo(&m.msg_hdr) }
        } else {
            None
        };
        Some((from, local, &self.bufs[i * SLOT..i * SLOT + len]))
    }
}

/// Scratch for `sendmmsg`, grown to the largest fan-out seen and then reused: the relay's
/// send path allocates nothing in steady state.
#[derive(Default)]
pub struct Sender {
    names: Vec<libc::sockaddr_storage>,
    lens: Vec<libc::socklen_t>,
    ctrl: Vec<Ctrl>,
    ctrl_lens: Vec<usize>,
    msgs: Vec<libc::mmsghdr>,
    staged: Staged,
}

/// Datagrams staged for one cross-room `sendmmsg`: payload bytes copied into an arena
/// (reserved once, never grown past [`STAGE_BYTES`]), and each receiver with the index of
/// its payload.
#[derive(Default)]
struct Staged {
    arena: Vec<u8>,
    /// (offset, length, the caller's tag) of each payload in the arena.
    payloads: Vec<(usize, usize, u8)>,
    /// One iovec per payload, pointed at the arena just before the call.
    iovs: Vec<libc::iovec>,
    /// Each receiver and the index of its payload.
    dests: Vec<(Dest, usize)>,
}

// SAFETY: as for Receiver: every pointer in the headers is rewritten before each
// `sendmmsg` and never read between calls (the shared iovec lives only for one send).
unsafe impl Send for Sender {}

/// Sends one payload to many receivers over `sendmmsg` (the server's `Transmit`).
pub struct BatchTx<'a> {
    fd: RawFd,
    scratch: &'a mut Sender,
    flags: libc::c_int,
    /// While draining: when waiting for buffer space must stop.
    drain_until: Option<std::time::Instant>,
}

impl<'a> BatchTx<'a> {
    /// Sends through `socket` without ever blocking, using `scratch`.
    pub fn new(socket: &impl AsFd, scratch: &'a mut Sender) -> Self {
        BatchTx {
            fd: socket.as_fd().as_raw_fd(),
            scratch,
            flags: libc::MSG_DONTWAIT,
            drain_until: None,
        }
    }

    /// Like [`BatchTx::new`], but until `until` a full buffer makes a send wait (as long
    /// as the socket's send timeout allows) instead of dropping: for the final drain at
    /// shutdown, never inside the loop. After `until` it drops again, so exit is bounded.
    pub fn draining(
        socket: &impl AsFd,
        scratch: &'a mut Sender,
        until: std::time::Instant,
    ) -> Self {
        BatchTx {
            fd: socket.as_fd().as_raw_fd(),
            scratch,
            flags: 0,
            drain_until: Some(until),
        }
    }
}

impl BatchTx<'_> {
    /// Sends `payload` to each of `to` without blocking (except while draining); returns
    /// how many sends the socket took. Refused receivers are dropped, never retried.
    /// Anything staged leaves first, so that datagrams leave in the order they were given.
    pub fn send(&mut self, payload: &[u8], to: &[Dest]) -> usize {
        if !self.scratch.staged.dests.is_empty() {
            self.send_staged(|_, _| {});
        }
        let n = to.len();
        let s = &mut *self.scratch;
        s.grow(n);
        for (i, d) in to.iter().enumerate() {
            s.address(i, d);
        }
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        for i in 0..n {
            // Every message points at the same bytes: encoded once, sent to all.
            s.header(i, &mut iov);
        }
        self.call(n, |_| {})
    }

    /// Stages `payload` for each of `to`, to leave with other staged datagrams in one
    /// `sendmmsg` at [`BatchTx::send_staged`], which the caller must call before it waits
    /// (what is staged otherwise waits in the [`Sender`] for the next send). Returns how
    /// many were staged: all of `to`; a refusal shows later, through `send_staged`'s
    /// callback, with `tag` (the caller's: what kind of datagram it was). The payload is
    /// copied once, whatever `to`'s size, so this is for small fan-outs.
    pub fn stage(&mut self, payload: &[u8], to: &[Dest], tag: u8) -> usize {
        let st = &self.scratch.staged;
        if st.arena.len() + payload.len() > STAGE_BYTES || st.dests.len() + to.len() > SEND_BATCH {
            self.send_staged(|_, _| {});
        }
        if payload.len() > STAGE_BYTES || to.len() > SEND_BATCH {
            return self.send(payload, to);
        }
        let st = &mut self.scratch.staged;
        if st.arena.capacity() < STAGE_BYTES {
            st.arena.reserve_exact(STAGE_BYTES - st.arena.len());
        }
        let index = st.payloads.len();
        st.payloads.push((st.arena.len(), payload.len(), tag));
        st.arena.extend_from_slice(payload);
        st.dests.extend(to.iter().map(|&d| (d, index)));
        to.len()
    }

    /// Sends everything staged in one `sendmmsg` (a few, past [`SEND_BATCH`] receivers);
    /// calls `refused` with the payload and tag of each datagram the socket did not take.
    /// Returns how many it took.
    pub fn send_staged(&mut self, mut refused: impl FnMut(&[u8], u8)) -> usize {
        let s = &mut *self.scratch;
        let n = s.staged.dests.len();
        if n == 0 {
            return 0;
        }
        s.grow(n);
        let st = &mut s.staged;
        st.iovs.clear();
        for &(offset, len, _) in &st.payloads {
            st.iovs.push(libc::iovec {
                // SAFETY: offset + len <= arena.len(): the payload was copied there.
                iov_base: unsafe { st.arena.as_mut_ptr().add(offset) }.cast(),
                iov_len: len,
            });
        }
        for i in 0..n {
            let (dest, index) = s.staged.dests[i];
            s.address(i, &dest);
            let iov: *mut libc::iovec = &mut s.staged.iovs[index];
            // SAFETY: iovs is not resized until the call is over, so the pointer stays
            // valid; header() only stores it.
            s.header(i, unsafe { &mut *iov });
        }
        // Moved out (its heap buffers, which the headers point into, stay where they are)
        // so that the refusal callback can read it while the call borrows the headers.
        let mut st = std::mem::take(&mut self.scratch.staged);
        let sent = self.call(n, |i| {
            let (offset, len, tag) = st.payloads[st.dests[i].1];
            refused(&st.arena[offset..offset + len], tag);
        });
        st.arena.clear();
        st.payloads.clear();
        st.dests.clear();
        self.scratch.staged = st;
        sent
    }

    /// Sends headers `0..n` (filled by the caller), calling `refused` with the index of each
    /// one the socket did not take; returns how many it took.
    fn call(&mut self, n: usize, mut refused: impl FnMut(usize)) -> usize {
        if self
            .drain_until
            .is_some_and(|t| std::time::Instant::now() >= t)
        {
            self.flags = libc::MSG_DONTWAIT;
        }
        let (fd, flags) = (self.fd, self.flags);
        let msgs = &mut self.scratch.msgs;
        let mut next = 0;
        let sent = drive(n, |start, len| {
            // Whatever drive skipped between the last call and this one was refused.
            (next..start).for_each(&mut refused);
            let len = len.min(SEND_BATCH);
            // SAFETY: msgs[start..start + len] are initialised headers whose pointers (names,
            // control, the iovecs and payloads) are alive for this call.
            let r = unsafe {
                libc::sendmmsg(fd, msgs.as_mut_ptr().add(start), len as libc::c_uint, flags)
            };
            if r < 0 {
                next = start;
                Err(io::Error::last_os_error())
            } else {
                next = start + r as usize;
                Ok(r as usize)
            }
        });
        // What is left after the last call (a full buffer) was refused too.
        (next..n).for_each(refused);
        sent
    }
}

impl Sender {
    /// Makes room for `n` message headers.
    fn grow(&mut self, n: usize) {
        if self.msgs.len() < n {
            self.names = zeroed_slice(n).into_vec();
            self.lens.resize(n, 0);
            self.ctrl.resize(n, Ctrl([0; 64]));
            self.ctrl_lens.resize(n, 0);
            self.msgs = zeroed_slice(n).into_vec();
        }
    }

    /// Writes receiver `d`'s address (and packet-info) into slot `i`.
    fn address(&mut self, i: usize, d: &Dest) {
        self.lens[i] = write_sockaddr(&d.addr, &mut self.names[i]);
        self.ctrl_lens[i] = d.local.map_or(0, |ip| write_pktinfo(ip, &mut self.ctrl[i]));
    }

    /// Points header `i` at slot `i`'s address and control data, and at `iov`.
    fn header(&mut self, i: usize, iov: &mut libc::iovec) {
        let h = &mut self.msgs[i].msg_hdr;
        h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = self.lens[i];
        h.msg_iov = iov;
        h.msg_iovlen = 1;
        if self.ctrl_lens[i] > 0 {
            h.msg_control = self.ctrl[i].0.as_mut_ptr().cast();
            h.msg_controllen = self.ctrl_lens[i] as _;
        } else {
            h.msg_control = ptr::null_mut();
            h.msg_controllen = 0;
        }
        h.msg_flags = 0;
    }
}

/// `n` zeroed C structs.
fn zeroed_slice<T: ZeroIsValid>(n: usize) -> Box<[T]> {
    // SAFETY: ZeroIsValid is implemented only for plain C structs whose all-zero value
    // (null pointers, zero lengths) is valid.
    (0..n).map(|_| unsafe { zeroed() }).collect()
}

/// C structs for which all-zero bytes is a valid value.
trait ZeroIsValid {}
impl ZeroIsValid for libc::sockaddr_storage {}
impl ZeroIsValid for libc::iovec {}
impl ZeroIsValid for libc::mmsghdr {}

fn write_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let out: *mut libc::sockaddr_storage = out;
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { ptr::write(out.cast(), sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { ptr::write(out.cast(), sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn read_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let p: *const libc::sockaddr_storage = s;
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { ptr::read(p.cast()) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { ptr::read(p.cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            let flow = u32::from_be(sin6.sin6_flowinfo);
            Some(SocketAddrV6::new(ip, port, flow, sin6.sin6_scope_id).into())
        }
        _ => None,
    }
}

/// Writes a packet-info control message that makes the kernel send from `local`; returns
/// the control length.
fn write_pktinfo(local: IpAddr, ctrl: &mut Ctrl) -> usize {
    let c = ctrl.0.as_mut_ptr() as *mut libc::cmsghdr;
    // SAFETY: `ctrl` is 64 bytes, 8-aligned: room for a cmsghdr (16) and either pktinfo
    // struct (12 or 20 bytes) after it.
    unsafe {
        match local {
            IpAddr::V4(ip) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(ip).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                (*c).cmsg_level = libc::IPPROTO_IP;
                (*c).cmsg_type = libc::IP_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
                libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize
            }
            IpAddr::V6(ip) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                (*c).cmsg_level = libc::IPPROTO_IPV6;
                (*c).cmsg_type = libc::IPV6_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
                ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
                libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize
            }
        }
    }
}

/// The local address from a received message's packet-info control message.
///
/// # Safety
/// `h` must be a header the kernel just filled (control pointer and length valid).
unsafe fn read_pktinfo(h: &libc::msghdr) -> Option<IpAddr> {
    // SAFETY: per the contract, the control buffer is valid; CMSG_* walk within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info: libc::in_pktinfo = ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    // The local address the packet arrived on (for a broadcast, the
                    // interface's address, not the broadcast address).
                    let local = u32::from_be(info.ipi_spec_dst.s_addr);
                    return Some(IpAddr::V4(Ipv4Addr::from(local)));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info: libc::in6_pktinfo = ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

#[cfg(test)]
mod tests;
