//! The figures of one load step, printed as a wrk2-like table or as flat JSON.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::stats::Counters;
use crate::sys::{CpuTime, UdpDrops};
use crate::worker::Path;

/// Loss above this (percent) fails a `--sweep` step.
pub const MAX_LOSS_PCT: f64 = 0.1;
/// A `--sweep` step fails when the bench sent less than this share of the asked rate.
pub const MIN_ACHIEVED_SHARE: f64 = 0.95;

/// Send lag p99 above this (µs) gets a warning: the bench itself was late.
pub const SEND_LAG_WARN_US: f64 = 1_000.0;

/// The quantiles shown, as in wrk2.
pub const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 0.9999];

/// How the run was set up.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// Users (one socket each).
    pub users: usize,
    /// Rooms.
    pub rooms: usize,
    /// Smallest room.
    pub room_size_min: u32,
    /// Largest room.
    pub room_size_max: u32,
    /// Message size, bytes.
    pub size: usize,
    /// Worker threads.
    pub threads: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warmup seconds before them.
    pub warmup_s: f64,
    /// The protocol path.
    pub path: Path,
    /// `--loss`: probability a received datagram is dropped.
    pub loss: f64,
    /// `--seed` of the loss filter.
    pub seed: u64,
    /// `--nack-retry-ms`: first repeat of an unanswered NACK (v1.1).
    pub nack_retry_ms: u64,
    /// `--target redis://…`: the Redis server (`HOST:PORT`) measured instead of OCM.
    pub redis: Option<String>,
}

/// Percentiles of a histogram in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// At each of [`QUANTILES`].
    pub at: [f64; 5],
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Reads a histogram of nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Percentiles {
            count: h.len(),
            at: QUANTILES.map(|q| us(h.value_at_quantile(q))),
            max: us(h.max()),
            mean: h.mean() / 1e3,
        }
    }

    /// p99 in µs.
    pub fn p99(&self) -> f64 {
        self.at[2]
    }
}

/// Everything one step measured, and the figures derived from it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The run's shape.
    pub setup: Setup,
    /// Rate asked, messages/s.
    pub rate_asked: f64,
    /// Measured messages sent per second of the measured window (or of the time the bench
    /// took to send them, when it fell behind).
    pub rate_achieved: f64,
    /// Raw counts.
    pub counters: Counters,
    /// Latency of measured deliveries.
    pub latency: Percentiles,
    /// How late the bench's sends left.
    pub send_lag: Percentiles,
    /// Recovery latency: from the moment a gap was seen (a later event, or a SYNC's
    /// LastSeq, showed it) to the arrival of an event that filled it after a NACK.
    pub recovery: Percentiles,
    /// The bench's CPU time over the step.
    pub cpu: CpuTime,
    /// Wall-clock seconds of the step (warmup, load and drain).
    pub wall_s: f64,
    /// Kernel receive-queue drops over the step, where known.
    pub drops: Option<UdpDrops>,
    /// `--web`: latency and deliveries by transport (None without web users).
    pub kinds: Option<crate::web::KindFigures>,
    /// `--shape`/`--room-size`: the figures of each shape (empty without).
    pub shapes: Vec<crate::shape::ShapeRow>,
}

impl StepReport {
    /// Deliveries expected but not received.
    pub fn lost(&self) -> u64 {
        self.counters
            .expected
            .saturating_sub(self.counters.received)
    }

    /// Lost deliveries, percent of expected.
    pub fn loss_pct(&self) -> f64 {
        if self.counters.expected == 0 {
            return 0.0;
        }
        self.lost() as f64 * 100.0 / self.counters.expected as f64
    }

    /// Measured deliveries received, percent of expected.
    pub fn delivered_pct(&self) -> f64 {
        if self.counters.expected == 0 {
            return 0.0;
        }
        self.counters.received as f64 * 100.0 / self.counters.expected as f64
    }

    /// Room events given up: GONE, or the bench's own tracker bounds.
    pub fn unrecovered(&self) -> u64 {
        self.counters.gone + self.counters.abandoned
    }

    /// Bytes of the datagrams that answered NACKs over bytes of the datagrams the loss
    /// filter dropped; `None` when nothing was dropped.
    pub fn repair_ratio(&self) -> Option<f64> {
        let c = &self.counters;
        (c.lost_bytes > 0).then(|| c.repair_bytes as f64 / c.lost_bytes as f64)
    }

