//! The TLS side of the loop: for a connection with a [`TlsLayer`], records go between the
//! socket and the layer, and plaintext between the layer and the [`Conn`] (the shape of
//! rustls's `tlsserver-mio` example). Plain connections never come here.
//!
//! [`TlsLayer`]: crate::server::tls::TlsLayer
//! [`Conn`]: crate::server::conn::Conn

use std::io;
use std::net::Shutdown;
use std::time::Instant;

use log::debug;
use mio::Token;

use super::{CONN_BASE, DISCARD_BUF, READS_PER_TURN, Server};
use crate::server::conn::admission::Kind;
use crate::server::tls::{Plaintext, ReadTls, TlsFailure};

impl Server {
    /// Reads records, counts a finished handshake, and hands the plaintext to the `Conn`
    /// like [`Server::on_readable`] hands plain bytes.
    pub(super) fn on_readable_tls(&mut self, key: usize, now: Instant) {
        let mut discard = [0u8; DISCARD_BUF];
        for reads in 0.. {
            let Some(client) = self.clients.slab.get_mut(key) else {
                return;
            };
            if reads == READS_PER_TURN {
                self.backlog.push(Token(key + CONN_BASE));
                break;
            }
            let Some(tls) = client.tls.as_mut() else {
                return;
            };
            let read = match tls.read_from(&mut client.stream) {
                Ok(read) => read,
                Err(e) => {
                    self.tls_failed(key, e);
                    return;
                }
            };
            if tls.handshake_just_done() {
                self.stats.tls_handshakes += 1;
                if client.kind == Kind::Tcrp {
                    // A TCRP client may now sit idle like a plain one; a web client still
                    // owes its request head within the time counted from accept.
                    client.conn.preamble_done(now);
                }
            }
            loop {
                let Some(client) = self.clients.slab.get_mut(key) else {
                    return;
                };
                let Some(tls) = client.tls.as_mut() else {
                    return;
                };
                let buf = client.conn.read_buf().unwrap_or(&mut discard);
                match tls.take_plaintext(buf) {
                    Plaintext::Bytes(n) => self.serve(key, now, n),
                    Plaintext::Empty => break,
                    Plaintext::End => {
                        self.serve(key, now, 0);
                        break;
                    }
                }
                if self.close_if_done(key) {
                    return;
                }
            }
            if self.close_if_done(key) {
                return;
            }
            match read {
                ReadTls::Read => {}
                ReadTls::WouldBlock | ReadTls::Eof => break,
            }
        }
        self.on_writable(key, now);
    }

    /// Hands the `Conn`'s answers to the layer and writes the records it owes; reports
    /// answers written to the `Conn` once they are on the socket, and shuts the write side
    /// after the last one and close_notify.
    pub(super) fn on_writable_tls(&mut self, key: usize, now: Instant) {
        let Some(client) = self.clients.slab.get_mut(key) else {
            return;
        };
        let Some(tls) = client.tls.as_mut() else {
            return;
        };
        loop {
            let out = client.conn.output();
            if tls.handed < out.len() {
                tls.handed += tls.encrypt(&out[tls.handed..]);
            }
            if !tls.wants_write() {
                if tls.handed == 0 || tls.is_handshaking() {
                    break;
                }
                // Everything handed over is on the socket now.
                let n = std::mem::take(&mut tls.handed);
                if client.conn.on_written(n, now) {
                    tls.close_after_flush();
                }
                continue;
            }
            match tls.write_to(&mut client.stream) {
                Ok(0) => {
                    self.close(key);
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("write to {}: {e}", client.peer);
                    self.close(key);
                    return;
                }
            }
        }
        if tls.should_shut() {
            let _ = client.stream.shutdown(Shutdown::Write);
        }
        if self.close_if_done(key) || !self.update_interest(key) {
            return;
        }
        self.reschedule(key);
    }

    /// A TLS connection failed: a broken handshake or record is counted, told so with the
    /// alert rustls queued (one try), and closed; the server goes on.
    fn tls_failed(&mut self, key: usize, e: TlsFailure) {
        let Some(client) = self.clients.slab.get_mut(key) else {
            return;
        };
        if let TlsFailure::Protocol(_) = e {
            self.stats.tls_errors += 1;
            if let Some(tls) = client.tls.as_mut() {
                let _ = tls.write_to(&mut client.stream);
            }
        }
        debug!("closing {}: {e}", client.peer);
        self.close(key);
    }
}
