//! What the server counts: the numbers an operator asks for first (drops by reason,
//! traffic in and out, requests by outcome). Plain integers, bumped by the core and the
//! event loop, logged at shutdown and exported as metrics.

use std::fmt;

use crate::protocol::{Operation, Status};

/// Why a received datagram was dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Over 4096 bytes.
    Oversize,
    /// Size bytes that do not match the datagram, or zero sizes.
    Malformed,
    /// Message over 3800 bytes.
    MessageTooLong,
    /// The message is not UTF-8 or holds a control character.
    BadText,
    /// No member has that token (never issued, or void since).
    UnknownToken,
    /// The token is a member's of another room.
    WrongRoom,
    /// The source IP is not the one the token was issued to.
    WrongIp,
    /// The token is bound to another source address (IP and port).
    WrongAddress,
    /// The member's message bucket was empty.
    RateLimited,
    /// (v1.1) A control datagram with an Op other than SEND, NACK, SYNC.
    UnknownOp,
    /// (v1.1) A control datagram whose body has the wrong length for its Op.
    BadBody,
    /// (v1.1) A NACK with FromSeq 0.
    NackFromSeqZero,
    /// (v1.1) A NACK with Count 0 or over 512.
    NackCount,
}

impl DropReason {
    /// Every reason, in a stable order.
    pub const ALL: [DropReason; 13] = [
        DropReason::Oversize,
        DropReason::Malformed,
        DropReason::MessageTooLong,
        DropReason::BadText,
        DropReason::UnknownToken,
        DropReason::WrongRoom,
        DropReason::WrongIp,
        DropReason::WrongAddress,
        DropReason::RateLimited,
        DropReason::UnknownOp,
        DropReason::BadBody,
        DropReason::NackFromSeqZero,
        DropReason::NackCount,
    ];

    /// Snake-case name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Oversize => "oversize",
            DropReason::Malformed => "malformed",
            DropReason::MessageTooLong => "message_too_long",
            DropReason::BadText => "bad_text",
            DropReason::UnknownToken => "unknown_token",
            DropReason::WrongRoom => "wrong_room",
            DropReason::WrongIp => "wrong_ip",
            DropReason::WrongAddress => "wrong_address",
            DropReason::RateLimited => "rate_limited",
            DropReason::UnknownOp => "unknown_op",
            DropReason::BadBody => "bad_body",
            DropReason::NackFromSeqZero => "nack_from_seq_zero",
            DropReason::NackCount => "nack_count",
        }
    }
}

/// Every counter of the server.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Datagrams received on the data plane.
    pub datagrams_in: u64,
    /// Datagrams dropped, by reason (indexed like [`DropReason::ALL`]).
    pub drops: [u64; DropReason::ALL.len()],
    /// Accepted heartbeats (empty messages).
    pub heartbeats: u64,
    /// Accepted chat messages (relayed).
    pub messages: u64,
    /// Events appended to room outboxes.
    pub events: u64,
    /// Server datagrams handed to the socket, one per receiver.
    pub datagrams_out: u64,
    /// Events delivered: each event times the receivers of its datagram.
    pub deliveries: u64,
    /// Server datagrams the socket refused (buffer full or an error): dropped, not retried.
    pub send_drops: u64,
    /// RATE_LIMITED notices sent.
    pub rate_notices: u64,
    /// Requests answered, by operation (index op-1) and status code.
    pub requests: [[u64; Status::ALL.len()]; Operation::ALL.len()],
    /// Malformed frames (answered INVALID_REQUEST, then closed).
    pub malformed_frames: u64,
    /// Rooms created.
    pub rooms_created: u64,
    /// Rooms closed.
    pub rooms_closed: u64,
    /// Members that bound (first datagram).
    pub members_bound: u64,
    /// Members dropped for silence.
    pub members_timed_out: u64,
    /// Members that left with LEAVE.
    pub members_left: u64,
    /// (v1.1) NACKs accepted.
    pub nacks: u64,
    /// (v1.1) Events resent in NACK answers.
    pub repair_events: u64,
    /// (v1.1) Bytes of the events resent (what the repair bucket was charged).
    pub repair_bytes: u64,
    /// (v1.1) Held events of NACK ranges not resent: the repair bucket was empty.
    pub repair_dropped: u64,
    /// (v1.1) GONE events sent.
    pub gone: u64,
    /// (v1.1) SYNCs accepted (each answered).
    pub syncs: u64,
    /// (v1.1) Tail notices sent (one per room and quiet spell, whatever the receivers).
    pub tail_notices: u64,
    /// (v1.1) SENDs whose ClientSeq was already relayed: accepted, not relayed.
    pub duplicate_sends: u64,
    /// (v1.1) Gauge: events held in all rooms' histories.
    pub history_events: u64,
    /// (v1.1) Gauge: event bytes held in all rooms' histories.
    pub history_bytes: u64,
}

impl Counters {
    /// Counts a dropped datagram.
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// Drops counted for `reason`.
    pub fn drops_for(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Counts an answered request.
    pub fn request(&mut self, op: Operation, status: Status) {
        self.requests[op as usize - 1][status as usize] += 1;
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "datagrams in={} out={} send_drops={} messages={} deliveries={} rooms created={} closed={}",
            self.datagrams_in,
            self.datagrams_out,
            self.send_drops,
            self.messages,
            self.deliveries,
            self.rooms_created,
            self.rooms_closed
        )?;
        write!(
            f,
            "; v1.1 nacks={} repair_events={} repair_dropped={} gone={} syncs={} tail_notices={} duplicate_sends={} history_bytes={}",
            self.nacks,
            self.repair_events,
            self.repair_dropped,
            self.gone,
            self.syncs,
            self.tail_notices,
            self.duplicate_sends,
            self.history_bytes
        )?;
        f.write_str("; drops:")?;
        for r in DropReason::ALL {
            write!(f, " {}={}", r.name(), self.drops_for(r))?;
        }
        Ok(())
    }
}
