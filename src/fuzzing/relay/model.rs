//! The relay harness's model: the tokens it was granted, the addresses they bound, and
//! what each request and datagram must have done, written from PROTOCOL.md rather than
//! from the relay's code.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{PORT_BASE, ROOMS, USERS, ip};
use crate::protocol::control::{ClientDatagram, ClientDatagramError, ControlError};
use crate::protocol::datagram::{ChatDatagram, DatagramError};
use crate::protocol::frame::{Frame, Grant, Request, parse_list, parse_status, split_reply};
use crate::protocol::{MAX_DATAGRAM, MAX_MESSAGE, Operation, State, Status, TOKEN_LEN};
use crate::server::counters::DropReason;
use crate::server::transmit::{Dest, Recorder, Transmit};
use crate::server::{Config, DatagramOutcome, Relay};

/// PROTOCOL.md: at most one RATE_LIMITED notice per member a second.
const NOTICE_INTERVAL: Duration = Duration::from_secs(1);
/// PROTOCOL.md: this many wrong passwords from one IP...
const MAX_FAILURES: usize = 5;
/// ...within this window throttle its JOINs.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(super) struct Tap {
    pub(super) rec: Recorder,
    pub(super) asked: Vec<Vec<SocketAddr>>,
    pub(super) accepted: Vec<usize>,
}

impl Transmit for Tap {
    fn send(&mut self, payload: &[u8], to: &[Dest]) -> usize {
        let n = self.rec.send(payload, to);
        self.asked.push(to.iter().map(|d| d.addr).collect());
        self.accepted.push(n);
        n
    }
}

/// A token the harness was granted, and what it has seen happen to it.
#[derive(Debug)]
pub(super) struct Issued {
    pub(super) token: Vec<u8>,
    pub(super) room: &'static str,
    /// Which room instance (a name is reused after the room closes).
    pub(super) rid: u32,
    pub(super) user: &'static str,
    pub(super) ip: IpAddr,
    pub(super) host: bool,
    /// The address it bound to.
    pub(super) addr: Option<SocketAddr>,
    /// Bound and not yet seen to leave, time out or lose its room.
    pub(super) live_bound: bool,
    /// Seen gone (so the relay must treat it as unknown).
    pub(super) dead: bool,
    pub(super) last_notice: Option<Instant>,
    /// When it was granted or last had a datagram accepted: its idle deadline's start.
    pub(super) last_seen: Instant,
    /// (v1.1) When it was granted: its repair bucket was full then.
    pub(super) granted: Instant,
    /// (v1.1) Whether it gave the resume key.
    pub(super) key: bool,
    /// Whether it ever bound (so pinning again after RESUME sends no JOINED).
    pub(super) joined: bool,
    /// (v1.1) Whether a control datagram of it was accepted.
    pub(super) v11: bool,
    /// (v1.1) The highest ClientSeq seen relayed for it.
    pub(super) client_seq: u32,
    /// (v1.1) Bytes of events it was resent in NACK answers.
    pub(super) repair_bytes: u64,
}

#[derive(Debug, Default)]
pub(super) struct AddrState {
    /// Issued tokens bound to this address and still members.
    pub(super) live: u32,
    /// The Seq of the next room event this address must receive (`None`: a fresh binding,
    /// whose first event is its own JOINED).
    pub(super) expect: Option<u32>,
    /// The member whose binding started the current run.
    pub(super) fresh_user: Option<&'static str>,
    /// The room instance of every token bound here.
    pub(super) rid: Option<u32>,
    /// (v1.1) The current run was started by a member pinned again after RESUME: its first
    /// event may be any (no JOINED).
    pub(super) any_first: bool,
}

