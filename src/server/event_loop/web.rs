//! The web side of the loop: datagrams for WebSocket sessions go from the
//! [`SessionOutbox`](crate::server::web::SessionOutbox) into each session's output buffer,
//! and touched sessions are written once per turn.

use std::time::Instant;

use super::Server;
use crate::server::web::{CHANNEL_DATAGRAM, frame};

impl Server {
    /// Frames the queued datagrams into their sessions' buffers: one slab index per
    /// receiver (key and generation), no scan. A session whose buffer cannot take one has
    /// it dropped and counted, as a full socket buffer drops UDP; one that has closed
    /// simply gets nothing.
    pub(super) fn deliver_to_sessions(&mut self) {
        let web = &mut self.web;
        if web.outbox.is_empty() {
            return;
        }
        let slab = &mut self.clients.slab;
        let (stats, touched) = (&mut web.stats, &mut web.touched);
        web.outbox.drain(|to, payload| {
            let Some(client) = slab.get_mut(to.key).filter(|c| c.id == to.id) else {
                return;
            };
            let len = frame::header_len(1 + payload.len()) + 1 + payload.len();
            let took = client.conn.offer(len, |out| {
                frame::write_unit(out, CHANNEL_DATAGRAM, payload);
            });
            if !took {
                stats.datagrams_dropped += 1;
                return;
            }
            stats.messages_out += 1;
            if !client.touched {
                client.touched = true;
                touched.push(to.key);
            }
        });
    }

    /// Writes every session that was given output this turn.
    pub(super) fn write_touched(&mut self, now: Instant) {
        let touched = std::mem::take(&mut self.web.touched);
        for &key in &touched {
            if let Some(client) = self.clients.slab.get_mut(key) {
                client.touched = false;
                self.on_writable(key, now);
            }
        }
        if self.web.touched.is_empty() {
            self.web.touched = touched;
            self.web.touched.clear();
        }
    }
}