    /// Measured deliveries received per measured second.
    pub fn deliveries_per_s(&self) -> f64 {
        self.counters.received as f64 / self.setup.duration_s
    }

    /// Datagrams received per second during the measured window.
    pub fn datagrams_per_s(&self) -> f64 {
        self.counters.window_datagrams as f64 / self.setup.duration_s
    }

    /// MESSAGE events per datagram during the measured window.
    pub fn events_per_datagram(&self) -> f64 {
        if self.counters.window_datagrams == 0 {
            return 0.0;
        }
        self.counters.window_events as f64 / self.counters.window_datagrams as f64
    }

    /// Bench CPU, percent of one core, over the step's wall time.
    pub fn cpu_pct(&self) -> f64 {
        if self.wall_s <= 0.0 {
            return 0.0;
        }
        (self.cpu.user_s + self.cpu.sys_s) * 100.0 / self.wall_s
    }

    /// Whether the step is sustainable: `Ok`, or why not.
    pub fn verdict(&self, p99_bound_ms: f64) -> Result<(), String> {
        let c = &self.counters;
        if c.expected == 0 {
            return Err("nothing was sent".into());
        }
        if self.loss_pct() > MAX_LOSS_PCT {
            return Err(format!("loss {:.3}% > {MAX_LOSS_PCT}%", self.loss_pct()));
        }
        if self.latency.p99() > p99_bound_ms * 1e3 {
            return Err(format!(
                "p99 {} > {p99_bound_ms} ms",
                fmt_us(self.latency.p99())
            ));
        }
        if self.rate_achieved < self.rate_asked * MIN_ACHIEVED_SHARE {
            return Err(format!(
                "the bench sent only {:.0} of {:.0} msg/s",
                self.rate_achieved, self.rate_asked
            ));
        }
        if c.timed_out + c.room_closed > 0 {
            return Err("the server dropped members".into());
        }
        Ok(())
    }

    /// `--p50-bound-ms` of a sweep: `Ok` when there is no bound or p50 is within it.
    pub fn p50_verdict(&self, p50_bound_ms: Option<f64>) -> Result<(), String> {
        match p50_bound_ms {
            Some(b) if self.latency.at[0] > b * 1e3 => {
                Err(format!("p50 {} > {b} ms", fmt_us(self.latency.at[0])))
            }
            _ => Ok(()),
        }
    }

