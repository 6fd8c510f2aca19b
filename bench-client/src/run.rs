//! The whole run: rooms over TCRP, sockets, binding, one load step or a sweep of them,
//! the report, and leaving the rooms.

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ocm::client::control::{self, ControlClient, DEFAULT_TIMEOUT};
use ocm::client::{ControlError, Membership};
use ocm::protocol::Status;

use crate::cli::Args;
use crate::loss::LossFilter;
use crate::report::{Json, Percentiles, Setup, StepReport, fmt_us};
use crate::shape::ShapeRow;
use crate::stats::{self, Counters, ShapeStats, Shared};
use crate::sweep::Sweep;
use crate::sys::{self, CpuTime, UdpDrops};
use crate::topology::{Clock, Topology};
use crate::web::{self, KindLatency, WebLink, WebPlan};
use crate::worker::{BindStage, LoadOutcome, Path, StepPlan, User, Worker, bind_done};

/// How long after "now" a step's schedule starts, so every worker is running by then.
const STEP_LEAD_NS: u64 = 100_000_000;
/// Sends still due this long past the end of the schedule are given up.
const GIVE_UP_NS: u64 = 2_000_000_000;

/// Runs the benchmark the arguments describe; prints the table(s) on stdout.
pub fn run(args: &Args) -> Result<(), String> {
    // --shape and --room-size set --users and --rooms.
    let args = &args.resolved()?;
    args.check()?;
    if let Some(addr) = args.redis_target()? {
        return crate::redis::run(args, &addr);
    }
    if args.tls || args.ca.is_some() {
        // Every ControlClient::connect of this process speaks TLS from here on.
        let tls = control::Tls::new(args.ca.as_deref())
            .and_then(|t| t.for_host(control::host_of(&args.server)))
            .map_err(|e| e.to_string())?;
        control::use_tls(tls);
    }
    let nofile =
        sys::raise_nofile_limit().map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    if nofile < args.users as u64 + 64 {
        return Err(format!(
            "the open-file limit is {nofile}, too low for {} sockets; raise it (ulimit -n)",
            args.users
        ));
    }
    let topo = args.topology()?;
    let threads = args.thread_count();
    let run_id = format!("bench-{}", std::process::id());
    let plan = WebPlan::new(&topo, args.web);
    let web_addr = web::listener(args)?;
    let mut rooms = Rooms::create(&args.server, &topo, &run_id, &plan, web_addr)?;
    let links = std::mem::take(&mut rooms.links);
    let result = run_with_rooms(args, &topo, threads, &rooms.members, (&plan, links));
    rooms.leave();
    result
}

/// The memberships of a run; hosts leave (closing the rooms) on [`Rooms::leave`] or drop.
struct Rooms {
    members: Vec<Membership>,
    /// `--web`: the session of each web user, taken by the workers.
    links: Vec<Option<WebLink>>,
    left: bool,
}

