//! What every step of the relay harness is checked against: the relay's invariants and
//! counters, and every datagram it sent (its events, their Seq, and who received them).

use std::net::SocketAddr;

use super::model::{Harness, StepCtx};
use crate::protocol::event::{Event, EventKind, Events, RawEvents, SyncInfo};
use crate::protocol::{MAX_DATAGRAM, MAX_MESSAGE, next_seq};

impl Harness {
    /// Everything checked after a step.
    pub(super) fn check(&mut self, ctx: &mut StepCtx) {
        if let Err(e) = self.relay.check_invariants() {
            panic!("invariant broken: {e}");
        }
        assert!(self.relay.room_count() <= self.cfg.max_rooms);
        assert!(self.relay.member_count() <= self.cfg.max_members);
        assert!(self.relay.bound_count() <= self.relay.member_count());
        let live_before: Vec<SocketAddr> = if ctx.shutdown {
            self.addrs
                .iter()
                .filter(|(_, s)| s.live > 0)
                .map(|(a, _)| *a)
                .collect()
        } else {
            Vec::new()
        };
        let mut closed_to = Vec::new();
        while self.checked < self.tx.asked.len() {
            let k = self.checked;
            self.checked += 1;
            self.check_send(k, ctx, &mut closed_to);
        }
        if let Some(w) = ctx.resumed {
            self.unpin(w);
        }
        if let Some(w) = ctx.leaving {
            let (rid, host) = (self.issued[w].rid, self.issued[w].host);
            self.unbind(w);
            if host {
                self.close_rid(rid);
            }
        }
        for rid in std::mem::take(&mut ctx.closing) {
            self.close_rid(rid);
        }
        if ctx.timeout_ran {
            // Every member past its deadline is gone now; a bound one was told.
            for w in 0..self.issued.len() {
                let i = &self.issued[w];
                if !i.dead && i.last_seen + self.cfg.idle_timeout <= self.now {
                    assert!(!i.live_bound, "{} outlived its deadline", i.user);
                    let (rid, host) = (i.rid, i.host);
                    self.unbind(w);
                    if host {
                        // Its room closed: any bound member heard ROOM_CLOSED already.
                        assert!(
                            !self.issued.iter().any(|i| i.rid == rid && i.live_bound),
                            "a host timed out and its room's members were not told"
                        );
                        self.close_rid(rid);
                    }
                }
            }
        }
        if ctx.shutdown {
            for a in live_before {
                assert!(closed_to.contains(&a), "{a} missed the shutdown notice");
            }
            for rid in 0..self.next_rid {
                self.close_rid(rid);
            }
        }
        if ctx.rate_limited.is_some() {
            assert_eq!(ctx.notices, usize::from(ctx.notice_due), "rate notices");
        } else {
            assert_eq!(ctx.notices, 0);
        }
        let c = &self.relay.counters;
        assert_eq!(c.datagrams_in, self.datagrams);
        let answered: u64 = c.requests.iter().flatten().sum();
        assert_eq!(answered, self.requests);
        assert_eq!(c.rooms_created, self.creates_ok);
        assert_eq!(c.datagrams_out, self.datagrams_out);
        assert_eq!(c.send_drops, self.send_drops);
        assert_eq!(c.deliveries, self.deliveries);
        assert_eq!(c.rate_notices, self.notices, "rate notices counted");
    }

