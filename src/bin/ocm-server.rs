//! `ocm-server`: parse flags, set up logging, bind, and run the relay.
//!
//! Flag defaults are read from [`Config::default`] and [`Limits::default`], the one place
//! they are written; `--help` states them in words (argh shows none by itself), and a test
//! checks that those words match.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use std::sync::Arc;

use ocm::server::relay::MAX_HOLD_LIMIT;
use ocm::server::tls;
use ocm::server::web::{self, http::Site};
use ocm::server::{Config, Limits, Server};
use ocm::sys;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

/// The TCP port when none is given (PROTOCOL.md's default port).
const DEFAULT_PORT: u16 = 9001;
/// Exit status when the server cannot run at all (sockets, the event loop).
const EXIT_FAILED: u8 = 1;
/// Exit status for settings that cannot work (the TLS files): nothing was started.
const EXIT_CONFIG: u8 = 2;

/// `--idle-timeout`'s default, in the flag's unit (whole seconds).
fn default_idle_timeout() -> u16 {
    u16::try_from(Config::default().idle_timeout.as_secs()).unwrap_or(u16::MAX)
}

/// OCM chat relay: rooms over TCP (TCRP), chat over UDP, and both over WebSocket for
/// browsers (--web).
#[derive(FromArgs, Debug)]
struct Args {
    /// TCP port, and the UDP port unless --udp-port is given; 0 picks free ports
    /// (default: 9001)
    #[argh(option, default = "DEFAULT_PORT")]
    port: u16,

    /// UDP port of the data plane (default: the same as --port)
    #[argh(option)]
    udp_port: Option<u16>,

    /// address to listen on; 0.0.0.0 and :: listen on every interface
    /// (default: 127.0.0.1)
    #[argh(option, default = "IpAddr::from([127, 0, 0, 1])")]
    bind: IpAddr,

    /// seconds of silence after which a member is dropped, 1-65535 (default: 60)
    #[argh(option, default = "default_idle_timeout()")]
    idle_timeout: u16,

    /// capacity of a room created with capacity 0 (default: 32)
    #[argh(option, default = "Config::default().default_capacity")]
    default_capacity: u16,

    /// largest room, host included; larger requests are lowered (default: 256)
    #[argh(option, default = "Config::default().max_capacity")]
    max_capacity: u16,

    /// most rooms at once (default: 10000)
    #[argh(option, default = "Config::default().max_rooms")]
    max_rooms: usize,

    /// most members at once over all rooms (default: 100000)
    #[argh(option, default = "Config::default().max_members")]
    max_members: usize,

    /// most open TCP connections (default: 4096)
    #[argh(option, default = "Limits::default().max_connections")]
    max_connections: usize,

    /// chat messages per second per member; 0 turns the limit off (default: 20)
    #[argh(option, default = "Config::default().msg_rate")]
    msg_rate: u32,

    /// burst of chat messages per member; 0 turns the limit off (default: 40)
    #[argh(option, default = "Config::default().msg_burst")]
    msg_burst: u32,

    /// most open TCP connections from one IP; 0 turns the limit off (default: 64)
    #[argh(option, default = "Limits::default().max_connections_per_ip")]
    max_connections_per_ip: u32,

    /// most members (in all rooms) whose tokens went to one IP; 0 turns the limit off
    /// (default: 1024)
    #[argh(option, default = "Config::default().max_members_per_ip")]
    max_members_per_ip: u32,

    /// most rooms created from one IP at once; 0 turns the limit off (default: 16)
    #[argh(option, default = "Config::default().max_rooms_per_ip")]
    max_rooms_per_ip: u32,

    /// most events packed into one server datagram; 1 turns coalescing off
    /// (default: 64)
    #[argh(option, default = "Config::default().batch_max")]
    batch_max: usize,

    /// longest a busy room holds its outbox while the server is busy, in microseconds, so
    /// datagrams fill as load rises (adaptive: nothing is held on an idle server, nor in a
    /// quiet room); 0 sends every outbox at the end of its wake-up; at most 50000
    /// (default: 1000)
    #[argh(option, default = "default_max_hold_us()")]
    max_hold_us: u64,

    /// events each room keeps for NACK (v1.1 history); 0 keeps none (default: 1024)
    #[argh(option, default = "Config::default().history")]
    history: usize,