pub(super) struct Harness {
    pub(super) relay: Relay<StdRng>,
    pub(super) tx: Tap,
    pub(super) cfg: Config,
    pub(super) rate_body: String,
    pub(super) now: Instant,
    pub(super) issued: Vec<Issued>,
    pub(super) current_rid: HashMap<&'static str, u32>,
    pub(super) next_rid: u32,
    pub(super) closed_rids: Vec<u32>,
    pub(super) addrs: HashMap<SocketAddr, AddrState>,
    /// Last room-event Seq sent, per room instance.
    pub(super) room_seq: HashMap<u32, u32>,
    pub(super) checked: usize,
    pub(super) requests: u64,
    pub(super) datagrams: u64,
    pub(super) creates_ok: u64,
    pub(super) datagrams_out: u64,
    pub(super) send_drops: u64,
    pub(super) deliveries: u64,
    pub(super) notices: u64,
    /// Per IP, the times of its last five BAD_PASSWORD answers.
    pub(super) failures: HashMap<IpAddr, VecDeque<Instant>>,
    /// (v1.1) The bytes of each room event as first sent, by (room instance, Seq).
    pub(super) originals: HashMap<(u32, u32), Vec<u8>>,
    /// (v1.1) Events resent by NACK before their first sending was seen: checked then.
    pub(super) claims: Vec<(u32, u32, Vec<u8>)>,
}

/// A step's effect on what the harness expects of the sends it made.
#[derive(Default)]
pub(super) struct StepCtx {
    /// A LEAVE of this issued token succeeded: it is gone from the LEFT event on.
    pub(super) leaving: Option<usize>,
    /// The datagram of this step, from this token and address, was rate limited.
    pub(super) rate_limited: Option<(usize, SocketAddr)>,
    /// Whether a rate-limit notice is due.
    pub(super) notice_due: bool,
    pub(super) notices: usize,
    pub(super) shutdown: bool,
    /// `handle_timeout` ran at the harness's `now`.
    pub(super) timeout_ran: bool,
    /// Room instances whose host was seen to time out: closed once the step ends.
    pub(super) closing: Vec<u32>,
    /// (v1.1) Sends (by index, `start..end`) that were NACK or SYNC answers, checked
    /// already.
    pub(super) answers: Vec<(usize, usize)>,
    /// (v1.1) The issued token a RESUME of this step moved.
    pub(super) resumed: Option<usize>,
}

impl Harness {
    /// A harness around a fresh relay with settings `cfg` and RNG seed `seed`, at `t0`.
    pub(super) fn new(cfg: Config, seed: u64, t0: Instant) -> Harness {
        Harness {
            rate_body: format!("{} messages/s, burst {}", cfg.msg_rate, cfg.msg_burst),
            relay: {
                let mut relay = Relay::new(cfg.clone(), StdRng::seed_from_u64(seed));
                // Busy rooms hold for the whole allowance: the model sees held outboxes.
                relay.set_hold(cfg.max_hold);
                relay
            },
            tx: Tap::default(),
            cfg,
            now: t0,
            issued: Vec::new(),
            current_rid: HashMap::new(),
            next_rid: 0,
            closed_rids: Vec::new(),
            addrs: HashMap::new(),
            room_seq: HashMap::new(),
            checked: 0,
            requests: 0,
            datagrams: 0,
            creates_ok: 0,
            datagrams_out: 0,
            send_drops: 0,
            deliveries: 0,
            notices: 0,
            failures: HashMap::new(),
            originals: HashMap::new(),
            claims: Vec::new(),
        }
    }

    /// A LEAVE with a chosen token, room and IP (see [`super::RelayOp::Leave`]).
    pub(super) fn leave(&mut self, a: u8, t: u8, i: u8, ctx: &mut StepCtx) {
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
        let req = Request::Leave {
            room,
            token: &token,
        };
        self.request(from, &req, ctx);
    }

    /// Shutdown, or how many receivers the socket takes (see [`super::RelayOp::Control`]).
    pub(super) fn control(&mut self, what: u8, ctx: &mut StepCtx) {
        match what % 8 {
            0 => {
                ctx.shutdown = true;
                self.relay.shutdown(&mut self.tx);
                assert_eq!(self.relay.room_count(), 0);
                assert_eq!(self.relay.member_count(), 0);
            }
            1 => self.tx.rec.accept_at_most = None,
            2 => self.tx.rec.accept_at_most = Some(0),
            3 => self.tx.rec.accept_at_most = Some(1),
            _ => self.relay.flush(&mut self.tx),
        }
    }

