//! Command-line arguments and their checks.

use argh::FromArgs;
use ocm::protocol::MAX_MESSAGE;

use crate::body::{MAX_SENDER, MIN_BODY};
use crate::loss::DEFAULT_SEED;
use crate::shape::{self, Shape};
use crate::topology::Topology;

/// Open-loop latency and throughput benchmark for ocm-server. Run the server with
/// `--msg-rate 0` (no flood control), or its rate limit is what you measure.
/// `bench-client scale --help`: the other mode, many members on one server (memory, CPU).
#[derive(FromArgs, Debug, Clone, PartialEq)]
pub struct Args {
    /// control-plane address of the server, host:port (default: 127.0.0.1:9001); several,
    /// comma-separated, spread each room's members over nodes of one cluster (--cluster)
    #[argh(option, default = "String::from(\"127.0.0.1:9001\")")]
    pub server: String,

    /// simulated users, one UDP socket each (default: 500)
    #[argh(option, default = "500")]
    pub users: usize,

    /// rooms; the users are spread evenly, the first member of each is its host
    /// (default: 20)
    #[argh(option, default = "20")]
    pub rooms: usize,

    /// rooms of this many members, --users / N of them (replaces --rooms); the report adds
    /// its figures as one shape
    #[argh(option)]
    pub room_size: Option<usize>,

    /// a mix of room sizes measured in one run, SIZExCOUNT[,SIZExCOUNT...], e.g.
    /// 2x100,10x20,25x20,250x2,2000x1 (replaces --users and --rooms); every member sends
    /// at the same rate, and the report gives each shape's figures and the total
    #[argh(option)]
    pub shape: Option<String>,

    /// aggregate messages per second over all users, on a fixed schedule (default: 20000);
    /// with --sweep, the first rate tried
    #[argh(option, default = "20000.0")]
    pub rate: f64,

    /// seconds of measured load, after the warmup (default: 10)
    #[argh(option, default = "10.0")]
    pub duration: f64,

    /// message size in bytes, 28 to 3800 (default: 64)
    #[argh(option, default = "64")]
    pub size: usize,

    /// seconds of load before measuring; what is sent then is not counted (default: 1)
    #[argh(option, default = "1.0")]
    pub warmup: f64,

    /// also write the figures to this file as JSON
    #[argh(option)]
    pub json: Option<String>,

    /// worker threads, each sending and receiving for a slice of the users (default: the
    /// number of cores, at least 2)
    #[argh(option)]
    pub threads: Option<usize>,

    /// step the rate up (doubling, then bisecting) until loss passes 0.1% or p99 passes
    /// --p99-bound-ms, and print the highest sustainable rate
    #[argh(switch)]
    pub sweep: bool,

    /// p99 latency bound for --sweep, in ms (default: 10)
    #[argh(option, default = "10.0")]
    pub p99_bound_ms: f64,

    /// most steps of --sweep (default: 12)
    #[argh(option, default = "12")]
    pub sweep_steps: u32,

    /// seconds to wait after the last send for deliveries still in flight (default: 1)
    #[argh(option, default = "1.0")]
    pub grace: f64,

    /// seconds to wait for every member to bind (with a redis:// --target: to connect and
    /// subscribe) before giving up (default: 10)
    #[argh(option, default = "10.0")]
    pub bind_timeout: f64,

    /// receive buffer of each UDP socket in bytes, so that a moment without CPU does not
    /// drop deliveries at the bench's side; 0 keeps the kernel's default (default: 1048576)
    #[argh(option, default = "1 << 20")]
    pub rcvbuf: usize,

    /// no progress lines on stderr
    #[argh(switch)]
    pub quiet: bool,

    /// drop each datagram a socket receives with this probability, before it is read, as a
    /// lossy network would (0 to 0.9; default: 0); the v1.1 path recovers them with NACK
    #[argh(option, default = "0.0")]
    pub loss: f64,

    /// seed of --loss (default: a fixed one, so runs with the same flags lose alike)
    #[argh(option, default = "DEFAULT_SEED")]
    pub seed: u64,

    /// the version 1 path: plain chat datagrams, empty heartbeats, no recovery (default: the
    /// v1.1 path: SEND with ClientSeq, SYNC heartbeats, gaps recovered with NACK)
    #[argh(switch)]
    pub v1: bool,

