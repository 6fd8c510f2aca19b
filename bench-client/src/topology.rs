//! Who is in which room, and the run's clock.

use std::time::Instant;

use crate::shape::Shape;

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
    /// `--shape`/`--room-size`: the shapes of the run (empty: plain `--users`/`--rooms`).
    pub shapes: Vec<Shape>,
    /// Index in `shapes` of each room's shape (empty without shapes).
    pub shape_of_room: Vec<u32>,
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
            shapes: Vec::new(),
            shape_of_room: Vec::new(),
        }
    }

    /// The rooms of a mix, shape by shape (the rooms of `shapes[0]` first). As in
    /// [`Topology::new`], room `r` is hosted by user `r`, so every host comes before every
    /// other member; then positions fill layer by layer (position 1 of every room that has
    /// one, then position 2...). For rooms all of one size that is `new`'s round-robin.
    pub fn from_shapes(shapes: &[Shape]) -> Topology {
        let mut room_size = Vec::new();
        let mut shape_of_room = Vec::new();
        for (i, s) in shapes.iter().enumerate() {
            for _ in 0..s.count {
                room_size.push(s.size);
                shape_of_room.push(i as u32);
            }
        }
        let users: usize = room_size.iter().map(|&n| n as usize).sum();
        let mut room_of = Vec::with_capacity(users);
        let mut pos_in_room = Vec::with_capacity(users);
        // Rooms that still have a position `pos`: shrinks as the small rooms fill up.
        let mut open: Vec<u32> = (0..room_size.len() as u32).collect();
        let mut pos = 0u32;
        while !open.is_empty() {
            for &r in &open {
                room_of.push(r);
                pos_in_room.push(pos);
            }
            pos += 1;
            open.retain(|&r| room_size[r as usize] > pos);
        }
        Topology {
            room_of,
            pos_in_room,
            room_size,
            shapes: shapes.to_vec(),
            shape_of_room,
        }
    }

    /// Index of room `r`'s shape; `None` without shapes.
    pub fn shape_of(&self, room: u32) -> Option<usize> {
        self.shape_of_room.get(room as usize).map(|&s| s as usize)
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
    fn shapes_put_every_member_in_a_room_of_its_size() {
        let shapes = [
            Shape { size: 2, count: 3 },
            Shape { size: 5, count: 1 },
            Shape { size: 1, count: 2 },
        ];
        let t = Topology::from_shapes(&shapes);
        assert_eq!(t.users(), 2 * 3 + 5 + 2);
        assert_eq!(t.room_size, vec![2, 2, 2, 5, 1, 1]);
        assert_eq!(t.shape_of_room, vec![0, 0, 0, 1, 2, 2]);
        assert_eq!(
            (t.shape_of(3), t.shape_of(5), t.shape_of(6)),
            (Some(1), Some(2), None)
        );
        // Room r is hosted by user r: every host before any other member.
        for r in 0..t.rooms() {
            assert!(t.is_host(r) && t.room_of[r] == r as u32, "room {r}");
        }
        assert!((t.rooms()..t.users()).all(|u| !t.is_host(u)));
        // Each room holds exactly its size, at positions 0..size.
        for r in 0..t.rooms() as u32 {
            let mut pos: Vec<u32> = (0..t.users())
                .filter(|&u| t.room_of[u] == r)
                .map(|u| t.pos_in_room[u])
                .collect();
            pos.sort();
            assert_eq!(
                pos,
                (0..t.room_size[r as usize]).collect::<Vec<_>>(),
                "room {r}"
            );
        }
        // Layer by layer: the second members of the rooms of 2 and 5, then the room of 5.
        assert_eq!(&t.room_of[6..], &[0, 1, 2, 3, 3, 3, 3]);
        assert_eq!(t.size_of_room_of(12), 5);
        assert_eq!(t.room_size_range(), (1, 5));
    }

    #[test]
    fn one_shape_is_the_round_robin() {
        let a = Topology::from_shapes(&[Shape {
            size: 25,
            count: 20,
        }]);
        let b = Topology::new(500, 20);
        assert_eq!(
            (&a.room_of, &a.pos_in_room, &a.room_size),
            (&b.room_of, &b.pos_in_room, &b.room_size)
        );
        assert_eq!(a.shape_of_room, vec![0; 20]);
        assert!(b.shapes.is_empty() && b.shape_of(0).is_none());
    }

    #[test]
    fn clock_moves_forward() {
        let c = Clock::start();
        let a = c.now_ns();
        let b = c.now_ns();
        assert!(b >= a);
    }
}
