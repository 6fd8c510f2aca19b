//! # `bench-client scale`: many members on one server
//!
//! Where the default mode asks how fast a server relays, this one asks what members cost
//! it: 100 000 members in 10 000 rooms (by default), each with its own UDP socket, SYNC
//! heartbeats and light traffic. In order:
//!
//! 1. **setup**: the hosts CREATE the rooms, then the others JOIN, over `--connections`
//!    TCRP connections at once: requests handled per second, and the server's resident
//!    memory (VmRSS of `--server-pid`) after each, hence memory per room and per member;
//! 2. **bind**: each member's first SYNC pins its address;
//! 3. **idle**: heartbeats only (one SYNC per member per heartbeat period, spread evenly):
//!    the server's CPU for heartbeats alone;
//! 4. **traffic**: `--room-rate` messages per second in every room (SEND), with the
//!    heartbeats of members that sent nothing: deliveries, loss, latency, server CPU, and
//!    the history gauge of `--metrics` against `--history-memory`;
//! 5. the hosts LEAVE, closing the rooms.
//!
//! A token is bound to the IP of the TCP connection that got it, and a member to the
//! (IP, port) of its first datagram; one loopback IP has about 28 000 ephemeral ports, so
//! members are spread over `--per-address` per IP from `--first-address` on (127.0.0.2,
//! 127.0.0.3...), and each one's CREATE or JOIN goes over a connection from its own IP.
//! One socket per member means one descriptor per member, and a process holds at most its
//! open-file limit (whose hard value only a privileged process may raise): the members are
//! split over child processes of at most `--per-process` each (see [`procs`]).
//!
//! Every phase is bounded in time; the run stops by itself.

pub mod fleet;
pub mod net;
pub mod probe;
pub mod procs;

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use argh::FromArgs;
use ocm::client::control::{ControlClient, DEFAULT_TIMEOUT};
use ocm::client::{ControlError, Membership};
use ocm::protocol::{MAX_MESSAGE, Status};
use ocm::sys::rlimit::raise_nofile_limit_to;

use crate::body::{MAX_SENDER, MIN_BODY};
use crate::cli::MAX_SECONDS;
use crate::report::{Json, Percentiles, fmt_us};
use fleet::{MonoClock, PhaseFigures};
use probe::{Probe, Sample};
use procs::{CHILD_FD_MARGIN, Procs, SpawnSpec};

/// Most ephemeral ports one source IP is given (Linux's default range holds 28 232).
pub const MAX_PER_ADDRESS: usize = 28_000;
/// Most TCRP connections at once during setup.
pub const MAX_CONNECTIONS: usize = 64;
/// Highest aggregate message rate of the traffic phase: "light traffic" is the point.
pub const MAX_TRAFFIC_RATE: f64 = 1_000_000.0;

/// Scale in members: many members in many rooms on one server, each with its own UDP
/// socket, SYNC heartbeats and light traffic. Prints TCRP CREATE/JOIN per second, the
/// server's memory per room and per member (give --server-pid), its CPU for heartbeats
/// alone and with traffic, and its history memory (give --metrics). Start the server with
/// --max-members-per-ip 0 --max-rooms-per-ip 0 --msg-rate 0 and --max-rooms/--max-members
/// at least as large; scripts/scale.sh does it all.
#[derive(FromArgs, Debug, Clone, PartialEq)]
pub struct ScaleArgs {
    /// control-plane address of the server, IPv4 host:port (default: 127.0.0.1:9001)
    #[argh(option, default = "String::from(\"127.0.0.1:9001\")")]
    pub server: String,

    /// members, one UDP socket each (default: 100000)
    #[argh(option, default = "100_000")]
    pub members: usize,

    /// rooms; members are spread evenly, the first of each is its host (default: 10000)
    #[argh(option, default = "10_000")]
    pub rooms: usize,

    /// the server's process id, to read its memory (VmRSS) and CPU time from /proc
    #[argh(option)]
    pub server_pid: Option<u32>,

    /// the server's metrics endpoint host:port (its --metrics), for the history gauge
    #[argh(option)]
    pub metrics: Option<String>,

    /// the server's --history-memory in bytes, to check the history gauge against
    #[argh(option)]
    pub history_memory: Option<u64>,

    /// TCRP connections at once during setup, each on its own thread (default: 4)
    #[argh(option, default = "4")]
    pub connections: usize,