    /// event bytes all rooms' histories hold together; past it the largest shed first
    /// (default: 268435456)
    #[argh(option, default = "Config::default().history_memory")]
    history_memory: usize,

    /// bytes per second refilling a member's budget for NACK answers; 0 turns the limit off
    /// (default: 1048576)
    #[argh(option, default = "Config::default().repair_rate")]
    repair_rate: u64,

    /// bytes of NACK answers a member may receive at once; 0 turns the limit off
    /// (default: 4194304)
    #[argh(option, default = "Config::default().repair_burst")]
    repair_burst: u64,

    /// serve Prometheus metrics over HTTP at ADDR:PORT (GET /metrics); off unless given
    #[argh(option)]
    metrics: Option<SocketAddr>,

    /// serve the browser page and WebSocket sessions at ADDR:PORT, or "off"
    /// (default: the --bind address, port 9080; a free port with --port 0)
    #[argh(option)]
    web: Option<WebAddr>,

    /// an origin, as browsers send it (scheme, host and port if not the default),
    /// whose pages may open WebSocket sessions besides the server's own; repeatable
    #[argh(option)]
    web_origin: Vec<String>,

    /// PEM certificate chain (leaf first); with --tls-key, the TCRP listener speaks TLS
    /// only and the web listener HTTPS and WSS only (the UDP data plane stays as it is)
    #[argh(option)]
    tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert (PKCS#8, RSA or EC)
    #[argh(option)]
    tls_key: Option<PathBuf>,

    /// join a cluster of nodes through NATS: nats://HOST:PORT[,nats://...] (needs --node;
    /// see docs/cluster.md); off unless given
    #[argh(option)]
    cluster: Option<String>,

    /// this node's name in the cluster: 1-32 of A-Z a-z 0-9 - _
    #[argh(option)]
    node: Option<String>,

    /// NATS credentials file (.creds) for --cluster
    #[argh(option)]
    cluster_creds: Option<PathBuf>,

    /// NATS user for --cluster (with --cluster-password)
    #[argh(option)]
    cluster_user: Option<String>,

    /// NATS password for --cluster-user
    #[argh(option)]
    cluster_password: Option<String>,

    /// copies of the cluster's key-value buckets in a NATS cluster: 3 survives the loss
    /// of one NATS server of three; only the first node to start makes them
    #[argh(option)]
    cluster_replicas: Option<usize>,
}

/// `--web`: an address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WebAddr {
    At(SocketAddr),
    Off,
}

impl argh::FromArgValue for WebAddr {
    fn from_arg_value(value: &str) -> Result<Self, String> {
        if value == "off" {
            return Ok(WebAddr::Off);
        }
        value
            .parse()
            .map(WebAddr::At)
            .map_err(|_| format!("expected ADDR:PORT or off, not {value:?}"))
    }
}

impl Args {
    /// Where the web listener goes, if anywhere: `--web`, or the `--bind` address with
    /// port 9080 (a free port when `--port 0` asks for free ports).
    fn web_addr(&self) -> Option<SocketAddr> {
        match self.web {
            Some(WebAddr::Off) => None,
            Some(WebAddr::At(addr)) => Some(addr),
            None if self.port == 0 => Some(SocketAddr::new(self.bind, 0)),
            None => Some(SocketAddr::new(self.bind, web::DEFAULT_PORT)),
        }
    }

    fn config(&self) -> Result<(Config, Limits), String> {
        if self.idle_timeout == 0 {
            return Err("--idle-timeout must be 1-65535 seconds".into());
        }
        if self.max_capacity == 0 {
            return Err("--max-capacity must be at least 1".into());
        }
        if self.batch_max == 0 {
            return Err("--batch-max must be at least 1".into());
        }
        let max_hold = Duration::from_micros(self.max_hold_us);
        if max_hold > MAX_HOLD_LIMIT {
            return Err(format!(
                "--max-hold-us must be at most {} (microseconds)",
                MAX_HOLD_LIMIT.as_micros()
            ));
        }
        let config = Config {
            udp_port: 0,
            idle_timeout: Duration::from_secs(u64::from(self.idle_timeout)),
            default_capacity: self.default_capacity.clamp(1, self.max_capacity),
            max_capacity: self.max_capacity,
            max_rooms: self.max_rooms,
            max_members: self.max_members,
            max_members_per_ip: self.max_members_per_ip,
            max_rooms_per_ip: self.max_rooms_per_ip,
            msg_rate: self.msg_rate,
            msg_burst: self.msg_burst,
            batch_max: self.batch_max,
            max_hold,
            history: self.history,
            history_memory: self.history_memory,
            repair_rate: self.repair_rate,
            repair_burst: self.repair_burst,
        };
        let limits = Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        };
        Ok((config, limits))
    }
}