    pub(super) fn check_send(
        &mut self,
        k: usize,
        ctx: &mut StepCtx,
        closed_to: &mut Vec<SocketAddr>,
    ) {
        let payload = self.tx.rec.sent[k].0.clone();
        let asked = self.tx.asked[k].clone();
        let accepted = self.tx.accepted[k];
        assert_eq!(self.tx.rec.sent[k].1[..], asked[..accepted]);
        assert!(
            !payload.is_empty() && payload.len() <= MAX_DATAGRAM,
            "datagram size"
        );
        self.datagrams_out += accepted as u64;
        self.send_drops += (asked.len() - accepted) as u64;
        if ctx.answers.iter().any(|&(s, e)| (s..e).contains(&k)) {
            // A NACK or SYNC answer, checked when it was sent.
            return;
        }
        let first = RawEvents::new(&payload)
            .next()
            .map(|e| e.expect("a malformed event"));
        if first.is_some_and(|e| e.kind >= EventKind::Gone as u8) {
            self.check_v11_event(&payload, &asked, ctx);
            return;
        }
        let evs: Vec<Event<'_>> = Events::new(&payload)
            .map(|e| e.expect("the server sent a malformed event"))
            .collect();
        assert!(!evs.is_empty());

        if evs[0].kind == EventKind::RateLimited as u8 {
            self.check_notice(&evs, &asked, ctx);
            return;
        }
        self.deliveries += (accepted * evs.len()) as u64;

        // A room's datagram: its events, in Seq order, to receivers of that room.
        assert!(!asked.is_empty(), "a room datagram to nobody");
        check_room_events(&evs);
        // The leaving member is gone from its LEFT on.
        if let Some(w) = ctx.leaving {
            let i = &self.issued[w];
            let left = evs
                .iter()
                .any(|e| e.kind == EventKind::Left as u8 && e.user == i.user);
            if left && i.live_bound && !i.dead {
                self.unbind(w);
            }
        }
        let rid = self.addrs.get(&asked[0]).and_then(|s| s.rid);
        let rid = rid.expect("a datagram to an address that never bound");
        assert!(
            !self.closed_rids.contains(&rid),
            "a datagram from a closed room"
        );
        let first = evs[0].seq;
        let last = evs[evs.len() - 1].seq;
        if let Some(&prev) = self.room_seq.get(&rid) {
            assert!(first > prev, "room Seq went from {prev} to {first}");
        }
        self.room_seq.insert(rid, last);
        self.record_originals(rid, &payload);
        self.check_receivers(rid, &evs, &asked, closed_to);
        self.check_removals(rid, &evs, &asked, ctx);
    }

    /// (v1.1) Keeps each room event's bytes as first sent, and checks the NACK answers that
    /// resent them before this sending was seen.
    fn record_originals(&mut self, rid: u32, payload: &[u8]) {
        let mut off = 0;
        for e in RawEvents::new(payload) {
            let e = e.unwrap();
            let raw = payload[off..off + e.len()].to_vec();
            off += e.len();
            self.originals.insert((rid, e.seq), raw);
        }
        let originals = &self.originals;
        self.claims
            .retain(|(r, s, raw)| match originals.get(&(*r, *s)) {
                Some(o) => {
                    assert_eq!(o, raw, "Seq {s} was resent with other bytes");
                    false
                }
                None => true,
            });
    }

    /// (v1.1) A Kind 7-9 event outside NACK and SYNC answers: a tail notice (after a
    /// timeout) or a RESUMED (after a RESUME), alone in its datagram, Seq 0, to the room's
    /// bound v1.1 members only, and to every one of them.
    fn check_v11_event(&mut self, payload: &[u8], asked: &[SocketAddr], ctx: &StepCtx) {
        let evs: Vec<_> = RawEvents::new(payload).map(Result::unwrap).collect();
        assert_eq!(evs.len(), 1, "a v1.1 event shares a datagram");
        let ev = evs[0];
        assert_eq!(ev.seq, 0, "Seq of a v1.1 event");
        let rid = self.addrs.get(&asked[0]).and_then(|s| s.rid);
        let rid = rid.expect("a v1.1 event to an address that never bound");
        let mut want: Vec<SocketAddr> = self
            .issued
            .iter()
            .enumerate()
            .filter(|&(w, i)| i.rid == rid && i.live_bound && i.v11 && Some(w) != ctx.resumed)
            .map(|(_, i)| i)
            .map(|i| i.addr.unwrap())
            .collect();
        match EventKind::from_u8(ev.kind) {
            Some(EventKind::Sync) => {
                assert!(ctx.timeout_ran, "a tail notice outside handle_timeout");
                assert_eq!(ev.user, "", "a tail notice names nobody");
                let info = SyncInfo::parse(ev.body).expect("a SYNC body");
                assert_eq!(info.last_client_seq, 0);
                // At least the last event seen sent (events emitted while nobody was bound
                // are never sent, yet count).
                let seen = self.room_seq.get(&rid).copied().unwrap_or(0);
                assert!(info.last_seq >= seen, "tail notice LastSeq behind the room");
            }
            Some(EventKind::Resumed) => {
                let w = ctx.resumed.expect("RESUMED without a RESUME");
                assert_eq!((ev.user, ev.body), (self.issued[w].user, &[][..]));
            }
            _ => panic!("kind {} outside a NACK or SYNC answer", ev.kind),
        }
        let mut got = asked.to_vec();
        got.sort_unstable();
        got.dedup();
        want.sort_unstable();
        want.dedup();
        assert_eq!(got, want, "the receivers of a v1.1 event");
    }