    /// The wrk2-like table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        self.table_traffic(&mut t);
        self.table_protocol(&mut t);
        if self.setup.path == Path::V11 {
            self.table_recovery(&mut t);
        }
        self.table_performance(&mut t);
        for w in self.warnings() {
            let _ = writeln!(t, "  WARNING: {w}");
        }
        t
    }

    /// The table's setup line, and what was sent and delivered.
    fn table_traffic(&self, t: &mut String) {
        let s = &self.setup;
        let c = &self.counters;
        let per_room = if s.room_size_min == s.room_size_max {
            format!("{}", s.room_size_min)
        } else {
            format!("{}-{}", s.room_size_min, s.room_size_max)
        };
        let _ = writeln!(
            t,
            "Running {:.1} s (after {:.1} s warmup) @ {:.0} msg/s: {} users in {} rooms ({} per room), {}-byte messages, {} threads",
            s.duration_s,
            s.warmup_s,
            self.rate_asked,
            s.users,
            s.rooms,
            per_room,
            s.size,
            s.threads
        );
        let _ = writeln!(
            t,
            "  Rate          asked {:.0} msg/s, achieved {:.0} msg/s (send lag p50 {}, p99 {}, max {})",
            self.rate_asked,
            self.rate_achieved,
            fmt_us(self.send_lag.at[0]),
            fmt_us(self.send_lag.p99()),
            fmt_us(self.send_lag.max)
        );
        let _ = writeln!(
            t,
            "  Messages      {} sent in the measured window ({} with warmup; {} send errors, {} given up)",
            c.sent_measured, c.sent, c.send_failed, c.unsent
        );
        let _ = writeln!(
            t,
            "  Deliveries    expected {}, received {}, lost {} ({:.3}%), duplicates {}, out of order {}",
            c.expected,
            c.received,
            self.lost(),
            self.loss_pct(),
            c.duplicates,
            c.out_of_order
        );
    }

    /// The table's protocol path, and the loss filter if one ran.
    fn table_protocol(&self, t: &mut String) {
        let s = &self.setup;
        let c = &self.counters;
        if let Some(addr) = &s.redis {
            let _ = writeln!(
                t,
                "  Protocol      Redis pub/sub at {addr} (RESP3): one TCP connection per user, SUBSCRIBE to its room's channel, PUBLISH pipelined; order and loss from the message stamps; \"datagrams\" are TCP reads"
            );
            return;
        }
        let _ = match s.path {
            Path::V11 => writeln!(
                t,
                "  Protocol      v1.1: SEND with ClientSeq, SYNC heartbeats, gaps NACKed (repeated after {} ms, doubling)",
                s.nack_retry_ms
            ),
            Path::V1 => writeln!(
                t,
                "  Protocol      v1: chat datagrams, empty heartbeats, no recovery"
            ),
        };
        if s.loss > 0.0 {
            let _ = writeln!(
                t,
                "  Loss filter   {:.2}% of received datagrams dropped (seed {}): {} datagrams, {} bytes",
                s.loss * 100.0,
                s.seed,
                c.lost_datagrams,
                c.lost_bytes
            );
        }
    }

    /// The table's v1.1 recovery figures: what NACKs won back, what it cost, how long it took.
    fn table_recovery(&self, t: &mut String) {
        let c = &self.counters;
        let _ = writeln!(
            t,
            "  Recovery      delivered {:.3}% of expected; {} events recovered by NACK ({} filled before their NACK), {} unrecovered ({} GONE, {} abandoned), {} still missing at the end",
            self.delivered_pct(),
            c.recovered,
            c.reordered,
            self.unrecovered(),
            c.gone,
            c.abandoned,
            c.still_missing
        );
        let ratio = self
            .repair_ratio()
            .map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"));
        let _ = writeln!(
            t,
            "  Repair        {} NACKs sent ({} gaps), {} repair datagrams, {} bytes = {ratio} the bytes lost; {} GONE, {} SYNC events; {} drain SYNCs",
            c.nacks,
            c.gaps,
            c.repair_datagrams,
            c.repair_bytes,
            c.gone_events,
            c.sync_events,
            c.drain_syncs
        );
        let r = &self.recovery;
        let _ = writeln!(
            t,
            "  Recovery lat. gap seen -> event received, {} events: p50 {}, p90 {}, p99 {}, max {}",
            r.count,
            fmt_us(r.at[0]),
            fmt_us(r.at[1]),
            fmt_us(r.p99()),
            fmt_us(r.max)
        );
    }

    /// The table's throughput, latency quantiles, the bench's CPU and the kernel's drops.
    fn table_performance(&self, t: &mut String) {
        let _ = writeln!(
            t,
            "  Throughput    {:.0} deliveries/s, {:.0} datagrams/s, {:.2} events/datagram",
            self.deliveries_per_s(),
            self.datagrams_per_s(),
            self.events_per_datagram()
        );
        let _ = writeln!(
            t,
            "  Latency       receive time - intended send time, {} samples, mean {}",
            self.latency.count,
            fmt_us(self.latency.mean)
        );
        for (q, v) in QUANTILES.iter().zip(self.latency.at) {
            let _ = writeln!(t, "    {:>8.3}%  {:>10}", q * 100.0, fmt_us(v));
        }
        let _ = writeln!(t, "    {:>8.3}%  {:>10}", 100.0, fmt_us(self.latency.max));
        if let Some(k) = &self.kinds {
            t.push_str(&k.table());
        }
        if !self.shapes.is_empty() {
            t.push_str(&crate::shape::table(&self.shapes, &self.latency));
        }
        let _ = writeln!(
            t,
            "  Bench CPU     user {:.2} s, sys {:.2} s = {:.0}% of one core over {:.1} s",
            self.cpu.user_s,
            self.cpu.sys_s,
            self.cpu_pct(),
            self.wall_s
        );
        if let Some(d) = self.drops {
            let _ = writeln!(
                t,
                "  Kernel drops  {} at the bench's sockets, {} at the server's socket (full receive queues)",
                d.bench, d.server
            );
        }
    }

    /// What a reader must know about this step beyond the figures.
    pub fn warnings(&self) -> Vec<String> {
        let c = &self.counters;
        let mut w = Vec::new();
        if self.send_lag.p99() > SEND_LAG_WARN_US {
            w.push(format!(
                "the bench itself sent late (send lag p99 {}): that lateness is counted as latency; the machine may be short of CPU (see Bench CPU, try --threads)",
                fmt_us(self.send_lag.p99())
            ));
        }
        if c.rate_limited > 0 {
            w.push(format!(
                "the server's flood control dropped messages ({} RATE_LIMITED events): run it with --msg-rate 0",
                c.rate_limited
            ));
        }
        if self.setup.redis.is_some() && c.timed_out > 0 {
            w.push(format!(
                "Redis closed {} connections (a subscriber past its client-output-buffer-limit, or maxclients)",
                c.timed_out
            ));
        } else if c.timed_out + c.room_closed + c.left > 0 {
            w.push(format!(
                "members left the rooms during the run ({} TIMED_OUT, {} LEFT, {} ROOM_CLOSED)",
                c.timed_out, c.left, c.room_closed
            ));
        }
        if c.foreign + c.malformed > 0 {
            w.push(format!(
                "{} foreign messages and {} malformed datagrams",
                c.foreign, c.malformed
            ));
        }
        if c.abandoned > 0 {
            w.push(format!(
                "the bench's gap tracker gave up {} events (more than {} gaps open for one user, or a jump over {} Seqs)",
                c.abandoned,
                crate::gaps::MAX_GAPS,
                crate::gaps::MAX_GAP
            ));
        }
        if c.send_failed + c.unsent > 0 || c.recv_errors > 0 {
            w.push(format!(
                "{} send errors, {} sends given up, {} receive errors",
                c.send_failed, c.unsent, c.recv_errors
            ));
        }
        w
    }

    /// The same figures as a flat JSON object.
    pub fn json(&self) -> String {
        let mut j = Json::default();
        self.json_setup(&mut j);
        self.json_traffic(&mut j);
        self.json_recovery(&mut j);
        self.json_performance(&mut j);
        j.finish()
    }

    /// The JSON's setup fields.
    fn json_setup(&self, j: &mut Json) {
        let s = &self.setup;
        j.int("users", s.users as u64);
        j.int("rooms", s.rooms as u64);
        j.int("room_size_min", u64::from(s.room_size_min));
        j.int("room_size_max", u64::from(s.room_size_max));
        j.int("size", s.size as u64);
        j.int("threads", s.threads as u64);
        j.num("duration_s", s.duration_s);
        j.num("warmup_s", s.warmup_s);
        match &s.redis {
            Some(addr) => {
                j.str("target", &format!("redis://{addr}"));
                j.str("protocol", "redis-resp3");
            }
            None => {
                j.str("target", "ocm");
                j.str("protocol", s.path.name());
            }
        }
        j.num("loss", s.loss);
        j.int("seed", s.seed);
        j.int("nack_retry_ms", s.nack_retry_ms);
    }

    /// The JSON's rates, sends, deliveries and event counts.
    fn json_traffic(&self, j: &mut Json) {
        let c = &self.counters;
        j.num("rate_asked", self.rate_asked);
        j.num("rate_achieved", self.rate_achieved);
        j.int("sent", c.sent_measured);
        j.int("sent_with_warmup", c.sent);
        j.int("send_failed", c.send_failed);
        j.int("unsent", c.unsent);
        j.int("expected", c.expected);
        j.int("received", c.received);
        j.int("lost", self.lost());
        j.num("loss_pct", self.loss_pct());
        j.num("delivered_pct", self.delivered_pct());
        j.int("duplicates", c.duplicates);
        j.int("out_of_order", c.out_of_order);
        j.int("stale", c.stale);
        j.int("foreign", c.foreign);
        j.int("malformed", c.malformed);
        j.int("recv_errors", c.recv_errors);
        j.int("events", c.events);
        j.int("datagrams", c.datagrams);
        j.int("timed_out", c.timed_out);
        j.int("room_closed", c.room_closed);
        j.int("rate_limited", c.rate_limited);
        j.int("heartbeats", c.heartbeats);
    }

    /// The JSON's loss filter and v1.1 recovery fields (zero on the v1 path).
    fn json_recovery(&self, j: &mut Json) {
        let c = &self.counters;
        j.int("lost_datagrams", c.lost_datagrams);
        j.int("lost_bytes", c.lost_bytes);
        j.int("recovered", c.recovered);
        j.int("reordered", c.reordered);
        j.int("unrecovered", self.unrecovered());
        j.int("gone", c.gone);
        j.int("abandoned", c.abandoned);
        j.int("still_missing", c.still_missing);
        j.int("room_duplicates", c.room_duplicates);
        j.int("gaps", c.gaps);
        j.int("nacks", c.nacks);
        j.int("drain_syncs", c.drain_syncs);
        j.int("repair_datagrams", c.repair_datagrams);
        j.int("repair_bytes", c.repair_bytes);
        match self.repair_ratio() {
            Some(r) => j.num("repair_to_lost_bytes", r),
            None => j.raw("repair_to_lost_bytes", "null"),
        }
        j.int("gone_events", c.gone_events);
        j.int("sync_events", c.sync_events);
        j.int("recovery_samples", self.recovery.count);
        for (name, v) in ["p50", "p90", "p99", "p999", "p9999"]
            .iter()
            .zip(self.recovery.at)
        {
            j.num(&format!("recovery_{name}_us"), v);
        }
        j.num("recovery_max_us", self.recovery.max);
    }

    /// The JSON's throughput, latency, send lag, CPU and kernel drop fields.
    fn json_performance(&self, j: &mut Json) {
        j.num("deliveries_per_s", self.deliveries_per_s());
        j.num("datagrams_per_s", self.datagrams_per_s());
        j.num("events_per_datagram", self.events_per_datagram());
        j.int("latency_samples", self.latency.count);
        for (name, v) in ["p50", "p90", "p99", "p999", "p9999"]
            .iter()
            .zip(self.latency.at)
        {
            j.num(&format!("latency_{name}_us"), v);
        }
        j.num("latency_max_us", self.latency.max);
        j.num("latency_mean_us", self.latency.mean);
        j.num("send_lag_p50_us", self.send_lag.at[0]);
        j.num("send_lag_p99_us", self.send_lag.p99());
        j.num("send_lag_max_us", self.send_lag.max);
        j.num("cpu_user_s", self.cpu.user_s);
        j.num("cpu_sys_s", self.cpu.sys_s);
        j.num("cpu_pct_one_core", self.cpu_pct());
        j.num("wall_s", self.wall_s);
        match self.drops {
            Some(d) => {
                j.int("kernel_drops_bench", d.bench);
                j.int("kernel_drops_server", d.server);
            }
            None => {
                j.raw("kernel_drops_bench", "null");
                j.raw("kernel_drops_server", "null");
            }
        }
        if let Some(k) = &self.kinds {
            k.json(j);
        }
        if !self.shapes.is_empty() {
            j.raw("shapes", &crate::shape::json(&self.shapes));
        }
    }
}