/// `--max-hold-us`'s default, from the relay's.
fn default_max_hold_us() -> u64 {
    Config::default().max_hold.as_micros() as u64
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // Checked before anything is bound, so a bad file starts nothing (no listening line).
    let tls = match tls::load(args.tls_cert.as_deref(), args.tls_key.as_deref()) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("ocm-server: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run(&args, tls) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ocm-server: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// A TCP listener like the TCRP one (address reuse, `::` takes IPv4 too, a long backlog).
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(sys::socket::LISTEN_BACKLOG)?;
    Ok(socket.into())
}

fn run(args: &Args, tls: Option<Arc<rustls::ServerConfig>>) -> Result<(), String> {
    let (config, limits) = args.config()?;
    // Every TCP connection is a descriptor; a failure leaves the limit as it was.
    if let Err(e) = sys::rlimit::raise_nofile_limit() {
        log::debug!("cannot raise the open-file limit: {e}");
    }
    let (tcp, udp) = sys::socket::bind(args.bind, args.port, args.udp_port)
        .map_err(|e| format!("cannot listen on {} port {}: {e}", args.bind, args.port))?;
    let signals = Signals::new([SIGINT, SIGTERM]).map_err(|e| format!("signals: {e}"))?;
    let metrics = match args.metrics {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?,
        ),
        None => None,
    };
    let web = match args.web_addr() {
        Some(addr) => {
            Some(listen(addr).map_err(|e| format!("cannot serve the web page on {addr}: {e}"))?)
        }
        None => None,
    };
    let mut server = Server::new(tcp, udp, metrics, config, limits).map_err(|e| e.to_string())?;
    if let Some(web) = web {
        let site = Site::new(args.web_origin.iter().cloned());
        server = server.with_web(web, site).map_err(|e| e.to_string())?;
    }
    if let Some(tls) = tls {
        server = server.with_tls(tls);
    }
    if let Some(urls) = &args.cluster {
        let mut cfg = ocm::server::cluster::ClusterConfig::from_flags(
            urls,
            args.node.as_deref(),
            args.cluster_creds.clone(),
            args.cluster_user.clone(),
            args.cluster_password.clone(),
        )?;
        cfg.replicas = args.cluster_replicas.unwrap_or(1).clamp(1, 5);
        server = server.with_cluster(cfg).map_err(|e| e.to_string())?;
    }
    let (tcp_addr, udp_addr) = server.local_addrs().map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let mut lines = format!("listening tcp={tcp_addr} udp={udp_addr}");
    if let Some(addr) = server.web_addr() {
        lines.push_str(&format!(" web={addr}"));
    }
    if server.tls_on() {
        lines.push_str(" tls=on");
    }
    lines.push('\n');
    if let Some(addr) = server.metrics_addr() {
        lines.push_str(&format!("metrics http://{addr}/metrics\n"));
    }
    out.write_all(lines.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))?;
    drop(out);
    log::info!(
        "ocm-server {} on tcp={tcp_addr} udp={udp_addr}",
        env!("CARGO_PKG_VERSION")
    );
    server
        .run(signals)
        .map_err(|e| format!("event loop: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_protocol() {
        let args = Args::from_args(&["ocm-server"], &[]).unwrap();
        assert_eq!(args.port, 9001);
        assert_eq!(args.bind, IpAddr::from([127, 0, 0, 1]));
        let (c, l) = args.config().unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!((c.msg_rate, c.msg_burst), (20, 40));
        assert_eq!(c.max_capacity, 256);
        assert_eq!(c.max_rooms_per_ip, 16);
        assert_eq!(l.max_connections_per_ip, 64);
    }

    /// The "(default: N)" of each flag in `--help`, by flag name.
    fn stated_defaults() -> Vec<(String, String)> {
        let help = match Args::from_args(&["ocm-server"], &["--help"]) {
            Err(exit) => exit.output,
            Ok(_) => panic!("--help parsed as a run"),
        };
        // One entry per option: its first line starts with "--", the rest are indented.
        let mut entries: Vec<String> = Vec::new();
        for line in help.lines() {
            let t = line.trim_start();
            if t.starts_with("--") {
                entries.push(t.to_string());
            } else if let Some(last) = entries.last_mut() {
                last.push(' ');
                last.push_str(t);
            }
        }
        entries
            .iter()
            .filter_map(|e| {
                let flag = e.split_whitespace().next()?.trim_start_matches("--");
                let (_, rest) = e.split_once("(default: ")?;
                let value = rest.split(')').next()?;
                Some((flag.to_string(), value.to_string()))
            })
            .collect()
    }

    #[test]
    fn help_states_the_defaults_that_apply() {
        let c = Config::default();
        let l = Limits::default();
        let want: Vec<(&str, String)> = vec![
            ("port", DEFAULT_PORT.to_string()),
            ("udp-port", "the same as --port".into()),
            ("bind", "127.0.0.1".into()),
            ("idle-timeout", c.idle_timeout.as_secs().to_string()),
            ("default-capacity", c.default_capacity.to_string()),
            ("max-capacity", c.max_capacity.to_string()),
            ("max-rooms", c.max_rooms.to_string()),
            ("max-members", c.max_members.to_string()),
            ("max-connections", l.max_connections.to_string()),
            ("msg-rate", c.msg_rate.to_string()),
            ("msg-burst", c.msg_burst.to_string()),
            (
                "max-connections-per-ip",
                l.max_connections_per_ip.to_string(),
            ),
            ("max-members-per-ip", c.max_members_per_ip.to_string()),
            ("max-rooms-per-ip", c.max_rooms_per_ip.to_string()),
            ("batch-max", c.batch_max.to_string()),
            ("max-hold-us", c.max_hold.as_micros().to_string()),
            ("history", c.history.to_string()),
            ("history-memory", c.history_memory.to_string()),
            ("repair-rate", c.repair_rate.to_string()),
            ("repair-burst", c.repair_burst.to_string()),
            (
                "web",
                format!(
                    "the --bind address, port {}; a free port with --port 0",
                    web::DEFAULT_PORT
                ),
            ),
        ];
        let got = stated_defaults();
        let want: Vec<(String, String)> =
            want.into_iter().map(|(f, v)| (f.to_string(), v)).collect();
        assert_eq!(got, want, "--help must state the defaults that apply");
        // And the parsed defaults are those values.
        let args = Args::from_args(&["ocm-server"], &[]).unwrap();
        assert_eq!(args.bind.to_string(), "127.0.0.1");
        let (pc, pl) = args.config().unwrap();
        assert_eq!(
            format!("{pc:?}"),
            format!("{:?}", Config { udp_port: 0, ..c })
        );
        assert_eq!(format!("{pl:?}"), format!("{l:?}"));
    }

    #[test]
    fn the_web_listener_goes_where_the_flags_say() {
        let parse = |flags: &[&str]| Args::from_args(&["ocm-server"], flags).unwrap();
        assert_eq!(
            parse(&[]).web_addr(),
            Some("127.0.0.1:9080".parse().unwrap())
        );
        assert_eq!(
            parse(&["--bind", "::1"]).web_addr(),
            Some("[::1]:9080".parse().unwrap())
        );
        assert_eq!(
            parse(&["--port", "0"]).web_addr(),
            Some("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            parse(&["--port", "0", "--web", "127.0.0.2:81"]).web_addr(),
            Some("127.0.0.2:81".parse().unwrap())
        );
        assert_eq!(parse(&["--web", "off"]).web_addr(), None);
        assert!(Args::from_args(&["ocm-server"], &["--web", "nowhere"]).is_err());
        let a = parse(&["--web-origin", "https://A.example", "--web-origin", "null"]);
        assert_eq!(a.web_origin, ["https://A.example", "null"]);
    }

    #[test]
    fn bad_values_are_refused() {
        let args = Args::from_args(&["ocm-server"], &["--idle-timeout", "0"]).unwrap();
        assert!(args.config().is_err());
        assert!(Args::from_args(&["ocm-server"], &["--port", "70000"]).is_err());
        let args = Args::from_args(&["ocm-server"], &["--bind", "::", "--port", "0"]).unwrap();
        assert!(args.bind.is_ipv6());
    }
}
