//! The relay harness's v1.1 operations (SEND, NACK, SYNC, RESUME) and what their answers
//! must be, written from PROTOCOL.md §5 and docs/protocol.md §13 rather than from the
//! relay's code: a NACK answer holds exactly the held events of its range (a suffix of the
//! used part, after one GONE for the rest, as far as the repair bucket pays) with the bytes
//! they had when first sent; the bucket is never overdrawn; a ClientSeq is relayed once.

use std::net::{IpAddr, SocketAddr};

use super::model::{Harness, StepCtx};
use super::{ROOMS, ip};
use crate::protocol::control::{ControlBody, ControlDatagram};
use crate::protocol::event::{EventKind, Gone, RawEvents, SyncInfo};
use crate::protocol::frame::{Frame, Grant, Request};
use crate::protocol::{MAX_DATAGRAM, MAX_MESSAGE, Status, next_seq};
use crate::server::DatagramOutcome;
use crate::server::relay::testing::latest_seq;

/// The resume key the harness gives at CREATE and JOIN when asked to.
pub(super) const KEY: &[u8] = b"the harness's resume key";
/// A key of the same length that is not it.
const WRONG_KEY: &[u8] = b"the harness's resume kez";

/// Room Seqs run 1..=0xFFFFFFFF: this many values.
const CYCLE: u64 = u32::MAX as u64;

/// Whether `s` is 1 to 2^31-1 ahead of `latest` (serially): not yet used (§5.2).
fn ahead(latest: u32, s: u32) -> bool {
    let d = (u64::from(s) + CYCLE - u64::from(latest)) % CYCLE;
    (1..(1 << 31)).contains(&d)
}

/// The Seqs a NACK asks for that the room has used, in order.
fn used(latest: u32, from_seq: u32, count: u16) -> Vec<u32> {
    if latest == 0 {
        return Vec::new();
    }
    let mut s = from_seq;
    let mut out = Vec::new();
    for _ in 0..count {
        if !ahead(latest, s) {
            out.push(s);
        }
        s = next_seq(s);
    }
    out
}

/// Counters a NACK answer is read from.
#[derive(Clone, Copy)]
struct Before {
    sends: usize,
    events: u64,
    dropped: u64,
    gone: u64,
}

impl Harness {
    fn control_bytes(&self, room: &str, token: &[u8], body: ControlBody<'_>) -> Vec<u8> {
        let mut buf = [0u8; MAX_DATAGRAM];
        // Invalid NACK fields cannot be encoded: encode valid ones and patch them in.
        let (valid, patch) = match body {
            ControlBody::Nack { from_seq, count } => {
                let v = ControlBody::Nack {
                    from_seq: 1,
                    count: 1,
                };
                (v, Some((from_seq, count)))
            }
            b => (b, None),
        };
        let d = ControlDatagram {
            room: room.as_bytes(),
            token,
            body: valid,
        };
        let n = d
            .encode(&mut buf)
            .expect("the harness builds valid datagrams");
        if let Some((from_seq, count)) = patch {
            buf[n - 6..n - 2].copy_from_slice(&from_seq.to_be_bytes());
            buf[n - 2..n].copy_from_slice(&count.to_be_bytes());
        }
        buf[..n].to_vec()
    }

    /// A SEND (see [`super::RelayOp::Send`]).
    pub(super) fn send(&mut self, a: u8, t: u8, i: u8, client_seq: u32, ctx: &mut StepCtx) {
        let (room, token, which, from) = self.aim(a, t, i);
        let long = "m".repeat(MAX_MESSAGE);
        let message = match a >> 6 {
            0 => "hi",
            1 => "こんにちは 👋",
            2 => "a line of a chat",
            _ => &long,
        };
        let body = ControlBody::Send {
            client_seq,
            message,
        };
        let bytes = self.control_bytes(room, &token, body);
        let before = which.map(|w| self.issued[w].client_seq);
        let outcome = self.datagram(from, &bytes, which, ctx);
        let (Some(w), Some(highest)) = (which, before) else {
            return;
        };
        match outcome {
            DatagramOutcome::Relayed => {
                assert!(client_seq > highest, "ClientSeq {client_seq} relayed twice");
                self.issued[w].client_seq = client_seq;
            }
            DatagramOutcome::Duplicate => {
                assert!(
                    client_seq <= highest,
                    "a new ClientSeq taken as a duplicate"
                );
            }
            _ => {}
        }
    }