    /// A token to use: one issued (as granted, corrupted, or from a room other than
    /// `room`), or junk. Also says which issued token it is, if it is one.
    pub(super) fn choose_token(&self, t: u8, room: &str) -> (Vec<u8>, Option<usize>) {
        let n = self.issued.len();
        let pick = usize::from(t >> 2);
        match t % 4 {
            0 if n > 0 => {
                let w = pick % n;
                (self.issued[w].token.clone(), Some(w))
            }
            1 if n > 0 => {
                let mut tok = self.issued[pick % n].token.clone();
                // '!' is not in the token alphabet: this is no member's token.
                tok[pick % TOKEN_LEN] = b'!';
                (tok, None)
            }
            2 if n > 0 => {
                let others: Vec<usize> = (0..n).filter(|&w| self.issued[w].room != room).collect();
                match others.get(pick % others.len().max(1)) {
                    Some(&w) => (self.issued[w].token.clone(), Some(w)),
                    None => (vec![b'x'; TOKEN_LEN], None),
                }
            }
            _ => (vec![b'x'; 1 + pick % 40], None),
        }
    }

    pub(super) fn request(&mut self, peer: IpAddr, req: &Request<'_>, ctx: &mut StepCtx) {
        let (rooms, members) = (self.relay.room_count(), self.relay.member_count());
        let throttled =
            matches!(req.operation(), Operation::Join | Operation::Resume) && self.throttled(peer);
        let want_resume = match *req {
            Request::Resume {
                room,
                token,
                resume_key,
            } => Some(self.expect_resume(peer, room, token, resume_key)),
            _ => None,
        };
        let mut out = Vec::new();
        let status = self
            .relay
            .handle_request(self.now, peer, req, &mut out, &mut self.tx);
        self.requests += 1;
        let op = req.operation();
        let room = req.room();

        let complete = answer_frames(&out, op, room, status);
        assert_eq!(
            status == Status::TooManyRequests,
            throttled,
            "password throttle for {peer}"
        );
        if status == Status::BadPassword
            || (op == Operation::Resume && status == Status::Unauthorized)
        {
            self.note_failure(peer);
        }
        if let Some((want, _)) = want_resume {
            assert_eq!(status, want, "RESUME from {peer}");
        }
        let grown = (
            self.relay.room_count() as isize - rooms as isize,
            self.relay.member_count() as isize - members as isize,
        );
        match (req, status, complete) {
            (Request::Resume { .. }, Status::Ok, Some(f)) => {
                assert_eq!(grown, (0, 0), "RESUME changed counts");
                let w = want_resume.and_then(|(_, w)| w).unwrap();
                self.resumed(w, &f, peer, ctx);
            }
            (Request::Create { room, user, .. }, Status::Ok, Some(f)) => {
                self.created(&f, (room, user), grown, peer, req);
            }
            (Request::Join { room, user, .. }, Status::Ok, Some(f)) => {
                self.joined(&f, (room, user), grown, peer, req);
            }
            (Request::Leave { token, .. }, Status::Ok, None) => {
                let w = self.issued.iter().position(|i| i.token == *token);
                let w = w.expect("LEAVE OK with a token never issued");
                self.left(w, room, peer, ctx);
            }
            (Request::List, Status::Ok, Some(f)) => self.check_list(f.payload),
            (_, Status::Ok, _) => unreachable!(),
            _ => {
                if op != Operation::Leave {
                    assert_eq!(
                        grown,
                        (0, 0),
                        "{op:?} refused {status:?} yet changed counts"
                    );
                }
            }
        }
    }

    /// CREATE OK: the name was free, one room and one member more, and a host's grant.
    fn created(
        &mut self,
        f: &Frame<'_>,
        (room, user): (&str, &str),
        grown: (isize, isize),
        peer: IpAddr,
        req: &Request<'_>,
    ) {
        assert!(
            !self.issued.iter().any(|i| i.room == room && i.live_bound),
            "CREATE OK of a room name in use"
        );
        assert_eq!(grown, (1, 1));
        self.creates_ok += 1;
        let rid = self.next_rid;
        self.next_rid += 1;
        let room = ROOMS.iter().find(|r| **r == room).unwrap();
        self.current_rid.insert(room, rid);
        self.grant(f, (room, rid, user), peer, true, req);
    }

