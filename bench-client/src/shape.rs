//! `--shape` and `--room-size`: a run made of rooms of several sizes, measured per size.
//!
//! A shape is `SIZExCOUNT`: COUNT rooms of SIZE members each (host included). A mix is a
//! comma-separated list of shapes, e.g. `2x100,10x20,25x20,250x2,2000x1`: 100 rooms of 2,
//! 20 of 10, and so on, all loaded in the same run. Every member sends at the same rate
//! (the aggregate `--rate` spread evenly over the users, as without shapes), so a shape's
//! share of the deliveries grows with `members × size`; the report gives each shape's
//! deliveries/s, latency and loss apart, and the total.

use std::fmt;
use std::fmt::Write as _;

use crate::report::{Json, Percentiles, fmt_us};
use crate::stats::{ShapeCounts, ShapeStats};

/// Most shapes in one mix: each has its own histograms in every worker.
pub const MAX_SHAPES: usize = 16;

/// Largest room a shape may ask for: a room's capacity is 16 bits in TCRP.
pub const MAX_SHAPE_SIZE: u32 = u16::MAX as u32;

/// COUNT rooms of SIZE members each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Members of each room, host included.
    pub size: u32,
    /// Rooms of that size.
    pub count: u32,
}

impl Shape {
    /// Members over all its rooms.
    pub fn users(&self) -> u64 {
        u64::from(self.size) * u64::from(self.count)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.size, self.count)
    }
}

/// Why a `--shape` or `--room-size` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// Nothing was given.
    Empty,
    /// One item is not `SIZExCOUNT` with two positive integers.
    Syntax(String),
    /// A room of 0 members, or more than [`MAX_SHAPE_SIZE`].
    BadSize(String),
    /// 0 rooms.
    NoRooms(String),
    /// The same size twice (its figures would be merged, so say it once).
    Repeated(u32),
    /// More than [`MAX_SHAPES`] shapes.
    TooMany(usize),
    /// `--room-size` does not divide `--users`.
    NotMultiple { users: usize, size: usize },
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShapeError::Empty => write!(
                f,
                "--shape is empty: give SIZExCOUNT[,SIZExCOUNT...], e.g. 2x100,25x20,2000x1"
            ),
            ShapeError::Syntax(item) => write!(
                f,
                "--shape item '{item}' is not SIZExCOUNT (two positive integers, e.g. 25x20 for 20 rooms of 25)"
            ),
            ShapeError::BadSize(item) => write!(
                f,
                "--shape item '{item}': a room holds 1 to {MAX_SHAPE_SIZE} members"
            ),
            ShapeError::NoRooms(item) => write!(f, "--shape item '{item}': at least 1 room"),
            ShapeError::Repeated(size) => write!(
                f,
                "--shape gives rooms of {size} twice: say it once, with the rooms added up"
            ),
            ShapeError::TooMany(n) => write!(f, "--shape has {n} shapes; at most {MAX_SHAPES}"),
            ShapeError::NotMultiple { users, size } => write!(
                f,
                "--room-size {size} does not divide --users {users} (rooms of {size} need a multiple of {size} users)"
            ),
        }
    }
}

impl std::error::Error for ShapeError {}

/// Reads a mix: `SIZExCOUNT[,SIZExCOUNT...]` (`x` or `X`; spaces around items allowed).
pub fn parse_mix(text: &str) -> Result<Vec<Shape>, ShapeError> {
    if text.trim().is_empty() {
        return Err(ShapeError::Empty);
    }
    let mut shapes: Vec<Shape> = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        let shape = parse_one(item)?;
        if shapes.iter().any(|s| s.size == shape.size) {
            return Err(ShapeError::Repeated(shape.size));
        }
        shapes.push(shape);
        if shapes.len() > MAX_SHAPES {
            return Err(ShapeError::TooMany(text.split(',').count()));
        }
    }
    Ok(shapes)
}

