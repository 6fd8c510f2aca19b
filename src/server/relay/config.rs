//! The relay's settings.

use std::time::Duration;

/// Default of `--max-hold-us`, from measurements (docs/benchmarks.md): a datagram holds
/// about (a room's messages per second) x (hold) events, so at 1 M deliveries/s in rooms of
/// 25 (2 000 messages/s a room) 1 ms gave 2-3x fewer datagrams than 0.5 ms, while staying
/// half of the 2 ms p99 goal. The hold is reached only when the server is 75% busy.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_micros(1000);
/// Largest `--max-hold-us` accepted: past this, holding is a delay users would notice.
pub const MAX_HOLD_LIMIT: Duration = Duration::from_millis(50);

/// The relay's limits and settings (the server's command line, minus the sockets).
#[derive(Debug, Clone)]
pub struct Config {
    /// Port of the data plane, told to members in the COMPLETE frame.
    pub udp_port: u16,
    /// Silence after which a member is dropped (1..=65535 s).
    pub idle_timeout: Duration,
    /// Capacity of a room created with capacity 0.
    pub default_capacity: u16,
    /// Largest room; larger requests are lowered to it.
    pub max_capacity: u16,
    /// Rooms over the whole server.
    pub max_rooms: usize,
    /// Members over all rooms.
    pub max_members: usize,
    /// Members whose tokens were issued to one IP (0: no limit): one address cannot fill
    /// every room and the whole server.
    pub max_members_per_ip: u32,
    /// Rooms that one IP may have created at once (0: no limit).
    pub max_rooms_per_ip: u32,
    /// Chat messages per second per member (0: no limit).
    pub msg_rate: u32,
    /// Burst of chat messages per member.
    pub msg_burst: u32,
    /// Most events in one server datagram (1: no coalescing).
    pub batch_max: usize,
    /// Longest a busy room may hold its outbox while the server is busy, so that datagrams
    /// fill as load rises (zero: every outbox leaves at the end of its wake-up).
    pub max_hold: Duration,
    /// (v1.1) Events each room's history keeps (0: none).
    pub history: usize,
    /// (v1.1) Event bytes all rooms' histories hold together; past it the largest rings
    /// shed their oldest events.
    pub history_memory: usize,
    /// (v1.1) Bytes per second a member's repair bucket refills (0: no limit).
    pub repair_rate: u64,
    /// (v1.1) Bytes a member's repair bucket holds (0: no limit).
    pub repair_burst: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            udp_port: 9001,
            idle_timeout: Duration::from_secs(60),
            default_capacity: 32,
            max_capacity: 256,
            max_rooms: 10_000,
            max_members: 100_000,
            max_members_per_ip: 1024,
            max_rooms_per_ip: 16,
            msg_rate: 20,
            msg_burst: 40,
            batch_max: 64,
            max_hold: DEFAULT_MAX_HOLD,
            history: 1024,
            history_memory: 256 << 20,
            repair_rate: 1 << 20,
            repair_burst: 4 << 20,
        }
    }
}

impl Config {
    /// The settings made consistent: capacities at least 1 and the default within the
    /// maximum, batches of at least one event.
    pub(super) fn normalised(mut self) -> Config {
        self.max_capacity = self.max_capacity.max(1);
        self.default_capacity = self.default_capacity.clamp(1, self.max_capacity);
        self.batch_max = self.batch_max.max(1);
        self.max_hold = self.max_hold.min(MAX_HOLD_LIMIT);
        self
    }
}