    /// members per loopback source address (default: 20000; at most 28000)
    #[argh(option, default = "20_000")]
    pub per_address: usize,

    /// the first loopback source address; the next ones follow it (default: 127.0.0.2)
    #[argh(option, default = "Ipv4Addr::new(127, 0, 0, 2)")]
    pub first_address: Ipv4Addr,

    /// seconds of the heartbeat-only phase (default: one heartbeat period, a quarter of
    /// the server's idle timeout, so that every member sends one SYNC)
    #[argh(option)]
    pub idle_seconds: Option<f64>,

    /// seconds of the traffic phase (default: 10)
    #[argh(option, default = "10.0")]
    pub traffic_seconds: f64,

    /// messages per second in each room during the traffic phase (default: 1)
    #[argh(option, default = "1.0")]
    pub room_rate: f64,

    /// message size in bytes, 28 to 3800 (default: 64)
    #[argh(option, default = "64")]
    pub size: usize,

    /// members per process (one UDP socket each: a process holds at most its open-file
    /// limit; default: as many as that limit allows, raised where the process may)
    #[argh(option)]
    pub per_process: Option<usize>,

    /// seconds to wait for every member to bind before giving up (default: 30)
    #[argh(option, default = "30.0")]
    pub bind_timeout: f64,

    /// also write the figures to this file as JSON
    #[argh(option)]
    pub json: Option<String>,

    /// no progress lines on stderr
    #[argh(switch)]
    pub quiet: bool,
}

impl ScaleArgs {
    /// Checks the values against each other and the protocol's limits.
    pub fn check(&self) -> Result<(), String> {
        if self.rooms == 0 || self.members < self.rooms {
            return Err(
                "--rooms must be at least 1 and at most --members (every room needs a host)".into(),
            );
        }
        if self.members > MAX_SENDER as usize + 1 {
            return Err(format!("--members is at most {}", MAX_SENDER as usize + 1));
        }
        if self.members.div_ceil(self.rooms) > usize::from(u16::MAX) {
            return Err("rooms that large cannot be asked for (capacity is 16 bits)".into());
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(format!("--connections must be 1 to {MAX_CONNECTIONS}"));
        }
        if !(1..=MAX_PER_ADDRESS).contains(&self.per_address) {
            return Err(format!(
                "--per-address must be 1 to {MAX_PER_ADDRESS} (ephemeral ports of one IP)"
            ));
        }
        if !self.first_address.is_loopback() {
            return Err("--first-address must be a loopback address (127.x.x.x)".into());
        }
        let addresses = self.members.div_ceil(self.per_address);
        if net::source_ip(self.first_address, addresses - 1).is_none() {
            return Err(format!(
                "{} members at {} per address need {addresses} addresses from {}: past .254; raise --per-address or lower --first-address",
                self.members, self.per_address, self.first_address
            ));
        }
        let seconds = [
            ("--idle-seconds", self.idle_seconds.unwrap_or(1.0)),
            ("--traffic-seconds", self.traffic_seconds),
            ("--bind-timeout", self.bind_timeout),
        ];
        for (name, v) in seconds {
            if !(v > 0.0 && v <= MAX_SECONDS) {
                return Err(format!("{name} must be in (0, {MAX_SECONDS}] seconds"));
            }
        }
        let rate = self.room_rate * self.rooms as f64;
        if !(self.room_rate > 0.0 && rate <= MAX_TRAFFIC_RATE) {
            return Err(format!(
                "--room-rate must be positive, and --room-rate x --rooms at most {MAX_TRAFFIC_RATE} msg/s"
            ));
        }
        if self.per_process == Some(0) {
            return Err("--per-process must be at least 1".into());
        }
        if !(MIN_BODY..=MAX_MESSAGE).contains(&self.size) {
            return Err(format!("--size must be {MIN_BODY} to {MAX_MESSAGE} bytes"));
        }
        Ok(())
    }
}

/// Who is where: member `m` is in room `m % rooms` (at position `m / rooms`; position 0
/// hosts), and sends from source IP number `m / per_address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Members.
    pub members: usize,
    /// Rooms.
    pub rooms: usize,
    /// Members per source IP.
    pub per_address: usize,
    /// The first source IP.
    pub first: Ipv4Addr,
}

impl Plan {
    /// The plan of checked arguments.
    pub fn of(a: &ScaleArgs) -> Plan {
        Plan {
            members: a.members,
            rooms: a.rooms,
            per_address: a.per_address,
            first: a.first_address,
        }
    }