/// One `SIZExCOUNT`.
fn parse_one(item: &str) -> Result<Shape, ShapeError> {
    let syntax = || ShapeError::Syntax(item.to_string());
    let (size, count) = item.split_once(['x', 'X']).ok_or_else(syntax)?;
    // Digits only: `u32::from_str` would also take a leading `+`.
    let number = |s: &str| -> Result<u64, ShapeError> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        // Too many digits for u64 is as wrong as too large a size: say so by the bound.
        Ok(s.parse::<u64>().unwrap_or(u64::MAX))
    };
    let (size, count) = (number(size)?, number(count)?);
    if size == 0 || size > u64::from(MAX_SHAPE_SIZE) {
        return Err(ShapeError::BadSize(item.to_string()));
    }
    if count == 0 {
        return Err(ShapeError::NoRooms(item.to_string()));
    }
    Ok(Shape {
        size: size as u32,
        count: u32::try_from(count).unwrap_or(u32::MAX),
    })
}

/// `--room-size N` with `users` users: one shape, `users / N` rooms of N.
pub fn uniform(users: usize, size: usize) -> Result<Vec<Shape>, ShapeError> {
    if size == 0 || size > MAX_SHAPE_SIZE as usize {
        return Err(ShapeError::BadSize(size.to_string()));
    }
    if users == 0 || users % size != 0 {
        return Err(ShapeError::NotMultiple { users, size });
    }
    Ok(vec![Shape {
        size: size as u32,
        count: u32::try_from(users / size).unwrap_or(u32::MAX),
    }])
}

/// Members over every shape of a mix.
pub fn total_users(shapes: &[Shape]) -> u64 {
    shapes.iter().map(Shape::users).sum()
}

/// Rooms over every shape of a mix.
pub fn total_rooms(shapes: &[Shape]) -> u64 {
    shapes.iter().map(|s| u64::from(s.count)).sum()
}

/// One shape's figures in a step's report.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeRow {
    /// The shape.
    pub shape: Shape,
    /// What its members sent and received.
    pub counts: ShapeCounts,
    /// Latency of its measured deliveries, µs.
    pub latency: Percentiles,
    /// Measured seconds (to turn counts into rates).
    pub duration_s: f64,
}

impl ShapeRow {
    /// The rows of a step: `shapes` with what the workers counted (`stats`, merged).
    pub fn rows(shapes: &[Shape], stats: &ShapeStats, duration_s: f64) -> Vec<ShapeRow> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, &shape)| ShapeRow {
                shape,
                counts: stats.counts.get(i).copied().unwrap_or_default(),
                latency: stats
                    .latency
                    .get(i)
                    .map(Percentiles::of)
                    .unwrap_or_default(),
                duration_s,
            })
            .collect()
    }

    /// Deliveries expected and not received.
    pub fn lost(&self) -> u64 {
        self.counts.expected.saturating_sub(self.counts.received)
    }

    /// Lost deliveries, percent of expected.
    pub fn loss_pct(&self) -> f64 {
        if self.counts.expected == 0 {
            return 0.0;
        }
        self.lost() as f64 * 100.0 / self.counts.expected as f64
    }

    /// Measured deliveries received per measured second.
    pub fn deliveries_per_s(&self) -> f64 {
        if self.duration_s <= 0.0 {
            return 0.0;
        }
        self.counts.received as f64 / self.duration_s
    }

    /// Measured messages sent per measured second.
    pub fn messages_per_s(&self) -> f64 {
        if self.duration_s <= 0.0 {
            return 0.0;
        }
        self.counts.sent as f64 / self.duration_s
    }
}

/// The report's per-shape block: one line per shape, then all shapes together (`total`:
/// the latency of the whole step).
pub fn table(rows: &[ShapeRow], total: &Percentiles) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "  By shape      {:>11} {:>7} {:>9} {:>12} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "rooms", "users", "msg/s", "deliveries/s", "loss%", "p50", "p99", "p99.9", "max"
    );
    let line =
        |t: &mut String, name: &str, users: u64, msg: f64, dps: f64, loss: f64, p: &Percentiles| {
            let _ = writeln!(
                t,
                "    {:>23} {:>7} {:>9.0} {:>12.0} {:>8.3} {:>9} {:>9} {:>9} {:>9}",
                name,
                users,
                msg,
                dps,
                loss,
                fmt_us(p.at[0]),
                fmt_us(p.p99()),
                fmt_us(p.at[3]),
                fmt_us(p.max)
            );
        };
    for r in rows {
        let name = format!("{} of {}", r.shape.count, r.shape.size);
        line(
            &mut t,
            &name,
            r.shape.users(),
            r.messages_per_s(),
            r.deliveries_per_s(),
            r.loss_pct(),
            &r.latency,
        );
    }
    let mut all = ShapeRow {
        shape: Shape { size: 0, count: 0 },
        counts: ShapeCounts::default(),
        latency: *total,
        duration_s: rows.first().map_or(0.0, |r| r.duration_s),
    };
    rows.iter().for_each(|r| all.counts.add(&r.counts));
    let users: u64 = rows.iter().map(|r| r.shape.users()).sum();
    line(
        &mut t,
        "all",
        users,
        all.messages_per_s(),
        all.deliveries_per_s(),
        all.loss_pct(),
        total,
    );
    t
}

