//! The rules the relay's tables keep with each other, checked in full: for tests and
//! fuzzing only (it walks everything, so the event loop never calls it).

use rand::Rng;

use super::Relay;
use crate::server::transmit::Addr;

impl<R: Rng> Relay<R> {
    /// Checks that the relay's tables agree with each other; `Err` names the first broken
    /// rule. Fuzzing and tests call it after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_members()?;
        self.check_rooms()?;
        self.check_gauges()
    }

    /// Each member: found by its token, listed once in its room, bound on one transport.
    fn check_members(&self) -> Result<(), String> {
        if self.by_token.len() != self.members.len() {
            return Err(format!(
                "{} tokens for {} members",
                self.by_token.len(),
                self.members.len()
            ));
        }
        for (key, m) in &self.members {
            if self.by_token.get(&m.token) != Some(&key) {
                return Err(format!("member {key}'s token maps elsewhere"));
            }
            let room = self
                .rooms
                .get(m.room)
                .ok_or_else(|| format!("member {key} in no room"))?;
            if room.members().iter().filter(|&&k| k == key).count() != 1 {
                return Err(format!("member {key} not listed once in its room"));
            }
            match (m.session, m.addr) {
                (Some(s), Some(Addr::Session(b))) if s != b => {
                    return Err(format!("member {key} bound to another session"));
                }
                (Some(_), Some(Addr::Udp(_))) | (None, Some(Addr::Session(_))) => {
                    return Err(format!("member {key} bound across transports"));
                }
                _ => {}
            }
            if m.repair.left() < 0.0 {
                return Err(format!("member {key}'s repair bucket is overdrawn"));
            }
            if m.addr.is_some() && !m.joined {
                return Err(format!("member {key} has an address but never joined"));
            }
        }
        Ok(())
    }

    /// Each room: found by its name, internally consistent, hosted, sending only to members.
    fn check_rooms(&self) -> Result<(), String> {
        for (key, r) in &self.rooms {
            if self.by_name.get(&r.name) != Some(&key) {
                return Err(format!("room '{}' not found by name", r.name));
            }
            r.check(key, self.cfg.batch_max, self.cfg.max_capacity)?;
            if self.members.get(r.host).is_none_or(|m| m.room != key) {
                return Err(format!("room '{}' has no host", r.name));
            }
            for (addr, k) in r.bound() {
                if self
                    .members
                    .get(k)
                    .is_none_or(|m| m.room != key || m.addr != Some(addr))
                {
                    return Err(format!("room '{}' sends to a stranger", r.name));
                }
            }
        }
        Ok(())
    }

    /// The counters and gauges: they add up to what the tables hold.
    fn check_gauges(&self) -> Result<(), String> {
        let c = &self.counters;
        let (events, bytes) = self.rooms.iter().fold((0, 0), |(e, b), (_, r)| {
            (e + r.history().len(), b + r.history().byte_len())
        });
        if (events as u64, bytes as u64) != (c.history_events, c.history_bytes) {
            return Err("history gauges differ from the rings".into());
        }
        if self.by_name.len() != self.rooms.len() {
            return Err("room names and rooms differ".into());
        }
        if self.rooms_per_ip.total() != self.rooms.len() {
            return Err("per-IP room counts are off".into());
        }
        if self.members_per_ip.total() != self.members.len() {
            return Err("per-IP member counts are off".into());
        }
        if c.rooms_created - c.rooms_closed != self.rooms.len() as u64 {
            return Err("rooms created - closed != rooms open".into());
        }
        let handled = c.heartbeats
            + c.messages
            + c.duplicate_sends
            + c.nacks
            + c.syncs
            + c.drops.iter().sum::<u64>();
        if handled != c.datagrams_in {
            return Err("datagram outcomes do not add up to datagrams in".into());
        }
        Ok(())
    }
}