    /// Room of member `m`.
    pub fn room_of(&self, m: usize) -> usize {
        m % self.rooms
    }

    /// Members of room `r`.
    pub fn room_size(&self, r: usize) -> usize {
        self.members / self.rooms + usize::from(r < self.members % self.rooms)
    }

    /// The member at position `pos` of room `r`, if the room has one there.
    pub fn member_at(&self, r: usize, pos: usize) -> Option<usize> {
        let m = pos.checked_mul(self.rooms)?.checked_add(r)?;
        (r < self.rooms && m < self.members).then_some(m)
    }

    /// Index of member `m`'s source IP.
    pub fn address_index(&self, m: usize) -> usize {
        m / self.per_address
    }

    /// Member `m`'s source IP (checked to exist by [`ScaleArgs::check`]).
    pub fn address_of(&self, m: usize) -> Ipv4Addr {
        net::source_ip(self.first, self.address_index(m)).unwrap_or(self.first)
    }

    /// How many source IPs.
    pub fn addresses(&self) -> usize {
        self.members.div_ceil(self.per_address)
    }
}

/// Everything the run measured.
#[derive(Debug, Clone, Default)]
pub struct ScaleReport {
    /// The plan.
    pub members: usize,
    /// Rooms.
    pub rooms: usize,
    /// Source IPs used.
    pub addresses: usize,
    /// Processes holding the members.
    pub processes: usize,
    /// TCRP connections at once.
    pub connections: usize,
    /// The server before anything.
    pub before: Sample,
    /// After the CREATEs.
    pub after_create: Sample,
    /// After the JOINs.
    pub after_join: Sample,
    /// After every member bound.
    pub after_bind: Sample,
    /// After the heartbeat-only phase.
    pub after_idle: Sample,
    /// After the traffic phase.
    pub after_traffic: Sample,
    /// Seconds the CREATEs took.
    pub create_s: f64,
    /// Seconds the JOINs took.
    pub join_s: f64,
    /// Members bound, and seconds it took.
    pub bound: usize,
    /// Seconds of the bind phase.
    pub bind_s: f64,
    /// The heartbeat period, seconds.
    pub heartbeat_s: f64,
    /// The heartbeat-only phase.
    pub idle: PhaseFigures,
    /// The traffic phase.
    pub traffic: PhaseFigures,
    /// The traffic phase's latency, µs.
    pub latency: Percentiles,
    /// `--history-memory` as given.
    pub history_memory: Option<u64>,
}