/// The JSON's `shapes` array: one object per shape.
pub fn json(rows: &[ShapeRow]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut j = Json::default();
            j.int("room_size", u64::from(r.shape.size));
            j.int("rooms", u64::from(r.shape.count));
            j.int("users", r.shape.users());
            j.int("sent_measured", r.counts.sent);
            j.int("expected", r.counts.expected);
            j.int("received", r.counts.received);
            j.int("lost", r.lost());
            j.num("loss_pct", r.loss_pct());
            j.num("messages_per_s", r.messages_per_s());
            j.num("deliveries_per_s", r.deliveries_per_s());
            j.num("latency_p50_us", r.latency.at[0]);
            j.num("latency_p90_us", r.latency.at[1]);
            j.num("latency_p99_us", r.latency.p99());
            j.num("latency_p999_us", r.latency.at[3]);
            j.num("latency_max_us", r.latency.max);
            j.num("latency_mean_us", r.latency.mean);
            j.finish()
        })
        .collect();
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(size: u32, count: u32) -> Shape {
        Shape { size, count }
    }

    #[test]
    fn the_documented_mix() {
        let m = parse_mix("2x100,10x20,25x20,250x2,2000x1").unwrap();
        assert_eq!(
            m,
            vec![s(2, 100), s(10, 20), s(25, 20), s(250, 2), s(2000, 1)]
        );
        assert_eq!(total_users(&m), 200 + 200 + 500 + 500 + 2000);
        assert_eq!(total_rooms(&m), 143);
        assert_eq!(m[4].to_string(), "2000x1");
    }

    #[test]
    fn spaces_and_capital_x() {
        assert_eq!(parse_mix(" 2X3 , 4x1 ").unwrap(), vec![s(2, 3), s(4, 1)]);
        assert_eq!(parse_mix("1x1").unwrap(), vec![s(1, 1)]);
    }

    #[test]
    fn bad_mixes_are_explained() {
        let err = |t: &str| parse_mix(t).unwrap_err();
        assert_eq!(err(""), ShapeError::Empty);
        assert_eq!(err("  "), ShapeError::Empty);
        for bad in [
            "25", "x20", "25x", "25x20x3", "a5x2", "+2x3", "2x-3", "2x3,", "2.5x4",
        ] {
            assert!(
                matches!(err(bad), ShapeError::Syntax(_)),
                "{bad}: {:?}",
                err(bad)
            );
        }
        assert!(matches!(err("0x5"), ShapeError::BadSize(_)));
        assert!(matches!(err("65536x1"), ShapeError::BadSize(_)));
        assert!(matches!(
            err("99999999999999999999999x1"),
            ShapeError::BadSize(_)
        ));
        assert!(matches!(err("5x0"), ShapeError::NoRooms(_)));
        assert_eq!(err("2x3,4x1,2x7"), ShapeError::Repeated(2));
        let many: Vec<String> = (1..=17).map(|i| format!("{i}x1")).collect();
        assert_eq!(err(&many.join(",")), ShapeError::TooMany(17));
        assert!(err("25x").to_string().contains("SIZExCOUNT"));
        assert!(err("2x3,2x4").to_string().contains("twice"));
    }

    #[test]
    fn room_size_divides_the_users() {
        assert_eq!(uniform(500, 25).unwrap(), vec![s(25, 20)]);
        assert_eq!(uniform(500, 500).unwrap(), vec![s(500, 1)]);
        assert_eq!(
            uniform(500, 30).unwrap_err(),
            ShapeError::NotMultiple {
                users: 500,
                size: 30
            }
        );
        assert!(matches!(uniform(500, 0), Err(ShapeError::BadSize(_))));
        assert!(uniform(500, 30).unwrap_err().to_string().contains("divide"));
    }
}
