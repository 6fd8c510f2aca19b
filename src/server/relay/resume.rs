//! RESUME (PROTOCOL.md §5.5): a member moves to the IP of the TCP connection the request
//! came on, proving itself with the resume key it gave at CREATE or JOIN.
//!
//! The key never travels on the data plane, so unlike the token it cannot be read off the
//! path. It is kept as given (at most 64 bytes, inline: no allocation) and compared with
//! [`constant_time_eq`], whose time depends on the lengths only.

use std::time::Instant;

use log::info;
use rand::Rng;

use super::Relay;
use super::requests::Origin;
use crate::protocol::Status;
use crate::protocol::event::{EventKind, RawEvent};
use crate::protocol::frame::{MAX_RESUME_KEY, MIN_RESUME_KEY};
use crate::server::token::{Token, constant_time_eq};
use crate::server::transmit::Transmit;

/// A member's resume key, 16..=64 bytes, held inline.
#[derive(Clone)]
pub struct ResumeKey {
    len: u8,
    bytes: [u8; MAX_RESUME_KEY],
}

impl ResumeKey {
    /// The key, if `key` has a length the protocol allows (the codec already checked it).
    pub fn new(key: &[u8]) -> Option<ResumeKey> {
        if !(MIN_RESUME_KEY..=MAX_RESUME_KEY).contains(&key.len()) {
            return None;
        }
        let mut bytes = [0u8; MAX_RESUME_KEY];
        bytes[..key.len()].copy_from_slice(key);
        Some(ResumeKey {
            len: key.len() as u8,
            bytes,
        })
    }

    /// Whether `key` is this key, in time that depends on the lengths only.
    pub fn matches(&self, key: &[u8]) -> bool {
        constant_time_eq(&self.bytes[..usize::from(self.len)], key)
    }
}

/// Never print a secret, even in a debug log.
impl std::fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResumeKey({} bytes)", self.len)
    }
}

impl<R: Rng> Relay<R> {
    /// Keeps the resume key a successful CREATE or JOIN gave for `member`.
    pub(super) fn set_resume_key(&mut self, member: Option<usize>, key: Option<&[u8]>) {
        if let (Some(m), Some(key)) = (member, key) {
            self.members[m].resume_key = ResumeKey::new(key);
        }
    }

    /// RESUME: statuses in the order 9, 2, 8, 7 (6 was the codec's); on success the member
    /// is bound to `origin`'s IP (and, over WebSocket, to its session: §6), unpinned, and
    /// the room's other v1.1 members hear RESUMED.
    pub(super) fn resume(
        &mut self,
        now: Instant,
        origin: Origin,
        room: &str,
        token: &[u8],
        key: &[u8],
        tx: &mut impl Transmit,
    ) -> Result<Option<usize>, Status> {
        let peer = origin.0;
        if self.throttle.is_throttled(peer, now) {
            return Err(Status::TooManyRequests);
        }
        let &room_key = self.by_name.get(room).ok_or(Status::RoomNotFound)?;
        let member = <&Token>::try_from(token)
            .ok()
            .and_then(|t| self.by_token.get(t).copied())
            .filter(|&m| self.members[m].room == room_key)
            .filter(|&m| {
                self.members[m]
                    .resume_key
                    .as_ref()
                    .is_some_and(|k| k.matches(key))
            });
        let Some(member) = member else {
            // Counts like a wrong password: keys cannot be guessed faster than passwords.
            self.record_failure(peer, now);
            return Err(Status::Unauthorized);
        };
        let is_host = self.rooms[room_key].host == member;
        if self.members[member].ip != peer
            && (self
                .members_per_ip
                .at_cap(peer, self.cfg.max_members_per_ip)
                || (is_host && self.rooms_per_ip.at_cap(peer, self.cfg.max_rooms_per_ip)))
        {
            return Err(Status::ServerFull);
        }
        self.move_member(now, member, origin, tx);
        Ok(Some(member))
    }

    /// The move itself: per-IP counts, unpinning, a fresh deadline, RESUMED to the others.
    fn move_member(&mut self, now: Instant, member: usize, origin: Origin, tx: &mut impl Transmit) {
        let (peer, session) = origin;
        let m = &mut self.members[member];
        let (old, room_key) = (m.ip, m.room);
        m.ip = peer;
        // Over WebSocket the member now counts only on this session; over TCP, only over
        // UDP (§6: RESUME moves a member between transports).
        m.session = session;
        m.deadline = now + self.cfg.idle_timeout;
        self.members_per_ip.remove(old);
        self.members_per_ip.add(peer);
        let room = &mut self.rooms[room_key];
        if room.host == member {
            self.rooms_per_ip.remove(room.creator_ip);
            self.rooms_per_ip.add(peer);
            room.creator_ip = peer;
        }
        self.unpin(member, tx);
        info!(
            "'{}' resumed in room '{}' from {peer}",
            self.members[member].name, self.rooms[room_key].name
        );
        self.collect_v11_dests(room_key, Some(member));
        let dests = std::mem::take(&mut self.dests);
        let name = self.members[member].name.clone();
        let ev = RawEvent {
            kind: EventKind::Resumed as u8,
            seq: 0,
            user: &name,
            body: &[],
        };
        self.send_alone(&ev, &dests, tx);
        self.dests = dests;
    }
}