/// Runs the scale mode; prints its figures on stdout.
pub fn run(a: &ScaleArgs) -> Result<(), String> {
    a.check()?;
    let per_process = per_process(a)?;
    let server = resolve(&a.server)?;
    let plan = Plan::of(a);
    let probe = Probe {
        pid: a.server_pid,
        metrics: a.metrics.clone(),
    };
    let mut rep = ScaleReport {
        members: a.members,
        rooms: a.rooms,
        addresses: plan.addresses(),
        processes: a.members.div_ceil(per_process),
        connections: a.connections,
        history_memory: a.history_memory,
        ..ScaleReport::default()
    };
    rep.before = probe.sample();
    let run_id = format!("scale-{}", std::process::id());
    let names: Vec<String> = (0..a.rooms).map(|r| procs::room_name(&run_id, r)).collect();
    let say = |s: &str| {
        if !a.quiet {
            eprintln!("bench-client scale: {s}");
        }
    };
    say(&format!(
        "{} members in {} rooms on {server}, from {} source addresses ({} on), {} TCRP connections",
        a.members,
        a.rooms,
        plan.addresses(),
        a.first_address,
        a.connections
    ));

    let mut members: Vec<Option<Membership>> = vec![None; a.members];
    let t = Instant::now();
    control_stage(a, &plan, server, &names, Stage::Create, &mut members)?;
    rep.create_s = t.elapsed().as_secs_f64();
    rep.after_create = probe.sample();
    say(&format!(
        "{} rooms created in {:.2} s",
        a.rooms, rep.create_s
    ));
    let t = Instant::now();
    let result = control_stage(a, &plan, server, &names, Stage::Join, &mut members);
    rep.join_s = t.elapsed().as_secs_f64();
    rep.after_join = probe.sample();
    let result = result.and_then(|()| {
        say(&format!(
            "{} members joined in {:.2} s",
            a.members - a.rooms,
            rep.join_s
        ));
        let spec = SpawnSpec {
            plan: &plan,
            members: &members,
            per_process,
            run_id: &run_id,
            clock_base: MonoClock::raw_ns(),
            heartbeat_ns: 0,
            quiet: a.quiet,
        };
        udp_phases(a, spec, &probe, &mut rep)
    });
    leave(server, &plan, &members, &say);
    result?;
    print!("{}", table(&rep));
    if let Some(path) = &a.json {
        std::fs::write(path, format!("{}\n", json(&rep)))
            .map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    Ok(())
}

/// Members per process: `--per-process`, or as many as the open-file limit allows.
fn per_process(a: &ScaleArgs) -> Result<usize, String> {
    let want = a.per_process.unwrap_or(a.members) as u64 + CHILD_FD_MARGIN;
    // Raised here, the limit is inherited by the children.
    let fds = raise_nofile_limit_to(want).map_err(|e| format!("open-file limit: {e}"))?;
    let fits = fds.saturating_sub(CHILD_FD_MARGIN) as usize;
    match a.per_process {
        Some(n) if n > fits => Err(format!(
            "--per-process {n} does not fit the open-file limit {fds} (one UDP socket per member)"
        )),
        Some(n) => Ok(n),
        None if fits == 0 => Err(format!(
            "the open-file limit {fds} leaves no room for sockets"
        )),
        None => Ok(fits.min(a.members)),
    }
}

/// The bind, idle and traffic phases, in the member processes.
fn udp_phases(
    a: &ScaleArgs,
    mut spec: SpawnSpec<'_>,
    probe: &Probe,
    rep: &mut ScaleReport,
) -> Result<(), String> {
    let idle_timeout = spec
        .members
        .iter()
        .flatten()
        .map(|m| m.idle_timeout)
        .next()
        .ok_or("no members")?;
    // A quarter of the idle timeout, as PROTOCOL.md suggests for heartbeats.
    let heartbeat = idle_timeout / 4;
    spec.heartbeat_ns = heartbeat.as_nanos().max(1) as u64;
    rep.heartbeat_s = heartbeat.as_secs_f64();
    let mut procs = Procs::spawn(&spec)?;
    let t = Instant::now();
    rep.bound = procs.bind(Duration::from_secs_f64(a.bind_timeout))?;
    rep.bind_s = t.elapsed().as_secs_f64();
    rep.after_bind = probe.sample();
    if rep.bound < a.members {
        return Err(format!(
            "only {} of {} members bound within {} s: is the server's data plane reachable, are its --max-members and --max-members-per-ip large enough?",
            rep.bound, a.members, a.bind_timeout
        ));
    }
    let idle = a.idle_seconds.unwrap_or(rep.heartbeat_s);
    rep.idle = procs.phase("idle", &idle.to_string(), probe, None)?;
    rep.after_idle = probe.sample();
    let mut latency = crate::stats::latency_histogram();
    let args = format!("{} {} {}", a.traffic_seconds, a.room_rate, a.size);
    rep.traffic = procs.phase("traffic", &args, probe, Some(&mut latency))?;
    rep.latency = Percentiles::of(&latency);
    rep.after_traffic = probe.sample();
    Ok(())
}

/// The server's address (IPv4: the members' source addresses are).
fn resolve(server: &str) -> Result<SocketAddr, String> {
    server
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {server}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{server} has no IPv4 address"))
}

/// Which TCRP requests a stage makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Each host CREATEs its room.
    Create,
    /// Every other member JOINs.
    Join,
}

/// Makes the stage's requests over `--connections` threads (thread `t` takes the members
/// `t`, `t + T`...), each with one connection per source IP, opened when first needed.
fn control_stage(
    a: &ScaleArgs,
    plan: &Plan,
    server: SocketAddr,
    names: &[String],
    stage: Stage,
    out: &mut [Option<Membership>],
) -> Result<(), String> {
    let todo: Vec<usize> = match stage {
        Stage::Create => (0..plan.rooms).collect(),
        Stage::Join => (plan.rooms..plan.members).collect(),
    };
    let threads = a.connections.min(todo.len()).max(1);
    let results: Vec<Result<Vec<(usize, Membership)>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<usize> = todo.iter().copied().skip(t).step_by(threads).collect();
                s.spawn(move || requests(plan, server, names, stage, &mine))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a setup thread panicked".into()))
            })
            .collect()
    });
    for r in results {
        for (m, membership) in r? {
            out[m] = Some(membership);
        }
    }
    Ok(())
}