    /// A NACK (see [`super::RelayOp::Nack`]), its answer checked.
    pub(super) fn nack(
        &mut self,
        a: u8,
        t: u8,
        i: u8,
        from_seq: u32,
        count: u16,
        ctx: &mut StepCtx,
    ) {
        let (room, token, which, from) = self.aim(a, t, i);
        let bytes = self.control_bytes(room, &token, ControlBody::Nack { from_seq, count });
        let c = &self.relay.counters;
        let before = Before {
            sends: self.tx.asked.len(),
            events: c.repair_events,
            dropped: c.repair_dropped,
            gone: c.gone,
        };
        if self.datagram(from, &bytes, which, ctx) == DatagramOutcome::Nack {
            let w = which.expect("a NACK accepted from no member");
            self.check_nack_answer(w, from, (from_seq, count), before, ctx);
        }
    }

    /// Checks the sends a NACK was answered with and marks them as answers.
    fn check_nack_answer(
        &mut self,
        w: usize,
        from: SocketAddr,
        (from_seq, count): (u32, u16),
        before: Before,
        ctx: &mut StepCtx,
    ) {
        let c = &self.relay.counters;
        let sent = (c.repair_events - before.events) as usize;
        let dropped = (c.repair_dropped - before.dropped) as usize;
        let after = self.tx.asked.len();
        let mut end = after;
        let mut gone = None;
        if c.gone - before.gone == 1 {
            end -= 1;
            let evs: Vec<_> = RawEvents::new(&self.tx.rec.sent[end].0)
                .map(Result::unwrap)
                .collect();
            assert_eq!(evs.len(), 1, "GONE shares a datagram");
            assert_eq!(
                (evs[0].kind, evs[0].seq, evs[0].user),
                (EventKind::Gone as u8, 0, "")
            );
            assert_eq!(self.tx.asked[end], [from], "GONE to the asker alone");
            gone = Some(Gone::parse(evs[0].body).expect("a GONE body"));
        }
        // The resent events are the last datagrams before the GONE.
        let mut start = end;
        let mut counted = 0;
        while counted < sent {
            assert!(start > before.sends, "fewer answer events than counted");
            start -= 1;
            counted += RawEvents::new(&self.tx.rec.sent[start].0).count();
        }
        assert_eq!(counted, sent, "answer datagrams hold other events");
        ctx.answers.push((start, after));
        let rid = self.issued[w].rid;
        let mut seqs = Vec::new();
        let mut bytes = 0;
        for k in start..end {
            let payload = self.tx.rec.sent[k].0.clone();
            assert_eq!(self.tx.asked[k], [from], "a NACK answer to the asker alone");
            assert!(payload.len() <= MAX_DATAGRAM);
            let mut off = 0;
            for e in RawEvents::new(&payload) {
                let e = e.expect("a well-formed resent event");
                assert!(
                    (1..=5).contains(&e.kind),
                    "a resent event of kind {}",
                    e.kind
                );
                let raw = payload[off..off + e.len()].to_vec();
                off += e.len();
                bytes += raw.len() as u64;
                seqs.push(e.seq);
                self.claim(rid, e.seq, raw);
            }
        }
        let latest = latest_seq(&self.relay, self.issued[w].room);
        let used = used(latest, from_seq, count);
        let g = gone.map_or(0, |g| usize::from(g.count));
        if let Some(gn) = gone {
            assert_eq!(Some(&gn.from_seq), used.first(), "GONE starts the range");
        }
        assert_eq!(
            g + sent + dropped,
            used.len(),
            "GONE, resent and dropped cover the range"
        );
        assert_eq!(
            seqs,
            used[g..g + sent],
            "the held events, in order, from the oldest"
        );
        assert!(
            sent + dropped <= self.cfg.history,
            "more held than --history"
        );
        self.charge(w, bytes);
    }

    /// The repair bucket never pays out more than its burst and what refilled since.
    fn charge(&mut self, w: usize, bytes: u64) {
        let i = &mut self.issued[w];
        i.repair_bytes += bytes;
        let (rate, burst) = (self.cfg.repair_rate, self.cfg.repair_burst);
        if rate > 0 && burst > 0 {
            let refilled =
                self.now.saturating_duration_since(i.granted).as_secs_f64() * rate as f64;
            assert!(
                i.repair_bytes as f64 <= burst as f64 + refilled + 1.0,
                "the repair bucket was overdrawn"
            );
        }
    }

    /// A resent event's bytes must be those it was first sent with: checked now if that
    /// sending was seen, else when it is.
    fn claim(&mut self, rid: u32, seq: u32, raw: Vec<u8>) {
        match self.originals.get(&(rid, seq)) {
            Some(o) => assert_eq!(*o, raw, "Seq {seq} resent with other bytes"),
            None => self.claims.push((rid, seq, raw)),
        }
    }