    /// JOIN OK: the name was free in a live room, one member more, and a member's grant.
    fn joined(
        &mut self,
        f: &Frame<'_>,
        (room, user): (&str, &str),
        grown: (isize, isize),
        peer: IpAddr,
        req: &Request<'_>,
    ) {
        assert!(
            !self
                .issued
                .iter()
                .any(|i| i.room == room && i.user == user && i.live_bound),
            "JOIN OK with a name taken in the room"
        );
        assert_eq!(grown, (0, 1));
        let room = ROOMS.iter().find(|r| **r == room).unwrap();
        let rid = *self
            .current_rid
            .get(room)
            .expect("JOIN OK of a room never created");
        assert!(!self.closed_rids.contains(&rid), "JOIN OK of a closed room");
        self.grant(f, (room, rid, user), peer, false, req);
    }

    /// LEAVE OK: token `w` was live, and asked from its own IP for its own room.
    fn left(&mut self, w: usize, room: &str, peer: IpAddr, ctx: &mut StepCtx) {
        let i = &self.issued[w];
        assert!(!i.dead, "LEAVE OK with a void token");
        assert_eq!(i.ip, peer, "LEAVE OK from another IP");
        assert_eq!(i.room, room, "LEAVE OK for another room");
        ctx.leaving = Some(w);
    }

    /// Remembers a BAD_PASSWORD answer to `peer` (the last [`MAX_FAILURES`] of them).
    fn note_failure(&mut self, peer: IpAddr) {
        let f = self.failures.entry(peer).or_default();
        f.push_back(self.now);
        if f.len() > MAX_FAILURES {
            f.pop_front();
        }
    }

    pub(super) fn throttled(&self, ip: IpAddr) -> bool {
        self.failures.get(&ip).is_some_and(|f| {
            f.len() >= MAX_FAILURES && self.now.saturating_duration_since(f[0]) < FAILURE_WINDOW
        })
    }

