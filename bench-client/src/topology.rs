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

    /// The rooms of a mix, shape by shape (the rooms of `shapes[0]` first). Within a
    /// shape, users are in [`Topology::new`]'s order: the hosts of its rooms, then position
    /// 1 of each room, and so on, so a host always comes before its members. The shapes'
    /// users are then interleaved evenly by their numbers (shape `s`'s `j`-th user at
    /// `(j + 1/2) / users_s` of the whole order): the schedule sends from users in index
    /// order, and a run too short for every user to send still draws from every shape in
    /// proportion. For one shape this is `new`'s round-robin.
    pub fn from_shapes(shapes: &[Shape]) -> Topology {
        let mut room_size = Vec::new();
        let mut shape_of_room = Vec::new();
        // Each shape's users as (room, position), in `new`'s order within the shape.
        let mut per_shape: Vec<Vec<(u32, u32)>> = Vec::with_capacity(shapes.len());
        for (i, s) in shapes.iter().enumerate() {
            let first = room_size.len() as u32;
            for _ in 0..s.count {
                room_size.push(s.size);
                shape_of_room.push(i as u32);
            }
            let mut list = Vec::with_capacity(s.users() as usize);
            for pos in 0..s.size {
                list.extend((0..s.count).map(|k| (first + k, pos)));
            }
            per_shape.push(list);
        }
        // (due fraction, shape, index in the shape): sorting by it interleaves the shapes.
        let mut order: Vec<(f64, u32, u32)> = Vec::new();
        for (i, list) in per_shape.iter().enumerate() {
            let n = list.len() as f64;
            order.extend((0..list.len()).map(|j| ((j as f64 + 0.5) / n, i as u32, j as u32)));
        }
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (room_of, pos_in_room) = order
            .iter()
            .map(|&(_, i, j)| per_shape[i as usize][j as usize])
            .unzip();
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
        // Each room holds exactly its size, at positions 0..size, and its host (position
        // 0) comes before every other member of it.
        for r in 0..t.rooms() as u32 {
            let users: Vec<usize> = (0..t.users()).filter(|&u| t.room_of[u] == r).collect();
            let mut pos: Vec<u32> = users.iter().map(|&u| t.pos_in_room[u]).collect();
            assert_eq!(pos[0], 0, "room {r}: the host first");
            pos.sort();
            assert_eq!(
                pos,
                (0..t.room_size[r as usize]).collect::<Vec<_>>(),
                "room {r}"
            );
        }
        assert_eq!((0..t.users()).filter(|&u| t.is_host(u)).count(), t.rooms());
        assert_eq!(t.size_of_room_of(0), 2);
        assert_eq!(t.room_size_range(), (1, 5));
    }

    #[test]
    fn shapes_are_interleaved_in_proportion() {
        // 400 users of rooms of 2, 400 in one room of 400, 200 of rooms of 1.
        let shapes = [
            Shape {
                size: 2,
                count: 200,
            },
            Shape {
                size: 400,
                count: 1,
            },
            Shape {
                size: 1,
                count: 200,
            },
        ];
        let t = Topology::from_shapes(&shapes);
        assert_eq!(t.users(), 1000);
        // Any 100 consecutive users hold each shape about in proportion: 40, 40, 20.
        for start in (0..900).step_by(50) {
            let mut n = [0; 3];
            for u in start..start + 100 {
                n[t.shape_of(t.room_of[u]).unwrap()] += 1;
            }
            assert!(
                (39..=41).contains(&n[0]) && (39..=41).contains(&n[1]),
                "{start}: {n:?}"
            );
            assert!((19..=21).contains(&n[2]), "{start}: {n:?}");
        }
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
