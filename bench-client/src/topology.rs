//! Who is in which room, and the run's clock.

use std::time::Instant;

/// Users spread over rooms round-robin: user `u` is in room `u % rooms`, at position
/// `u / rooms`; the user at position 0 (user `r` for room `r`) is the room's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Room of each user.
    pub room_of: Vec<u32>,
    /// Position of each user in its room (0 = host).
    pub pos_in_room: Vec<u32>,
    /// Members of each room.
    pub room_size: Vec<u32>,
}

impl Topology {
    /// `users` users in `rooms` rooms (`1 <= rooms <= users`, checked by the caller).
    pub fn new(users: usize, rooms: usize) -> Topology {
        let rooms = rooms.max(1);
        let room_of = (0..users).map(|u| (u % rooms) as u32).collect();
        let pos_in_room = (0..users).map(|u| (u / rooms) as u32).collect();
        let room_size = (0..rooms)
            .map(|r| (users / rooms + usize::from(r < users % rooms)) as u32)
            .collect();
        Topology {
            room_of,
            pos_in_room,
            room_size,
        }
    }

    /// How many users.
    pub fn users(&self) -> usize {
        self.room_of.len()
    }

    /// How many rooms.
    pub fn rooms(&self) -> usize {
        self.room_size.len()
    }

    /// Whether user `u` hosts its room.
    pub fn is_host(&self, u: usize) -> bool {
        self.pos_in_room.get(u) == Some(&0)
    }

    /// Members of user `u`'s room (0 for an unknown user).
    pub fn size_of_room_of(&self, u: usize) -> u32 {
        self.room_of
            .get(u)
            .and_then(|&r| self.room_size.get(r as usize))
            .copied()
            .unwrap_or(0)
    }

    /// Smallest and largest room.
    pub fn room_size_range(&self) -> (u32, u32) {
        let min = self.room_size.iter().copied().min().unwrap_or(0);
        let max = self.room_size.iter().copied().max().unwrap_or(0);
        (min, max)
    }
}

/// Nanoseconds since one base instant shared by every thread of the run: intended send
/// times and receive times are on this clock, so their difference is a latency.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn start() -> Clock {
        Clock {
            base: Instant::now(),
        }
    }

    /// Nanoseconds since the base instant.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_evenly_with_one_host_per_room() {
        let t = Topology::new(10, 4);
        assert_eq!(t.room_size, vec![3, 3, 2, 2]);
        assert_eq!(t.room_size.iter().sum::<u32>(), 10);
        assert_eq!(t.room_size_range(), (2, 3));
        let hosts: Vec<usize> = (0..10).filter(|&u| t.is_host(u)).collect();
        assert_eq!(hosts, vec![0, 1, 2, 3]);
        assert_eq!(t.room_of[9], 1);
        assert_eq!(t.pos_in_room[9], 2);
        assert_eq!(t.size_of_room_of(9), 3);
        assert_eq!(t.size_of_room_of(99), 0);
        // Positions in a room are 0..size.
        for r in 0..4u32 {
            let mut pos: Vec<u32> = (0..10)
                .filter(|&u| t.room_of[u] == r)
                .map(|u| t.pos_in_room[u])
                .collect();
            pos.sort();
            assert_eq!(pos, (0..t.room_size[r as usize]).collect::<Vec<_>>());
        }
    }

    #[test]
    fn clock_moves_forward() {
        let c = Clock::start();
        let a = c.now_ns();
        let b = c.now_ns();
        assert!(b >= a);
    }
}