    pub(super) fn grant(
        &mut self,
        f: &Frame<'_>,
        (room, rid, user): (&'static str, u32, &str),
        peer: IpAddr,
        host: bool,
        req: &Request<'_>,
    ) {
        let key = matches!(
            req,
            Request::Create {
                resume_key: Some(_),
                ..
            } | Request::Join {
                resume_key: Some(_),
                ..
            }
        );
        let g = Grant::parse(f.payload).expect("a well-formed grant");
        assert_eq!(g.token.len(), TOKEN_LEN);
        assert!(
            g.token
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_".contains(c))
        );
        assert_eq!(g.udp_port, self.cfg.udp_port);
        assert_eq!(u64::from(g.idle_timeout), self.cfg.idle_timeout.as_secs());
        assert!(
            self.issued.iter().all(|i| i.token != g.token),
            "a token was issued twice"
        );
        self.issued.push(Issued {
            token: g.token.to_vec(),
            room,
            rid,
            user: USERS.iter().find(|u| **u == user).unwrap(),
            ip: peer,
            host,
            addr: None,
            live_bound: false,
            dead: false,
            last_notice: None,
            last_seen: self.now,
            granted: self.now,
            key,
            joined: false,
            v11: false,
            client_seq: 0,
            repair_bytes: 0,
        });
    }

    pub(super) fn check_list(&self, payload: &[u8]) {
        let rooms = parse_list(payload).expect("a well-formed LIST");
        assert_eq!(rooms.len(), self.relay.room_count(), "every room listed");
        let members: usize = rooms.iter().map(|r| usize::from(r.members)).sum();
        assert_eq!(members, self.relay.member_count());
        for w in rooms.windows(2) {
            assert!(w[0].name.as_bytes() < w[1].name.as_bytes(), "LIST order");
        }
        for r in &rooms {
            assert!(r.members >= 1, "a room without its host");
            assert!(r.members <= r.capacity && r.capacity <= self.cfg.max_capacity);
        }
    }

    /// Where a datagram aimed by `a`, `t`, `i` goes: its room, token (and which issued one
    /// it is) and source address (see [`super::RelayOp::Datagram`]).
    pub(super) fn aim(
        &self,
        a: u8,
        t: u8,
        i: u8,
    ) -> (&'static str, Vec<u8>, Option<usize>, SocketAddr) {
        let mut room = ROOMS[usize::from(a % 4)];
        let (token, which) = self.choose_token(t, room);
        let mut from_ip = ip(i);
        let mut port = 1 + u16::from(i >> 4) % 4;
        if let Some(w) = which {
            let own = &self.issued[w];
            if (a >> 2) & 3 != 0 {
                room = own.room;
            }
            if (i >> 2) & 3 != 0 {
                from_ip = own.ip;
            }
            port = PORT_BASE + (own.rid % 8000) as u16 * 4 + u16::from(i >> 4) % 4;
        }
        (room, token, which, SocketAddr::new(from_ip, port))
    }

    /// A chat datagram with a chosen token, room, address and message.
    pub(super) fn chat_datagram(&mut self, a: u8, t: u8, i: u8, ctx: &mut StepCtx) {
        let (room, token, which, from) = self.aim(a, t, i);
        let long_a = "x".repeat(1500);
        let long_b = "m".repeat(MAX_MESSAGE);
        let message: &str = match a >> 4 {
            0..=5 => "",
            6..=10 => "hi",
            11 => "こんにちは 👋",
            12 => &long_a,
            13 => &long_b,
            _ => "\x1b[2J",
        };
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = if message.starts_with('\x1b') {
            // Not a text field: encode would refuse it, so build it by hand.
            let d = ChatDatagram {
                room: room.as_bytes(),
                token: &token,
                message: "",
            };
            let n = d.encode(&mut buf).unwrap();
            buf[n..n + 4].copy_from_slice(message.as_bytes());
            n + 4
        } else {
            let d = ChatDatagram {
                room: room.as_bytes(),
                token: &token,
                message,
            };
            d.encode(&mut buf)
                .expect("the harness builds valid datagrams")
        };
        self.datagram(from, &buf[..n], which, ctx);
    }

    pub(super) fn datagram(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        which: Option<usize>,
        ctx: &mut StepCtx,
    ) -> DatagramOutcome {
        let outcome = self
            .relay
            .handle_datagram(self.now, from, bytes, &mut self.tx);
        self.datagrams += 1;
        let d = match ClientDatagram::parse(bytes) {
            Ok(d) => d,
            Err(e) => {
                assert_eq!(outcome, DatagramOutcome::Dropped(unparsed(e)));
                return outcome;
            }
        };
        let accepted = matches!(
            outcome,
            DatagramOutcome::Heartbeat
                | DatagramOutcome::Relayed
                | DatagramOutcome::Dropped(DropReason::RateLimited)
                | DatagramOutcome::Duplicate
                | DatagramOutcome::Nack
                | DatagramOutcome::Sync
        );
        let Some(w) = which else {
            // Junk or corrupted tokens are never a member's.
            assert_eq!(outcome, DatagramOutcome::Dropped(DropReason::UnknownToken));
            return outcome;
        };
        let i = &self.issued[w];
        if i.dead {
            assert_eq!(
                outcome,
                DatagramOutcome::Dropped(DropReason::UnknownToken),
                "a void token was accepted"
            );
            return outcome;
        }
        if accepted {
            self.accepted(w, from, d, outcome, ctx);
        } else if let Some(a) = i.addr.filter(|_| i.live_bound) {
            // A live bound member's token: only a wrong room, IP or address drops it.
            let want = if d.room() != i.room.as_bytes() {
                DropReason::WrongRoom
            } else if from.ip() != i.ip {
                DropReason::WrongIp
            } else {
                assert_ne!(a, from, "dropped from its own address");
                DropReason::WrongAddress
            };
            assert_eq!(outcome, DatagramOutcome::Dropped(want));
        }
        outcome
    }

    /// A datagram the relay took from token `w`: it came for the token's room from its IP
    /// and address (or pins the address now), and a rate limit owes at most one notice.
    fn accepted(
        &mut self,
        w: usize,
        from: SocketAddr,
        d: ClientDatagram<'_>,
        outcome: DatagramOutcome,
        ctx: &mut StepCtx,
    ) {
        let i = &self.issued[w];
        assert_eq!(d.room(), i.room.as_bytes(), "accepted for the wrong room");
        assert_eq!(from.ip(), i.ip, "accepted from the wrong IP");
        match d {
            ClientDatagram::Chat(c) => assert_eq!(
                c.is_heartbeat(),
                outcome == DatagramOutcome::Heartbeat,
                "{outcome:?}"
            ),
            ClientDatagram::Control(_) => {
                assert_ne!(outcome, DatagramOutcome::Heartbeat);
                self.issued[w].v11 = true;
            }
        }
        self.issued[w].last_seen = self.now;
        let i = &self.issued[w];
        match i.addr {
            Some(a) => assert_eq!(a, from, "accepted from another address"),
            None => self.bind(w, from),
        }
        if outcome == DatagramOutcome::Dropped(DropReason::RateLimited) {
            assert!(self.cfg.msg_rate > 0, "rate limited with no limit");
            let i = &mut self.issued[w];
            ctx.rate_limited = Some((w, from));
            ctx.notice_due = i
                .last_notice
                .is_none_or(|t| self.now.saturating_duration_since(t) >= NOTICE_INTERVAL);
            if ctx.notice_due {
                i.last_notice = Some(self.now);
            }
        }
    }

    pub(super) fn bind(&mut self, w: usize, from: SocketAddr) {
        let i = &mut self.issued[w];
        i.addr = Some(from);
        i.live_bound = true;
        let resumed = i.joined;
        i.joined = true;
        let st = self.addrs.entry(from).or_default();
        if st.live == 0 {
            st.expect = None;
            st.fresh_user = Some(i.user);
            st.any_first = resumed;
        } else {
            assert_eq!(st.rid, Some(i.rid), "one address, two rooms (harness bug)");
        }
        st.rid = Some(i.rid);
        st.live += 1;
    }

    pub(super) fn unbind(&mut self, w: usize) {
        let i = &mut self.issued[w];
        i.dead = true;
        if i.live_bound {
            i.live_bound = false;
            let st = self.addrs.get_mut(&i.addr.unwrap()).unwrap();
            st.live -= 1;
        }
    }

    pub(super) fn close_rid(&mut self, rid: u32) {
        if !self.closed_rids.contains(&rid) {
            self.closed_rids.push(rid);
        }
        for w in 0..self.issued.len() {
            if self.issued[w].rid == rid {
                self.unbind(w);
            }
        }
    }
}

/// Checks the frames a request was answered with: a RESPONSE echoing the operation, room
/// and status, then a COMPLETE only after OK for CREATE, JOIN and LIST, and nothing else.
/// Returns the COMPLETE.
fn answer_frames<'a>(
    out: &'a [u8],
    op: Operation,
    room: &str,
    status: Status,
) -> Option<Frame<'a>> {
    let (resp, n) = split_reply(out).unwrap().expect("a whole RESPONSE");
    assert_eq!((resp.op, resp.state), (op as u8, State::Response as u8));
    assert_eq!(resp.room, room.as_bytes(), "room name echoed");
    assert_eq!(parse_status(&resp), Some(status));
    let rest = &out[n..];
    let complete = (status == Status::Ok && op != Operation::Leave).then(|| {
        let (f, m) = split_reply(rest).unwrap().expect("a whole COMPLETE");
        assert_eq!(m, rest.len(), "bytes after the COMPLETE");
        assert_eq!((f.op, f.state), (op as u8, State::Complete as u8));
        f
    });
    if complete.is_none() {
        assert!(
            rest.is_empty(),
            "{op:?} answered {status:?} with more frames"
        );
    }
    complete
}

/// The drop a datagram that does not parse must be counted as.
fn unparsed(e: ClientDatagramError) -> DropReason {
    match e {
        ClientDatagramError::Chat(e) => match e {
            DatagramError::Oversize => DropReason::Oversize,
            DatagramError::Malformed => DropReason::Malformed,
            DatagramError::MessageTooLong => DropReason::MessageTooLong,
            DatagramError::BadText(_) => DropReason::BadText,
        },
        ClientDatagramError::Control(e) => match e {
            ControlError::Oversize => DropReason::Oversize,
            ControlError::UnknownOp(_) => DropReason::UnknownOp,
            ControlError::BodyLength(_) => DropReason::BadBody,
            ControlError::MessageTooLong => DropReason::MessageTooLong,
            ControlError::MessageText(_) => DropReason::BadText,
            ControlError::FromSeqZero => DropReason::NackFromSeqZero,
            ControlError::Count(_) => DropReason::NackCount,
            _ => DropReason::Malformed,
        },
    }
}