impl Rooms {
    /// Creates the rooms (user `r` hosts room `r`) and joins every other user.
    fn create(
        server: &str,
        topo: &Topology,
        run_id: &str,
        plan: &WebPlan,
        web_addr: Option<std::net::SocketAddr>,
    ) -> Result<Rooms, String> {
        // Several servers (`--server a,b,c`: nodes of one cluster): the member at position
        // `p` of room `r` speaks to the `(p + r) mod n`-th, so each room's members are spread
        // over the nodes, and so are the rooms' hosts (their owners).
        let mut clients = server
            .split(',')
            .map(|s| ControlClient::connect(s.trim(), DEFAULT_TIMEOUT).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rooms = Rooms {
            members: Vec::with_capacity(topo.users()),
            links: Vec::with_capacity(topo.users()),
            left: false,
        };
        for u in 0..topo.users() {
            let r = topo.room_of[u] as usize;
            let room = format!("{run_id}-{r}");
            let user = format!("u{u}");
            if let (true, Some(addr)) = (plan.is_web(u), web_addr) {
                let cap = topo
                    .is_host(u)
                    .then(|| u16::try_from(topo.room_size[r]).unwrap_or(u16::MAX));
                let (m, link) = web::open_member(addr, &room, &user, cap)?;
                rooms.members.push(m);
                rooms.links.push(Some(link));
                continue;
            }
            rooms.links.push(None);
            let n = clients.len();
            let c = &mut clients[(topo.pos_in_room[u] as usize + r) % n];
            let got = if topo.is_host(u) {
                let cap = u16::try_from(topo.room_size[r]).unwrap_or(u16::MAX);
                c.create(&room, &user, b"", cap)
            } else {
                c.join(&room, &user, b"")
            };
            match got {
                Ok(m) => rooms.members.push(m),
                Err(e) => {
                    let what = if topo.is_host(u) { "create" } else { "join" };
                    return Err(format!(
                        "cannot {what} room '{room}' as '{user}': {e}{}",
                        hint(&e)
                    ));
                }
            }
        }
        Ok(rooms)
    }

    /// Hosts leave, which closes the rooms. Failures are reported, not fatal.
    fn leave(&mut self) {
        if self.left {
            return;
        }
        self.left = true;
        // Each host leaves through the server it created its room on (one connection each).
        let mut clients: Vec<(std::net::SocketAddr, ControlClient)> = Vec::new();
        for m in self.members.iter().filter(|m| m.host) {
            let i = match clients.iter().position(|(a, _)| *a == m.server) {
                Some(i) => i,
                None => match ControlClient::connect(&m.server.to_string(), DEFAULT_TIMEOUT) {
                    Ok(c) => {
                        clients.push((m.server, c));
                        clients.len() - 1
                    }
                    Err(e) => {
                        eprintln!("warning: cannot leave room '{}': {e}", m.room);
                        continue;
                    }
                },
            };
            if let Err(e) = clients[i].1.leave(&m.room, &m.token) {
                eprintln!("warning: leaving room '{}': {e}", m.room);
            }
        }
    }
}

impl Drop for Rooms {
    fn drop(&mut self) {
        self.leave();
    }
}

fn hint(e: &ControlError) -> &'static str {
    match e.status() {
        Some(Status::ServerFull) => {
            " (a server limit: start the server with --max-rooms-per-ip 0, a larger --max-members or --max-rooms, or use fewer --rooms/--users)"
        }
        Some(Status::RoomFull) => " (rooms are larger than the server's --max-capacity)",
        _ => "",
    }
}