/// One setup thread's requests, in order.
fn requests(
    plan: &Plan,
    server: SocketAddr,
    names: &[String],
    stage: Stage,
    mine: &[usize],
) -> Result<Vec<(usize, Membership)>, String> {
    let mut conns: Vec<Option<ControlClient>> = (0..plan.addresses()).map(|_| None).collect();
    let mut got = Vec::with_capacity(mine.len());
    for &m in mine {
        let c = connection(&mut conns, plan, server, m)?;
        let r = plan.room_of(m);
        let (room, user) = (&names[r], format!("m{m}"));
        let result = match stage {
            Stage::Create => {
                let cap = u16::try_from(plan.room_size(r)).unwrap_or(u16::MAX);
                c.create(room, &user, b"", cap)
            }
            Stage::Join => c.join(room, &user, b""),
        };
        match result {
            Ok(membership) => got.push((m, membership)),
            Err(e) => {
                let what = if stage == Stage::Create {
                    "create"
                } else {
                    "join"
                };
                return Err(format!(
                    "cannot {what} room '{room}' as '{user}': {e}{}",
                    hint(&e)
                ));
            }
        }
    }
    Ok(got)
}

/// The thread's connection from member `m`'s source IP.
fn connection<'a>(
    conns: &'a mut [Option<ControlClient>],
    plan: &Plan,
    server: SocketAddr,
    m: usize,
) -> Result<&'a mut ControlClient, String> {
    let k = plan.address_index(m);
    let slot = conns.get_mut(k).ok_or("no such source address")?;
    if slot.is_none() {
        let from = plan.address_of(m);
        let stream = net::tcp_connect_from(from, server)
            .map_err(|e| format!("cannot connect to {server} from {from}: {e}"))?;
        let c = ControlClient::from_stream(stream, DEFAULT_TIMEOUT).map_err(|e| e.to_string())?;
        *slot = Some(c);
    }
    slot.as_mut().ok_or_else(|| "no connection".to_string())
}

fn hint(e: &ControlError) -> &'static str {
    match e.status() {
        Some(Status::ServerFull) => {
            " (a server limit: start it with --max-members-per-ip 0 --max-rooms-per-ip 0 and --max-rooms/--max-members at least --rooms/--members)"
        }
        Some(Status::RoomFull) => " (rooms are larger than the server's --max-capacity)",
        _ => "",
    }
}

/// The hosts LEAVE, closing the rooms; failures are reported, not fatal.
fn leave(server: SocketAddr, plan: &Plan, members: &[Option<Membership>], say: &dyn Fn(&str)) {
    let mut conns: Vec<Option<ControlClient>> = (0..plan.addresses()).map(|_| None).collect();
    let mut failed = 0usize;
    for (m, membership) in members.iter().enumerate().take(plan.rooms) {
        let Some(ms) = membership else { continue };
        let ok = connection(&mut conns, plan, server, m)
            .ok()
            .is_some_and(|c| c.leave(&ms.room, &ms.token).is_ok());
        failed += usize::from(!ok);
    }
    if failed > 0 {
        eprintln!("warning: {failed} rooms could not be closed");
    } else {
        say("rooms closed");
    }
}

/// Bytes as KiB or MiB.
fn fmt_bytes(b: f64) -> String {
    if b.abs() < 10.0 * 1024.0 {
        format!("{b:.0} B")
    } else if b.abs() < 10.0 * 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    }
}

/// RSS growth from `a` to `b`, bytes (signed), where both are known.
fn rss_delta(a: &Sample, b: &Sample) -> Option<f64> {
    Some(b.rss_bytes? as f64 - a.rss_bytes? as f64)
}

impl ScaleReport {
    /// Server RSS growth per room (with its host) over the CREATEs, bytes.
    pub fn bytes_per_room(&self) -> Option<f64> {
        Some(rss_delta(&self.before, &self.after_create)? / self.rooms.max(1) as f64)
    }

    /// Server RSS growth per joined member over the JOINs, bytes.
    pub fn bytes_per_member(&self) -> Option<f64> {
        let joined = self.members.saturating_sub(self.rooms).max(1);
        Some(rss_delta(&self.after_create, &self.after_join)? / joined as f64)
    }