    /// A RATE_LIMITED notice: alone in its datagram, Seq 0, to the limited sender only.
    fn check_notice(&mut self, evs: &[Event<'_>], asked: &[SocketAddr], ctx: &mut StepCtx) {
        assert_eq!(evs.len(), 1, "RATE_LIMITED shares a datagram");
        let ev = evs[0];
        assert_eq!(ev.seq, 0);
        let (w, from) = ctx
            .rate_limited
            .expect("a notice with no rate-limited message");
        assert_eq!(asked, [from], "RATE_LIMITED to one receiver: the sender");
        assert_eq!(ev.user, self.issued[w].user);
        assert_eq!(ev.body, self.rate_body);
        ctx.notices += 1;
        self.notices += 1;
    }

    /// Every receiver of a room datagram is a live member of that room, and sees its
    /// events from its own JOINED on with no gap.
    fn check_receivers(
        &mut self,
        rid: u32,
        evs: &[Event<'_>],
        asked: &[SocketAddr],
        closed_to: &mut Vec<SocketAddr>,
    ) {
        let first = evs[0].seq;
        let last = evs[evs.len() - 1].seq;
        let mut unique = asked.to_vec();
        unique.sort_unstable();
        unique.dedup();
        for a in &unique {
            let st = self.addrs.get_mut(a).expect("an address that never bound");
            assert_eq!(st.rid, Some(rid), "one datagram, two rooms");
            assert!(st.live > 0, "{a} gets events after it left or timed out");
            match st.expect {
                Some(s) => assert_eq!(first, s, "{a} missed events"),
                // Pinned again after RESUME: no JOINED, any event may come first.
                None if st.any_first => st.any_first = false,
                None => {
                    assert_eq!(evs[0].kind, EventKind::Joined as u8, "{a}'s first event");
                    assert_eq!(Some(evs[0].user), st.fresh_user, "{a}'s first event");
                }
            }
            st.expect = Some(next_seq(last));
            if evs[evs.len() - 1].kind == EventKind::RoomClosed as u8 {
                closed_to.push(*a);
            }
        }
    }

    /// Removals this datagram shows: a bound member's TIMED_OUT reaches it, and ends its
    /// datagram; ROOM_CLOSED ends the room.
    fn check_removals(
        &mut self,
        rid: u32,
        evs: &[Event<'_>],
        asked: &[SocketAddr],
        ctx: &mut StepCtx,
    ) {
        for (j, ev) in evs.iter().enumerate() {
            if ev.kind == EventKind::TimedOut as u8 {
                // The latest member of that name: names are unique among live members.
                let w = self
                    .issued
                    .iter()
                    .rposition(|i| i.rid == rid && i.user == ev.user && !i.dead);
                if let Some(w) = w {
                    let i = &self.issued[w];
                    assert!(
                        i.last_seen + self.cfg.idle_timeout <= self.now,
                        "{} timed out before its deadline",
                        i.user
                    );
                    if self.issued[w].live_bound {
                        assert_eq!(j, evs.len() - 1, "events after a bound member's TIMED_OUT");
                        assert!(
                            asked.contains(&self.issued[w].addr.unwrap()),
                            "TIMED_OUT not sent to the member"
                        );
                    }
                    let host = self.issued[w].host;
                    self.unbind(w);
                    if host {
                        // Its room closes now; bound members hear ROOM_CLOSED next.
                        ctx.closing.push(rid);
                    }
                }
            }
            if ev.kind == EventKind::RoomClosed as u8 {
                self.close_rid(rid);
            }
        }
    }
}

/// The events of a room datagram: known kinds, Seq rising by one, well-formed fields, and
/// nothing after ROOM_CLOSED.
fn check_room_events(evs: &[Event<'_>]) {
    for (j, ev) in evs.iter().enumerate() {
        let kind = EventKind::from_u8(ev.kind).expect("unknown kind sent");
        assert_ne!(
            kind,
            EventKind::RateLimited,
            "RATE_LIMITED among room events"
        );
        assert_ne!(ev.seq, 0, "Seq 0 on a room event");
        if j > 0 {
            assert_eq!(
                ev.seq,
                next_seq(evs[j - 1].seq),
                "Seq gap inside a datagram"
            );
        }
        match kind {
            EventKind::Message => {
                assert!(!ev.body.is_empty() && ev.body.len() <= MAX_MESSAGE);
                assert!(!ev.user.is_empty());
            }
            EventKind::RoomClosed => {
                assert!(ev.user.is_empty());
                assert!(["host left", "host timed out", "server shutting down"].contains(&ev.body));
                assert_eq!(j, evs.len() - 1, "events after ROOM_CLOSED");
            }
            _ => assert!(ev.body.is_empty() && !ev.user.is_empty()),
        }
    }
}