    /// A SYNC (see [`super::RelayOp::Sync`]), its answer checked.
    pub(super) fn sync(&mut self, a: u8, t: u8, i: u8, ctx: &mut StepCtx) {
        let (room, token, which, from) = self.aim(a, t, i);
        let bytes = self.control_bytes(room, &token, ControlBody::Sync);
        if self.datagram(from, &bytes, which, ctx) != DatagramOutcome::Sync {
            return;
        }
        let w = which.expect("a SYNC accepted from no member");
        let k = self.tx.asked.len() - 1;
        ctx.answers.push((k, k + 1));
        assert_eq!(self.tx.asked[k], [from], "a SYNC answer to the asker alone");
        let payload = &self.tx.rec.sent[k].0;
        let evs: Vec<_> = RawEvents::new(payload).map(Result::unwrap).collect();
        assert_eq!(evs.len(), 1, "a SYNC answer shares a datagram");
        let i = &self.issued[w];
        assert_eq!(
            (evs[0].kind, evs[0].seq, evs[0].user),
            (EventKind::Sync as u8, 0, i.user)
        );
        let want = SyncInfo {
            last_seq: latest_seq(&self.relay, i.room),
            last_client_seq: i.client_seq,
        };
        assert_eq!(SyncInfo::parse(evs[0].body), Ok(want));
    }

    /// A RESUME (see [`super::RelayOp::Resume`]).
    pub(super) fn resume(&mut self, a: u8, t: u8, i: u8, k: u8, ctx: &mut StepCtx) {
        let mut room = ROOMS[usize::from(a % 4)];
        let (token, which) = self.choose_token(t, room);
        let mut from = ip(i);
        if let Some(w) = which {
            if a & 4 != 0 {
                room = self.issued[w].room;
            }
            if i & 4 != 0 {
                from = self.issued[w].ip;
            }
        }
        let key = match k % 4 {
            1 => WRONG_KEY,
            2 => &KEY[..16],
            _ => KEY,
        };
        let req = Request::Resume {
            room,
            token: &token,
            resume_key: key,
        };
        self.request(from, &req, ctx);
    }

    /// The status a RESUME must get (§5.5: 9, 2, 8, 7 in that order), and whom it moves.
    pub(super) fn expect_resume(
        &self,
        peer: IpAddr,
        room: &str,
        token: &[u8],
        key: &[u8],
    ) -> (Status, Option<usize>) {
        if self.throttled(peer) {
            return (Status::TooManyRequests, None);
        }
        let Some(&rid) = self
            .current_rid
            .get(room)
            .filter(|r| !self.closed_rids.contains(r))
        else {
            return (Status::RoomNotFound, None);
        };
        let Some(w) = self
            .issued
            .iter()
            .position(|i| i.token == token && !i.dead && i.rid == rid && i.key && key == KEY)
        else {
            return (Status::Unauthorized, None);
        };
        let i = &self.issued[w];
        if i.ip != peer {
            let live = self.issued.iter().filter(|j| !j.dead && j.ip == peer);
            let members = live.clone().count() as u32;
            let rooms = live.filter(|j| j.host).count() as u32;
            let (mcap, rcap) = (self.cfg.max_members_per_ip, self.cfg.max_rooms_per_ip);
            if (mcap != 0 && members >= mcap) || (i.host && rcap != 0 && rooms >= rcap) {
                return (Status::ServerFull, None);
            }
        }
        (Status::Ok, Some(w))
    }

    /// A RESUME moved issued token `w` to `peer`: same token, no address until it pins one.
    pub(super) fn resumed(&mut self, w: usize, f: &Frame<'_>, peer: IpAddr, ctx: &mut StepCtx) {
        let g = Grant::parse(f.payload).expect("a well-formed grant");
        assert_eq!(
            g.token, self.issued[w].token,
            "RESUME grants the same token"
        );
        assert_eq!(g.udp_port, self.cfg.udp_port);
        // Its address stays served until the sends of this step are checked: the room's
        // outbox leaves for it first ([`Harness::unpin`] at the end of the step).
        ctx.resumed = Some(w);
        let i = &mut self.issued[w];
        i.ip = peer;
        i.last_seen = self.now;
    }

    /// The end of a step that resumed issued token `w`: it has no address now.
    pub(super) fn unpin(&mut self, w: usize) {
        let i = &mut self.issued[w];
        if i.live_bound {
            i.live_bound = false;
            let st = self.addrs.get_mut(&i.addr.unwrap()).unwrap();
            st.live -= 1;
        }
        i.addr = None;
    }
}