    /// Server RSS growth per member over the bind (addresses pinned), bytes.
    pub fn bind_bytes_per_member(&self) -> Option<f64> {
        Some(rss_delta(&self.after_join, &self.after_bind)? / self.members.max(1) as f64)
    }

    /// Server RSS from the start to the end of the idle phase, per member, bytes: what an
    /// idle member costs with everything (its room's share, its address, its heartbeats).
    pub fn idle_bytes_per_member(&self) -> Option<f64> {
        Some(rss_delta(&self.before, &self.after_idle)? / self.members.max(1) as f64)
    }
}

/// The printed report.
pub fn table(r: &ScaleReport) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let rss = |s: &Sample| s.rss_bytes.map_or("-".to_string(), |b| fmt_bytes(b as f64));
    let per = |v: Option<f64>| v.map_or("-".to_string(), fmt_bytes);
    let _ = writeln!(
        t,
        "Scale: {} members in {} rooms ({}-{} per room), {} source addresses, {} member processes, SYNC heartbeat every {:.1} s",
        r.members,
        r.rooms,
        r.members / r.rooms.max(1),
        r.members.div_ceil(r.rooms.max(1)),
        r.addresses,
        r.processes,
        r.heartbeat_s
    );
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let _ = writeln!(
        t,
        "  TCRP setup    CREATE {} in {:.2} s = {:.0}/s; JOIN {} in {:.2} s = {:.0}/s ({} connections at once)",
        r.rooms,
        r.create_s,
        rate(r.rooms, r.create_s),
        r.members - r.rooms,
        r.join_s,
        rate(r.members - r.rooms, r.join_s),
        r.connections
    );
    let _ = writeln!(
        t,
        "  Bind          {} of {} members bound in {:.2} s",
        r.bound, r.members, r.bind_s
    );
    let _ = writeln!(
        t,
        "  Server RSS    before {}, after CREATE {}, JOIN {}, bind {}, idle {}, traffic {}",
        rss(&r.before),
        rss(&r.after_create),
        rss(&r.after_join),
        rss(&r.after_bind),
        rss(&r.after_idle),
        rss(&r.after_traffic)
    );
    let _ = writeln!(
        t,
        "  Memory        {} per room (with its host), {} per joined member, {} per member to bind; {} per member all told (idle, history aside)",
        per(r.bytes_per_room()),
        per(r.bytes_per_member()),
        per(r.bind_bytes_per_member()),
        per(r.idle_bytes_per_member())
    );
    phase_line(&mut t, "Idle", &r.idle);
    phase_line(&mut t, "Traffic", &r.traffic);
    let f = &r.traffic;
    let _ = writeln!(
        t,
        "  Deliveries    {} messages, expected {}, received {}, lost {} ({:.3}%); latency p50 {}, p99 {}, p99.9 {}, max {}",
        f.messages,
        f.expected,
        f.received,
        f.expected.saturating_sub(f.received),
        f.loss_pct(),
        fmt_us(r.latency.at[0]),
        fmt_us(r.latency.p99()),
        fmt_us(r.latency.at[3]),
        fmt_us(r.latency.max)
    );
    let _ = writeln!(t, "  History       {}", history_line(r));
    t
}

fn phase_line(t: &mut String, name: &str, f: &PhaseFigures) {
    use std::fmt::Write as _;
    let server = match f.server_cpu_s {
        Some((u, s)) => format!(
            "server CPU {:.2}% of one core (user {u:.2} s, sys {s:.2} s)",
            (u + s) * 100.0 / f.window_s.max(1e-9)
        ),
        None => "server CPU - (give --server-pid)".to_string(),
    };
    let _ = writeln!(
        t,
        "  {name:<13} {:.1} s: {:.0} heartbeats/s, {:.0} messages/s, {:.0} datagrams/s received; {server} over {:.1} s; bench CPU {:.0}%",
        f.seconds,
        f.heartbeats as f64 / f.seconds.max(1e-9),
        f.messages as f64 / f.seconds.max(1e-9),
        f.datagrams as f64 / f.seconds.max(1e-9),
        f.window_s,
        f.bench_cpu_s * 100.0 / f.window_s.max(1e-9)
    );
    let busy = f
        .server_busy_s
        .map_or("-".to_string(), |b| format!("{b:.2} s"));
    let drops = f.udp_drops.map_or("-".to_string(), |d| d.to_string());
    let _ = writeln!(
        t,
        "  {:<13} server loop busy {busy} (on a core or waiting for one); {drops} UDP datagrams dropped at full receive queues (machine-wide)",
        ""
    );
}