fn run_with_rooms(
    args: &Args,
    topo: &Topology,
    threads: usize,
    members: &[Membership],
    (plan, links): (&WebPlan, Vec<Option<WebLink>>),
) -> Result<(), String> {
    let per_worker = open_users(args, topo, threads, members, links)?;
    let ports: HashSet<u16> = per_worker
        .iter()
        .flatten()
        .filter(|u| !u.is_web())
        .map(|u| u.local_port)
        .collect();
    let rcvbuf = per_worker
        .iter()
        .flatten()
        .find(|u| !u.is_web())
        .and_then(|u| u.rcvbuf().ok())
        .unwrap_or(0);
    let path = if args.v1 { Path::V1 } else { Path::V11 };
    let mut workers = per_worker
        .into_iter()
        .enumerate()
        .map(|(i, users)| Worker::new(i, users, path, LossFilter::new(args.loss, args.seed, i)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot set up the event loop: {e}"))?;
    if plan.count() > 0 {
        let per_room = plan.per_room(topo);
        workers
            .iter_mut()
            .for_each(|w| w.web_in_room = per_room.clone());
    }
    let first = members.first().ok_or_else(|| "no members".to_string())?;
    let udp = first.udp_addr;
    let heartbeat_ns = (first.idle_timeout / 4).as_nanos().max(1) as u64;
    let shared = Shared::new(threads);
    let clock = Clock::start();
    let setup = setup(args, topo, threads, path);
    if !args.quiet {
        announce(args, &setup, udp, rcvbuf);
    }

    bind_all(&mut workers, &clock, topo, &shared, args)?;
    if path == Path::V11 && shared.sum(|w| w.synced.load(Relaxed)) == 0 {
        return Err(
            "the server answered no SYNC: it speaks protocol version 1 only; run with --v1".into(),
        );
    }

    let ctx = StepCtx {
        clock,
        topo,
        shared: &shared,
        heartbeat_ns,
        ports: &ports,
        server_port: udp.port(),
        setup,
        quiet: args.quiet,
        web_users: plan.count(),
    };
    measure(&mut workers, &ctx, args)
}

/// A worker that runs load steps: OCM's ([`Worker`]) or Redis's
/// ([`crate::redis::worker::RedisWorker`]); [`step`] and [`sweep`] drive either.
pub(crate) trait Load: Send {
    /// One load step (see [`Worker::load`]).
    fn load_step(
        &mut self,
        clock: &Clock,
        topo: &Topology,
        shared: &Shared,
        plan: &StepPlan,
        heartbeat_ns: u64,
    ) -> std::io::Result<LoadOutcome>;
}

impl Load for Worker {
    fn load_step(
        &mut self,
        clock: &Clock,
        topo: &Topology,
        shared: &Shared,
        plan: &StepPlan,
        heartbeat_ns: u64,
    ) -> std::io::Result<LoadOutcome> {
        self.load(clock, topo, shared, plan, heartbeat_ns)
    }
}

/// One step at `--rate`, or `--sweep`; prints the table(s) and writes `--json`.
pub(crate) fn measure<W: Load>(
    workers: &mut [W],
    ctx: &StepCtx<'_>,
    args: &Args,
) -> Result<(), String> {
    if args.sweep {
        sweep(workers, ctx, args)
    } else {
        let report = step(workers, ctx, args, args.rate)?;
        print!("{}", report.table());
        if let Some(path) = &args.json {
            write_file(path, &report.json())?;
        }
        Ok(())
    }
}

/// Opens every member's UDP socket; user u goes to worker u % threads, in increasing
/// order (see schedule.rs).
fn open_users(
    args: &Args,
    topo: &Topology,
    threads: usize,
    members: &[Membership],
    mut links: Vec<Option<WebLink>>,
) -> Result<Vec<Vec<User>>, String> {
    let mut per_worker: Vec<Vec<User>> = (0..threads).map(|_| Vec::new()).collect();
    for (u, m) in members.iter().enumerate() {
        if let Some(link) = links.get_mut(u).and_then(Option::take) {
            let nack_ns = args.nack_retry_ms * 1_000_000;
            let user = User::web(u as u32, topo.room_of[u], m.clone(), link, nack_ns);
            per_worker[u % threads].push(user);
            continue;
        }
        let user = User::new(
            u as u32,
            topo.room_of[u],
            m.clone(),
            args.rcvbuf,
            args.nack_retry_ms * 1_000_000,
        )
        .map_err(|e| format!("cannot open a UDP socket to {}: {e}", m.udp_addr))?;
        per_worker[u % threads].push(user);
    }
    Ok(per_worker)
}

/// How the run is set up, as the report states it.
pub(crate) fn setup(args: &Args, topo: &Topology, threads: usize, path: Path) -> Setup {
    let (min, max) = topo.room_size_range();
    Setup {
        users: topo.users(),
        rooms: topo.rooms(),
        room_size_min: min,
        room_size_max: max,
        size: args.size,
        threads,
        duration_s: args.duration,
        warmup_s: args.warmup,
        path,
        loss: args.loss,
        seed: args.seed,
        nack_retry_ms: args.nack_retry_ms,
        redis: None,
    }
}

/// The run's opening line on stderr: what is measured, against which server, how.
fn announce(args: &Args, setup: &Setup, udp: std::net::SocketAddr, rcvbuf: usize) {
    eprintln!(
        "bench-client: {} users in {} rooms on {} (data plane {udp}), {} threads, socket receive buffer {rcvbuf} bytes, protocol {}{}",
        setup.users,
        setup.rooms,
        args.server,
        setup.threads,
        setup.path.name(),
        if args.loss > 0.0 {
            format!(", receive loss {} (seed {})", args.loss, args.seed)
        } else {
            String::new()
        }
    );
}

fn write_file(path: &str, text: &str) -> Result<(), String> {
    std::fs::write(path, format!("{text}\n")).map_err(|e| format!("cannot write {path}: {e}"))
}

/// Binds the hosts, then the members; fails with a clear error after `--bind-timeout`.
fn bind_all(
    workers: &mut [Worker],
    clock: &Clock,
    topo: &Topology,
    shared: &Shared,
    args: &Args,
) -> Result<(), String> {
    let started = Instant::now();
    let deadline = clock.now_ns() + (args.bind_timeout * 1e9) as u64;
    for stage in [BindStage::Hosts, BindStage::Members] {
        let results: Vec<std::io::Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = workers
                .iter_mut()
                .map(|w| s.spawn(move || w.bind(clock, topo, shared, stage, deadline)))
                .collect();
            join_all(handles)
        });
        for r in results {
            r.map_err(|e| format!("bind phase: {e}"))?;
        }
        if !bind_done(shared, topo, stage) {
            let own = shared.sum(|w| w.own_joined.load(Relaxed));
            let seen = shared.sum(|w| w.host_seen.load(Relaxed));
            return Err(format!(
                "not every member bound within {} s ({:?} stage): {own} of {} users saw their own JOINED, the hosts saw {seen} of {} JOINED; is the server's data plane reachable, and its --max-members large enough?",
                args.bind_timeout,
                stage,
                topo.users(),
                topo.users()
            ));
        }
    }
    if !args.quiet {
        eprintln!(
            "bench-client: all {} members bound in {:.2} s",
            topo.users(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// What every step of a run shares.
pub(crate) struct StepCtx<'a> {
    pub(crate) clock: Clock,
    pub(crate) topo: &'a Topology,
    pub(crate) shared: &'a Shared,
    pub(crate) heartbeat_ns: u64,
    pub(crate) ports: &'a HashSet<u16>,
    pub(crate) server_port: u16,
    pub(crate) setup: Setup,
    pub(crate) quiet: bool,
    /// `--web`: how many users are web users.
    pub(crate) web_users: usize,
}

/// One load step at `rate`: warmup, measured window, drain; returns its report.
fn step<W: Load>(
    workers: &mut [W],
    ctx: &StepCtx<'_>,
    args: &Args,
    rate: f64,
) -> Result<StepReport, String> {
    let shared = ctx.shared;
    shared.reset_step();
    // Before the schedule is fixed, so that the wall time covers the whole step even if
    // reading the drop counters below is slow on a loaded machine.
    let wall0 = Instant::now();
    let start_ns = ctx.clock.now_ns() + STEP_LEAD_NS;
    let measure_from_ns = start_ns + (args.warmup * 1e9) as u64;
    let plan = StepPlan {
        rate,
        start_ns,
        measure_from_ns,
        end_ns: measure_from_ns + (args.duration * 1e9) as u64,
        grace_ns: (args.grace * 1e9) as u64,
        give_up_ns: GIVE_UP_NS,
        size: args.size,
    };
    // A Redis run has no UDP sockets: no kernel drop counters to read.
    let udp = ctx.setup.redis.is_none();
    let read_drops = || {
        udp.then(|| UdpDrops::read(ctx.ports, ctx.server_port))
            .flatten()
    };
    let drops0 = read_drops();
    let cpu0 = CpuTime::now();
    let (clock, topo, hb) = (&ctx.clock, ctx.topo, ctx.heartbeat_ns);
    let outcomes: Vec<std::io::Result<LoadOutcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter_mut()
            .map(|w| {
                s.spawn(move || {
                    sys::tight_timer_slack();
                    w.load_step(clock, topo, shared, &plan, hb)
                })
            })
            .collect();
        progress(&handles, ctx, &plan);
        join_all(handles)
    });
    let wall_s = wall0.elapsed().as_secs_f64();
    let cpu = CpuTime::now().since(cpu0);
    let drops = match (drops0, read_drops()) {
        (Some(a), Some(b)) => Some(b.since(a)),
        _ => None,
    };
    let mut counters = Counters::default();
    let mut latency = stats::latency_histogram();
    let mut lag = stats::latency_histogram();
    let mut recovery = stats::latency_histogram();
    let mut by_kind = KindLatency::new();
    let mut by_shape = ShapeStats::default();
    let mut last_send = 0;
    for o in outcomes {
        let o = o.map_err(|e| format!("load step: {e}"))?;
        counters.add(&o.counters);
        // Same bounds everywhere, so adding cannot fail.
        let _ = latency.add(&o.latency);
        let _ = lag.add(&o.send_lag);
        let _ = recovery.add(&o.recovery);
        by_kind.add(&o.by_kind);
        by_shape.add(&o.by_shape);
        last_send = last_send.max(o.last_measured_send_ns);
    }
    let send_span_s = last_send.saturating_sub(plan.measure_from_ns) as f64 / 1e9;
    let kinds = by_kind.figures(ctx.web_users, ctx.topo.users(), &counters);
    Ok(StepReport {
        setup: ctx.setup.clone(),
        rate_asked: rate,
        rate_achieved: counters.sent_measured as f64 / send_span_s.max(args.duration),
        counters,
        latency: Percentiles::of(&latency),
        send_lag: Percentiles::of(&lag),
        recovery: Percentiles::of(&recovery),
        cpu,
        wall_s,
        drops,
        kinds,
        shapes: ShapeRow::rows(&ctx.topo.shapes, &by_shape, args.duration),
    })
}

/// Prints one line a second on stderr until every worker has finished.
fn progress<T>(
    handles: &[std::thread::ScopedJoinHandle<'_, T>],
    ctx: &StepCtx<'_>,
    plan: &StepPlan,
) {
    let shared = ctx.shared;
    let mut next = Instant::now() + Duration::from_secs(1);
    let mut last_sent = 0u64;
    let mut last_at = Instant::now();
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if Instant::now() < next {
            continue;
        }
        next += Duration::from_secs(1);
        let interval = shared.take_interval();
        if ctx.quiet {
            continue;
        }
        let now_ns = ctx.clock.now_ns();
        let phase = if now_ns < plan.measure_from_ns {
            "warmup"
        } else if now_ns < plan.end_ns {
            "load"
        } else {
            "drain"
        };
        let sent = shared.sum(|w| w.sent.load(Relaxed));
        let delivered = shared.sum(|w| w.delivered.load(Relaxed));
        let missing: i64 = shared.workers.iter().map(|w| w.missing.load(Relaxed)).sum();
        let missing = missing.max(0) as u64;
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        let per_s = (sent - last_sent.min(sent)) as f64 / dt;
        last_sent = sent;
        last_at = Instant::now();
        let loss = if delivered + missing == 0 {
            0.0
        } else {
            missing as f64 * 100.0 / (delivered + missing) as f64
        };
        let p99 = if interval.is_empty() {
            "-".to_string()
        } else {
            fmt_us(interval.value_at_quantile(0.99) as f64 / 1e3)
        };
        let t = now_ns.saturating_sub(plan.start_ns) as f64 / 1e9;
        let mut recovery = String::new();
        if ctx.setup.loss > 0.0 {
            let dropped = shared.sum(|w| w.lost_datagrams.load(Relaxed));
            recovery.push_str(&format!("  dropped {dropped}"));
        }
        if ctx.setup.path == Path::V11 {
            let recovered = shared.sum(|w| w.recovered.load(Relaxed));
            let unrecovered = shared.sum(|w| w.unrecovered.load(Relaxed));
            recovery.push_str(&format!(
                "  recovered {recovered}  unrecovered {unrecovered}"
            ));
        }
        eprintln!(
            "[{t:5.1}s {phase:>6}] sent {sent} ({per_s:.0}/s)  delivered {delivered}  missing {missing} ({loss:.3}%){recovery}  p99 {p99}"
        );
        let _ = std::io::stderr().flush();
    }
}

/// `--sweep`: steps until the rate is no longer sustainable; prints each step and the best.
fn sweep<W: Load>(workers: &mut [W], ctx: &StepCtx<'_>, args: &Args) -> Result<(), String> {
    let mut sw = Sweep::new(args.rate, args.sweep_steps);
    let mut steps: Vec<SweepStep> = Vec::new();
    print_sweep_header(args);
    loop {
        let rate = sw.current();
        let r = step(workers, ctx, args, rate)?;
        let v = r
            .verdict(args.p99_bound_ms)
            .and_then(|()| r.p50_verdict(args.p50_bound_ms));
        print_sweep_row(rate, &r, &v);
        let passed = v.is_ok();
        steps.push((r, v));
        if sw.record(passed).is_none() {
            break;
        }
    }
    let best = steps
        .iter()
        .filter(|(_, v)| v.is_ok())
        .max_by(|a, b| a.0.rate_asked.total_cmp(&b.0.rate_asked));
    match best {
        Some((r, _)) => {
            println!(
                "Highest sustainable rate: {:.0} msg/s = {:.0} deliveries/s (p99 {}, loss {:.3}%)",
                r.rate_asked,
                r.deliveries_per_s(),
                fmt_us(r.latency.p99()),
                r.loss_pct()
            );
            print!("{}", r.table());
        }
        None => println!("No rate tried was sustainable."),
    }
    if let Some(path) = &args.json {
        write_file(path, &sweep_json(args, best, &steps))?;
    }
    Ok(())
}

/// One step of a sweep: its report, and whether it passed (or why not).
type SweepStep = (StepReport, Result<(), String>);

/// The sweep's title and the header of its one-line-per-step table.
fn print_sweep_header(args: &Args) {
    let p50 = args
        .p50_bound_ms
        .map_or_else(String::new, |b| format!(" and p50 <= {b} ms"));
    println!(
        "Sweep: {} s steps (after {} s warmup), pass = loss <= 0.1% and p99 <= {} ms{p50}",
        args.duration, args.warmup, args.p99_bound_ms
    );
    println!(
        "  {:>10} {:>10} {:>12} {:>8} {:>9} {:>9} {:>9} {:>6} {:>5}  verdict",
        "rate", "achieved", "deliveries/s", "loss%", "p50", "p99", "max", "ev/dg", "cpu%"
    );
}

/// One step's line of the sweep table.
fn print_sweep_row(rate: f64, r: &StepReport, v: &Result<(), String>) {
    println!(
        "  {:>10.0} {:>10.0} {:>12.0} {:>8.3} {:>9} {:>9} {:>9} {:>6.2} {:>5.0}  {}",
        rate,
        r.rate_achieved,
        r.deliveries_per_s(),
        r.loss_pct(),
        fmt_us(r.latency.at[0]),
        fmt_us(r.latency.p99()),
        fmt_us(r.latency.max),
        r.events_per_datagram(),
        r.cpu_pct(),
        match v {
            Ok(()) => "ok".to_string(),
            Err(why) => why.clone(),
        }
    );
}

/// `--json` of a sweep: the best rate, and every step's verdict and full report.
fn sweep_json(args: &Args, best: Option<&SweepStep>, steps: &[SweepStep]) -> String {
    let mut j = Json::default();
    j.raw("sweep", "true");
    j.num("p99_bound_ms", args.p99_bound_ms);
    match args.p50_bound_ms {
        Some(b) => j.num("p50_bound_ms", b),
        None => j.raw("p50_bound_ms", "null"),
    }
    match best {
        Some((r, _)) => {
            j.num("best_rate", r.rate_asked);
            j.num("best_deliveries_per_s", r.deliveries_per_s());
        }
        None => {
            j.raw("best_rate", "null");
            j.raw("best_deliveries_per_s", "null");
        }
    }
    let list: Vec<String> = steps
        .iter()
        .map(|(r, v)| {
            let mut s = Json::default();
            s.raw("passed", if v.is_ok() { "true" } else { "false" });
            s.str("verdict", v.as_ref().err().map_or("ok", |w| w.as_str()));
            s.raw("report", &r.json());
            s.finish()
        })
        .collect();
    j.raw("steps", &format!("[{}]", list.join(",")));
    j.finish()
}

/// Joins worker threads, turning a panicked worker into an error.
fn join_all<T>(
    handles: Vec<std::thread::ScopedJoinHandle<'_, std::io::Result<T>>>,
) -> Vec<std::io::Result<T>> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("worker panicked")))
        })
        .collect()
}