    /// v1.1: ms before an unanswered NACK is repeated the first time, doubling after
    /// (default: 50, as PROTOCOL.md §5.4 suggests; 1 to 1000)
    #[argh(option, default = "50")]
    pub nack_retry_ms: u64,

    /// control connections over TLS (a server with --tls-cert), checked against the
    /// system's trusted CAs and the host in --server; the load itself stays UDP
    #[argh(switch)]
    pub tls: bool,

    /// also trust the CA certificate(s) in this PEM file; implies --tls
    #[argh(option)]
    pub ca: Option<std::path::PathBuf>,

    /// this many of the users reach the server over WebSocket (its web listener,
    /// PROTOCOL.md §6) instead of UDP, spread over the rooms; the report shows both kinds
    /// side by side (default: 0)
    #[argh(option, default = "0")]
    pub web: usize,

    /// the server's web listener, host:port (default: the host of --server, port 9080)
    #[argh(option)]
    pub web_server: Option<String>,

    /// what to measure: ocm, the OCM server of --server (default), or redis://HOST:PORT for
    /// the same workload over Redis pub/sub (RESP3, Redis 6 or later; one connection per
    /// user)
    #[argh(option)]
    pub target: Option<String>,

    /// with --sweep, a step also fails when its p50 latency passes this many ms (default:
    /// p50 not checked)
    #[argh(option)]
    pub p50_bound_ms: Option<f64>,
}

/// Highest `--loss`: past it a run measures little but retries.
pub const MAX_LOSS: f64 = 0.9;

/// Most worker threads.
pub const MAX_THREADS: usize = 64;
/// Longest measured duration or warmup, seconds (every run is bounded).
pub const MAX_SECONDS: f64 = 3600.0;

impl Args {
    /// `--shape` or `--room-size` as shapes; `None` for plain `--users`/`--rooms`.
    pub fn shapes(&self) -> Result<Option<Vec<Shape>>, String> {
        match (&self.shape, self.room_size) {
            (Some(_), Some(_)) => Err("give --shape or --room-size, not both".into()),
            (Some(mix), None) => shape::parse_mix(mix).map(Some).map_err(|e| e.to_string()),
            (None, Some(n)) => shape::uniform(self.users, n)
                .map(Some)
                .map_err(|e| e.to_string()),
            (None, None) => Ok(None),
        }
    }

    /// The arguments with `--users` and `--rooms` set from `--shape` or `--room-size`
    /// (as given without them), so that every other check and count sees the real run.
    pub fn resolved(&self) -> Result<Args, String> {
        let mut a = self.clone();
        if let Some(shapes) = self.shapes()? {
            let users = shape::total_users(&shapes);
            if users > MAX_SENDER as u64 + 1 {
                return Err(format!(
                    "--shape makes {users} users; at most {}",
                    MAX_SENDER as u64 + 1
                ));
            }
            a.users = users as usize;
            a.rooms = shape::total_rooms(&shapes) as usize;
        }
        Ok(a)
    }

    /// Who is in which room: the shapes' rooms, or `--users` spread over `--rooms`.
    pub fn topology(&self) -> Result<Topology, String> {
        Ok(match self.shapes()? {
            Some(shapes) => Topology::from_shapes(&shapes),
            None => Topology::new(self.users, self.rooms),
        })
    }

