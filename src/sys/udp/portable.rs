//! The portable path where `recvmmsg`/`sendmmsg` do not exist: one `recv_from` / `send_to`
//! per datagram, with the same interface as `linux.rs`. It cannot read or choose the local
//! address (no packet-info).
//!
//! This file holds one `unsafe` block: viewing a byte buffer as `MaybeUninit` for socket2.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use log::debug;
use socket2::{SockAddr, SockRef};

use super::{Dest, RECV_BATCH, SLOT};

/// Fixed buffers for [`RECV_BATCH`] datagrams, read one system call each.
pub struct Receiver {
    bufs: Box<[u8]>,
    got: [(Option<SocketAddr>, usize); RECV_BATCH],
    filled: usize,
}

impl Receiver {
    /// Buffers for one batch; packet-info does not exist here, so `_pktinfo` is ignored.
    pub fn new(_pktinfo: bool) -> Self {
        Receiver {
            bufs: vec![0u8; RECV_BATCH * SLOT].into_boxed_slice(),
            got: [(None, 0); RECV_BATCH],
            filled: 0,
        }
    }

    /// Reads up to [`RECV_BATCH`] datagrams without blocking; `WouldBlock` when none wait.
    pub fn recv(&mut self, socket: &impl AsFd) -> io::Result<usize> {
        let sock = SockRef::from(socket);
        self.filled = 0;
        while self.filled < RECV_BATCH {
            let i = self.filled;
            let slot = &mut self.bufs[i * SLOT..(i + 1) * SLOT];
            // SAFETY: `u8` and `MaybeUninit<u8>` have the same layout, and `recv_from` only
            // writes initialised bytes, so `slot` stays initialised.
            let slot = unsafe { &mut *(slot as *mut [u8] as *mut [MaybeUninit<u8>]) };
            match sock.recv_from(slot) {
                Ok((n, from)) => {
                    self.got[i] = (from.as_socket(), n.min(SLOT));
                    self.filled += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && i > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(self.filled)
    }

    /// Datagram `i` of the last batch: source, local address (never known here), bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, Option<IpAddr>, &[u8])> {
        if i >= self.filled {
            return None;
        }
        let (from, len) = self.got[i];
        Some((from?, None, &self.bufs[i * SLOT..i * SLOT + len]))
    }
}

/// No scratch is needed.
#[derive(Debug, Default)]
pub struct Sender;

/// One `send_to` per receiver.
pub struct BatchTx<'a> {
    sock: SockRef<'a>,
}

impl<'a> BatchTx<'a> {
    /// Sends through `socket` (which must be non-blocking).
    pub fn new<S: AsFd>(socket: &'a S, _: &mut Sender) -> Self {
        BatchTx {
            sock: SockRef::from(socket),
        }
    }

    /// As [`BatchTx::new`]: the caller's send timeout bounds the drain.
    pub fn draining<S: AsFd>(socket: &'a S, s: &mut Sender, _until: std::time::Instant) -> Self {
        BatchTx::new(socket, s)
    }

    /// As [`BatchTx::send`]: there is no batch to join here, so nothing is staged.
    pub fn stage(&mut self, payload: &[u8], to: &[Dest], _tag: u8) -> usize {
        self.send(payload, to)
    }

    /// Nothing is ever staged here.
    pub fn send_staged(&mut self, _refused: impl FnMut(&[u8], u8)) -> usize {
        0
    }

    /// Sends `payload` to each of `to`; returns how many sends the socket took.
    pub fn send(&mut self, payload: &[u8], to: &[Dest]) -> usize {
        let mut sent = 0;
        for Dest { addr, .. } in to {
            let addr = SockAddr::from(*addr);
            loop {
                match self.sock.send_to(payload, &addr) {
                    Ok(_) => sent += 1,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => debug!("send to {:?} dropped: {e}", addr.as_socket()),
                }
                break;
            }
        }
        sent
    }
}
