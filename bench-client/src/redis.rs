//! `--target redis://HOST:PORT`: the same workload over Redis pub/sub, so OCM's figures can
//! stand next to those of what users would pick instead, measured the same way.
//!
//! Each user is one TCP connection that says `HELLO 3` (RESP3), SUBSCRIBEs to its room's
//! channel and PUBLISHes its messages on that same connection. One connection per user,
//! not two (a subscriber and a publisher): RESP3 lets a subscribed connection issue other
//! commands (Redis 6 and later), one connection is what an OCM user has (one socket), and
//! a second one would double the connections Redis serves and the bench polls without
//! changing the work per delivery. A publisher subscribed to its own channel gets its own
//! message back, as an OCM member gets its echo: deliveries = messages × members on both.
//!
//! Everything else is the OCM run's: the topology, the stamped body ([`crate::body`]), the
//! open-loop schedule, the latency from intended send time to receipt in an hdrhistogram,
//! per-sender order and loss from the stamp ([`crate::order`]: Redis has no Seq, as OCM's
//! v1 path has none), the report, its JSON and `--sweep`.
//!
//! ```text
//!   schedule ──► stamp ──► PUBLISH, queued per connection ──► one write ──► Redis
//!                                                                           │ fan-out
//!   histogram ◄── latency ◄── order check ◄── >3 message <channel> <body> ◄─┘ (every subscriber)
//! ```
//!
//! ## Layout
//!
//! * [`resp`]: the RESP3 command encoder and frame parser (pure, no allocation).
//! * [`link`]: one connection: subscribed blocking with bounded waits, then non-blocking
//!   with bounded buffers (what Redis cannot take in time is dropped and counted).
//! * [`worker`]: a worker thread's users and its mio loop.

pub mod link;
pub mod resp;
pub mod worker;

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::cli::Args;
use crate::run::{self, StepCtx};
use crate::stats::Shared;
use crate::sys;
use crate::topology::{Clock, Topology};
use crate::worker::Path;
use worker::{RedisUser, RedisWorker};

/// How a Redis target is written.
pub const SCHEME: &str = "redis://";

/// The `HOST:PORT` of `redis://HOST:PORT` (a trailing `/` allowed), or what is wrong with it.
pub fn address(target: &str) -> Result<String, String> {
    let bad = |why: &str| format!("--target '{target}': {why}; expected redis://HOST:PORT");
    let rest = target
        .strip_prefix(SCHEME)
        .ok_or_else(|| bad("not a redis:// address"))?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains(['/', '@', '?']) {
        return Err(bad("no user, database or options are supported"));
    }
    let (host, port) = hostport.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() || host == "[]" {
        return Err(bad("no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(hostport.to_string()),
        _ => Err(bad("the port is not 1 to 65535")),
    }
}

/// Runs the benchmark against Redis at `addr` (`HOST:PORT`); prints the table(s) on stdout.
pub fn run(args: &Args, addr: &str) -> Result<(), String> {
    let nofile =
        sys::raise_nofile_limit().map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    if nofile < args.users as u64 + 64 {
        return Err(format!(
            "the open-file limit is {nofile}, too low for {} connections; raise it (ulimit -n)",
            args.users
        ));
    }
    let server: SocketAddr = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve the Redis address '{addr}'"))?;
    let topo = Topology::new(args.users, args.rooms);
    let threads = args.thread_count();
    // A run's channels are its own, as an OCM run's room names are.
    let run_id = format!("bench-{}", std::process::id());
    let channels: Vec<Vec<u8>> = (0..topo.users())
        .map(|u| format!("{run_id}-{}", topo.room_of[u]).into_bytes())
        .collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.bind_timeout);
    let links = link::open_all(server, &channels, deadline)?;
    if !args.quiet {
        eprintln!(
            "bench-client: all {} users subscribed in {:.2} s",
            topo.users(),
            started.elapsed().as_secs_f64()
        );
    }
    let mut per_worker: Vec<Vec<RedisUser>> = (0..threads).map(|_| Vec::new()).collect();
    for (u, (link, channel)) in links.into_iter().zip(channels).enumerate() {
        let user = RedisUser::new(u as u32, topo.room_of[u], channel, link);
        per_worker[u % threads].push(user);
    }
    let mut workers = per_worker
        .into_iter()
        .enumerate()
        .map(|(i, users)| RedisWorker::new(i, users))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot set up the event loop: {e}"))?;
    let mut setup = run::setup(args, &topo, threads, Path::V1);
    setup.redis = Some(addr.to_string());
    if !args.quiet {
        eprintln!(
            "bench-client: {} users in {} rooms on Redis at {server} (RESP3 pub/sub, one connection per user), {threads} threads",
            setup.users, setup.rooms
        );
    }
    let shared = Shared::new(threads);
    let no_ports = HashSet::new();
    let ctx = StepCtx {
        clock: Clock::start(),
        topo: &topo,
        shared: &shared,
        // Redis forgets no subscriber that stays connected: no heartbeats.
        heartbeat_ns: u64::MAX,
        ports: &no_ports,
        server_port: 0,
        setup,
        quiet: args.quiet,
        web_users: 0,
    };
    run::measure(&mut workers, &ctx, args)
}

impl run::Load for RedisWorker {
    fn load_step(
        &mut self,
        clock: &Clock,
        topo: &Topology,
        shared: &Shared,
        plan: &crate::worker::StepPlan,
        _heartbeat_ns: u64,
    ) -> std::io::Result<crate::worker::LoadOutcome> {
        self.load(clock, topo, shared, plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            address("redis://127.0.0.1:6379"),
            Ok("127.0.0.1:6379".into())
        );
        assert_eq!(
            address("redis://localhost:7000/"),
            Ok("localhost:7000".into())
        );
        assert_eq!(address("redis://[::1]:6379"), Ok("[::1]:6379".into()));
        for (bad, why) in [
            ("127.0.0.1:6379", "not a redis://"),
            ("rediss://h:1", "not a redis://"),
            ("redis://h", "no port"),
            ("redis://:6379", "no host"),
            ("redis://h:0", "port"),
            ("redis://h:65536", "port"),
            ("redis://h:x", "port"),
            ("redis://h:6379/0", "database"),
            ("redis://u:p@h:6379", "user"),
        ] {
            let e = address(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