/// A µs value in the unit that reads best: `850.0us`, `1.23ms`, `2.10s`.
pub fn fmt_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.1}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

/// A flat JSON object written by hand (numbers, and strings of our own).
#[derive(Debug, Default)]
pub struct Json {
    out: String,
}

impl Json {
    fn key(&mut self, k: &str) {
        self.out
            .push_str(if self.out.is_empty() { "{" } else { "," });
        self.out.push('"');
        escape_into(&mut self.out, k);
        self.out.push_str("\":");
    }

    /// An unsigned integer.
    pub fn int(&mut self, k: &str, v: u64) {
        self.key(k);
        let _ = write!(self.out, "{v}");
    }

    /// A number; not finite becomes `null`.
    pub fn num(&mut self, k: &str, v: f64) {
        self.key(k);
        if v.is_finite() {
            let _ = write!(self.out, "{v}");
        } else {
            self.out.push_str("null");
        }
    }

    /// A string.
    pub fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push('"');
        escape_into(&mut self.out, v);
        self.out.push('"');
    }

    /// Already-encoded JSON (`null`, `true`, an object, an array).
    pub fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push_str(v);
    }

    /// The object's text.
    pub fn finish(mut self) -> String {
        if self.out.is_empty() {
            self.out.push('{');
        }
        self.out.push('}');
        self.out
    }
}

fn escape_into(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests;