    /// Checks the values against each other and the protocol's limits.
    pub fn check(&self) -> Result<(), String> {
        if self.users == 0 || self.rooms == 0 {
            return Err("--users and --rooms must be at least 1".into());
        }
        if self.rooms > self.users {
            return Err(format!(
                "--rooms {} is more than --users {}: every room needs a host",
                self.rooms, self.users
            ));
        }
        if self.users > MAX_SENDER as usize + 1 {
            return Err(format!("--users is at most {}", MAX_SENDER as usize + 1));
        }
        if self.users.div_ceil(self.rooms) > usize::from(u16::MAX) {
            return Err("rooms that large cannot be asked for (capacity is 16 bits)".into());
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err("--rate must be a positive number of messages per second".into());
        }
        if !(self.duration > 0.0 && self.duration <= MAX_SECONDS) {
            return Err(format!("--duration must be in (0, {MAX_SECONDS}] seconds"));
        }
        for (name, v) in [
            ("--warmup", self.warmup),
            ("--grace", self.grace),
            ("--bind-timeout", self.bind_timeout),
        ] {
            if !(0.0..=MAX_SECONDS).contains(&v) {
                return Err(format!("{name} must be in [0, {MAX_SECONDS}] seconds"));
            }
        }
        if !(MIN_BODY..=MAX_MESSAGE).contains(&self.size) {
            return Err(format!(
                "--size must be {MIN_BODY} to {MAX_MESSAGE} bytes ({MIN_BODY} hold the sender, sequence number and send time)"
            ));
        }
        if let Some(t) = self.threads
            && !(1..=MAX_THREADS).contains(&t)
        {
            return Err(format!("--threads must be 1 to {MAX_THREADS}"));
        }
        if !(self.p99_bound_ms.is_finite() && self.p99_bound_ms > 0.0) {
            return Err("--p99-bound-ms must be positive".into());
        }
        if !(0.0..=MAX_LOSS).contains(&self.loss) {
            return Err(format!("--loss must be a probability from 0 to {MAX_LOSS}"));
        }
        if !(1..=1000).contains(&self.nack_retry_ms) {
            return Err("--nack-retry-ms must be 1 to 1000".into());
        }
        if self.web > self.users {
            return Err(format!(
                "--web {} is more than --users {}",
                self.web, self.users
            ));
        }
        if self.sweep && self.sweep_steps == 0 {
            return Err("--sweep-steps must be at least 1".into());
        }
        if let Some(b) = self.p50_bound_ms
            && !(b.is_finite() && b > 0.0)
        {
            return Err("--p50-bound-ms must be positive".into());
        }
        if self.redis_target()?.is_some() {
            for (set, flag) in [
                (self.web > 0, "--web"),
                (self.tls || self.ca.is_some(), "--tls and --ca"),
                (self.loss > 0.0, "--loss"),
                (self.v1, "--v1"),
                // Per-shape figures are the OCM worker's (rooms of one size: --room-size).
                (self.shape.is_some(), "--shape"),
            ] {
                if set {
                    return Err(format!(
                        "{flag} is OCM's: not supported with a redis:// --target"
                    ));
                }
            }
        }
        Ok(())
    }

    /// `--target`: the Redis server's `HOST:PORT`, or None for the OCM server of
    /// `--server`.
    pub fn redis_target(&self) -> Result<Option<String>, String> {
        match self.target.as_deref() {
            None | Some("ocm") => Ok(None),
            Some(t) => crate::redis::address(t).map(Some),
        }
    }

    /// Worker threads to use: as asked, else the number of cores (at least 2); never more
    /// than users.
    pub fn thread_count(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        self.threads
            .unwrap_or(cores.max(2))
            .clamp(1, MAX_THREADS)
            .min(self.users.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::from_args(&["bench-client"], args).map_err(|e| e.output)
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.server, "127.0.0.1:9001");
        assert_eq!((a.users, a.rooms, a.size), (500, 20, 64));
        assert_eq!(a.rate, 20000.0);
        assert_eq!(a.duration, 10.0);
        assert!(!a.sweep);
        assert!(!a.v1, "v1.1 is the default path");
        assert_eq!(
            (a.web, a.web_server.as_deref()),
            (0, None),
            "no web users by default"
        );
        assert_eq!((a.loss, a.seed), (0.0, DEFAULT_SEED));
        assert_eq!(a.check(), Ok(()));
        assert!(a.thread_count() >= 2);
    }

    #[test]
    fn the_documented_command_line() {
        let a = parse(&[
            "--server",
            "127.0.0.1:9001",
            "--users",
            "500",
            "--rooms",
            "20",
            "--rate",
            "20000",
            "--duration",
            "10",
            "--size",
            "64",
            "--warmup",
            "2",
            "--json",
            "out.json",
            "--threads",
            "3",
            "--sweep",
        ])
        .unwrap();
        assert_eq!(a.json.as_deref(), Some("out.json"));
        assert_eq!(a.thread_count(), 3);
        assert!(a.sweep);
        assert_eq!(a.check(), Ok(()));
    }