fn history_line(r: &ScaleReport) -> String {
    let Some(g) = r.after_traffic.gauges else {
        return "- (give --metrics)".to_string();
    };
    let budget = match r.history_memory {
        Some(b) if g.history_bytes <= b => format!(" of --history-memory {b}: held"),
        Some(b) => format!(" of --history-memory {b}: OVER"),
        None => String::new(),
    };
    format!(
        "{} bytes in {} events after the traffic{budget}; {} rooms, {} members bound",
        g.history_bytes, g.history_events, g.rooms, g.bound
    )
}

/// The figures as one flat JSON object.
pub fn json(r: &ScaleReport) -> String {
    let mut j = Json::default();
    j.int("members", r.members as u64);
    j.int("rooms", r.rooms as u64);
    j.int("source_addresses", r.addresses as u64);
    j.int("processes", r.processes as u64);
    j.int("connections", r.connections as u64);
    j.num("heartbeat_s", r.heartbeat_s);
    j.num("create_s", r.create_s);
    j.num("join_s", r.join_s);
    j.num("creates_per_s", r.rooms as f64 / r.create_s.max(1e-9));
    j.num(
        "joins_per_s",
        (r.members - r.rooms) as f64 / r.join_s.max(1e-9),
    );
    j.int("bound", r.bound as u64);
    j.num("bind_s", r.bind_s);
    for (k, s) in [
        ("before", &r.before),
        ("after_create", &r.after_create),
        ("after_join", &r.after_join),
        ("after_bind", &r.after_bind),
        ("after_idle", &r.after_idle),
        ("after_traffic", &r.after_traffic),
    ] {
        match s.rss_bytes {
            Some(b) => j.int(&format!("rss_{k}"), b),
            None => j.raw(&format!("rss_{k}"), "null"),
        }
    }
    let opt = |j: &mut Json, k: &str, v: Option<f64>| match v {
        Some(v) => j.num(k, v),
        None => j.raw(k, "null"),
    };
    opt(&mut j, "bytes_per_room", r.bytes_per_room());
    opt(&mut j, "bytes_per_member", r.bytes_per_member());
    opt(&mut j, "bind_bytes_per_member", r.bind_bytes_per_member());
    opt(&mut j, "idle_bytes_per_member", r.idle_bytes_per_member());
    for (k, f) in [("idle", &r.idle), ("traffic", &r.traffic)] {
        j.num(&format!("{k}_s"), f.seconds);
        j.int(&format!("{k}_heartbeats"), f.heartbeats);
        j.int(&format!("{k}_messages"), f.messages);
        j.int(&format!("{k}_datagrams"), f.datagrams);
        opt(
            &mut j,
            &format!("{k}_server_cpu_pct"),
            f.server_cpu_s
                .map(|(u, s)| (u + s) * 100.0 / f.window_s.max(1e-9)),
        );
        j.num(&format!("{k}_window_s"), f.window_s);
        opt(&mut j, &format!("{k}_server_busy_s"), f.server_busy_s);
        opt(
            &mut j,
            &format!("{k}_udp_drops"),
            f.udp_drops.map(|d| d as f64),
        );
        j.num(&format!("{k}_bench_cpu_s"), f.bench_cpu_s);
    }
    j.int("traffic_expected", r.traffic.expected);
    j.int("traffic_received", r.traffic.received);
    j.num("traffic_loss_pct", r.traffic.loss_pct());
    j.num("latency_p50_us", r.latency.at[0]);
    j.num("latency_p99_us", r.latency.p99());
    j.num("latency_p999_us", r.latency.at[3]);
    j.num("latency_max_us", r.latency.max);
    match r.after_traffic.gauges {
        Some(g) => {
            j.int("history_bytes", g.history_bytes);
            j.int("history_events", g.history_events);
        }
        None => {
            j.raw("history_bytes", "null");
            j.raw("history_events", "null");
        }
    }
    match r.history_memory {
        Some(b) => j.int("history_memory", b),
        None => j.raw("history_memory", "null"),
    }
    j.finish()
}

#[cfg(test)]
mod tests;