    #[test]
    fn bad_values_are_explained() {
        let check = |args: &[&str]| parse(args).unwrap().check().unwrap_err();
        assert!(check(&["--rooms", "0"]).contains("at least 1"));
        assert!(check(&["--users", "5", "--rooms", "6"]).contains("host"));
        assert!(check(&["--rate", "0"]).contains("--rate"));
        assert!(check(&["--size", "10"]).contains("--size"));
        assert!(check(&["--size", "3801"]).contains("--size"));
        assert!(check(&["--duration", "0"]).contains("--duration"));
        assert!(check(&["--threads", "0"]).contains("--threads"));
        assert!(check(&["--loss", "0.95"]).contains("--loss"));
        assert!(check(&["--loss", "-0.1"]).contains("--loss"));
        assert!(check(&["--loss", "NaN"]).contains("--loss"));
        assert!(check(&["--nack-retry-ms", "0"]).contains("--nack-retry-ms"));
        assert!(parse(&["--rate", "fast"]).is_err());
        assert!(check(&["--users", "6", "--rooms", "2", "--web", "7"]).contains("--web"));
    }

    #[test]
    fn loss_seed_and_path() {
        let a = parse(&["--loss", "0.05", "--seed", "7", "--v1"]).unwrap();
        assert_eq!((a.loss, a.seed, a.v1), (0.05, 7, true));
        assert_eq!(a.check(), Ok(()));
    }

    #[test]
    fn redis_target_and_p50_bound() {
        let a = parse(&["--target", "redis://127.0.0.1:6379", "--p50-bound-ms", "10"]).unwrap();
        assert_eq!(a.check(), Ok(()));
        assert_eq!(a.redis_target(), Ok(Some("127.0.0.1:6379".into())));
        assert_eq!(a.p50_bound_ms, Some(10.0));
        assert_eq!(
            parse(&["--target", "ocm"]).unwrap().redis_target(),
            Ok(None)
        );
        assert_eq!(parse(&[]).unwrap().redis_target(), Ok(None));
        let check = |args: &[&str]| parse(args).unwrap().check().unwrap_err();
        assert!(check(&["--target", "http://x:1"]).contains("redis://"));
        assert!(check(&["--target", "redis://h:1", "--loss", "0.1"]).contains("--loss"));
        assert!(check(&["--target", "redis://h:1", "--tls"]).contains("--tls"));
        assert!(check(&["--target", "redis://h:1", "--v1"]).contains("--v1"));
        assert!(check(&["--target", "redis://h:1", "--shape", "2x4"]).contains("--shape"));
        assert!(check(&["--p50-bound-ms", "0"]).contains("--p50-bound-ms"));
    }

    #[test]
    fn shapes_set_users_and_rooms() {
        let a = parse(&["--shape", "2x100,10x20,2000x1"]).unwrap();
        let r = a.resolved().unwrap();
        assert_eq!((r.users, r.rooms), (200 + 200 + 2000, 121));
        assert_eq!(r.check(), Ok(()));
        let t = r.topology().unwrap();
        assert_eq!((t.users(), t.rooms(), t.shapes.len()), (2400, 121, 3));
        assert_eq!(t.room_size_range(), (2, 2000));

        let a = parse(&["--users", "500", "--room-size", "25"]).unwrap();
        let r = a.resolved().unwrap();
        assert_eq!((r.users, r.rooms), (500, 20));
        assert_eq!(r.topology().unwrap().room_size, vec![25; 20]);

        // Without either, nothing changes.
        let a = parse(&["--users", "10", "--rooms", "4"]).unwrap();
        assert_eq!(a.resolved().unwrap(), a);
        assert!(a.topology().unwrap().shapes.is_empty());
    }

    #[test]
    fn bad_shapes_are_explained() {
        let resolve = |args: &[&str]| parse(args).unwrap().resolved().unwrap_err();
        assert!(resolve(&["--shape", "2x3", "--room-size", "2"]).contains("not both"));
        assert!(resolve(&["--shape", "25by20"]).contains("SIZExCOUNT"));
        assert!(resolve(&["--users", "500", "--room-size", "30"]).contains("divide"));
        assert!(resolve(&["--shape", "65535x65535"]).contains("at most"));
        assert!(parse(&["--room-size", "ten"]).is_err());
    }

    #[test]
    fn threads_never_exceed_users() {
        let a = parse(&["--users", "1", "--rooms", "1", "--threads", "8"]).unwrap();
        assert_eq!(a.thread_count(), 1);
    }
}
