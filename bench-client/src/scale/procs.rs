//! The processes that hold `bench-client scale`'s members.
//!
//! One UDP socket per member is one descriptor per member, and a process may hold no more
//! than its open-file limit, whose hard value only a privileged process (CAP_SYS_RESOURCE)
//! can raise. So the members are split over child processes (`bench-client scale-child`,
//! not for people to run), each with at most `--per-process` of them, all on one clock
//! ([`MonoClock`]). The parent does the TCRP setup itself, hands each child its members'
//! tokens on stdin, then drives the phases with one-line commands; each child answers
//! with one line of figures (and, after traffic, its latency histogram):
//!
//! ```text
//!   parent -> child: <count token lines>   child -> parent: ready
//!                    bind SECONDS RATE                      bound N
//!                    idle START SECONDS                     phase SECONDS HEARTBEATS ...
//!                    traffic START SECONDS ROOM_RATE SIZE   lat VALUE COUNT ...  phase ...
//!                    (end of input: exit)
//! ```

use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use argh::FromArgs;
use hdrhistogram::Histogram;
use ocm::client::Membership;
use ocm::protocol::TOKEN_LEN;
use ocm::sys::rlimit::raise_nofile_limit_to;

use super::Plan;
use super::fleet::{BIND_RATE, Fleet, FleetSpec, MonoClock, PhaseFigures};
use super::probe::{self, Probe};
use crate::sys::CpuTime;

/// Descriptors a child needs besides its members' sockets.
pub const CHILD_FD_MARGIN: u64 = 64;
/// Longest line a child or the parent reads: a histogram line or a token is far shorter.
const MAX_LINE: u64 = 4096;
/// A phase starts this long after the parent's command, on the run's clock, so that every
/// child has it by then and all start (and count) alike.
const PHASE_LEAD_NS: u64 = 100_000_000;
/// How long children get to exit once their input closes, before they are killed.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// One process of `bench-client scale`'s members, started and driven by `bench-client
/// scale` (not to be run by hand).
#[derive(FromArgs, Debug, Clone, PartialEq)]
pub struct ChildArgs {
    /// the server's data plane
    #[argh(option)]
    pub udp: SocketAddr,
    /// prefix of the room names
    #[argh(option)]
    pub run_id: String,
    /// members of the whole run
    #[argh(option)]
    pub members: usize,
    /// rooms of the whole run
    #[argh(option)]
    pub rooms: usize,
    /// members per source address
    #[argh(option)]
    pub per_address: usize,
    /// the first source address
    #[argh(option)]
    pub first_address: Ipv4Addr,
    /// this process's first member
    #[argh(option)]
    pub first: usize,
    /// this process's members
    #[argh(option)]
    pub count: usize,
    /// heartbeat period, ns
    #[argh(option)]
    pub heartbeat_ns: u64,
    /// the run clock's zero, CLOCK_MONOTONIC ns
    #[argh(option)]
    pub clock_base: u64,
    /// no progress lines
    #[argh(switch)]
    pub quiet: bool,
}

/// The room name of room `r` in run `run_id` (parent and children agree on it).
pub fn room_name(run_id: &str, r: usize) -> String {
    format!("{run_id}-{r}")
}

/// A child's life: tokens in, sockets open, then each command in turn until input ends.
pub fn child_main(a: &ChildArgs) -> Result<(), String> {
    let end = a.first.checked_add(a.count).filter(|&e| e <= a.members);
    if a.rooms == 0 || a.per_address == 0 || end.is_none() {
        return Err("scale-child: inconsistent plan".into());
    }
    let want = a.count as u64 + CHILD_FD_MARGIN;
    let fds = raise_nofile_limit_to(want).map_err(|e| format!("open-file limit: {e}"))?;
    if fds < want {
        return Err(format!(
            "scale-child: the open-file limit is {fds}, {} members need {want}: lower --per-process",
            a.count
        ));
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut tokens = Vec::with_capacity(a.count);
    for _ in 0..a.count {
        let line = read_line(&mut input)?.ok_or("scale-child: input ended among the tokens")?;
        if line.len() != TOKEN_LEN {
            return Err("scale-child: a token of the wrong length".into());
        }
        tokens.push(line.into_bytes());
    }
    let plan = Plan {
        members: a.members,
        rooms: a.rooms,
        per_address: a.per_address,
        first: a.first_address,
    };
    let mut fleet = Fleet::open(FleetSpec {
        names: (0..a.rooms).map(|r| room_name(&a.run_id, r)).collect(),
        plan,
        first: a.first,
        tokens,
        udp: a.udp,
        heartbeat_ns: a.heartbeat_ns,
        clock: MonoClock::with_base(a.clock_base),
    })?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let say = |out: &mut std::io::StdoutLock<'_>, text: &str| {
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("scale-child: stdout: {e}"))
    };
    say(&mut out, "ready")?;
    while let Some(line) = read_line(&mut input)? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> Result<f64, String> {
            words
                .get(i)
                .and_then(|w| w.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("scale-child: bad command {line:?}"))
        };
        let cpu0 = CpuTime::now();
        match words.first().copied() {
            Some("bind") => {
                let n = fleet.bind(Duration::from_secs_f64(num(1)?), num(2)?, a.quiet);
                say(&mut out, &format!("bound {n}"))?;
            }
            Some("idle") => {
                let (start, secs) = (num(1)? as u64, num(2)?);
                let f = fleet.idle(start, Duration::from_secs_f64(secs), a.quiet);
                say(&mut out, &phase_line(&f, cpu0))?;
            }
            Some("traffic") => {
                let mut h = crate::stats::latency_histogram();
                let (start, secs) = (num(1)? as u64, num(2)?);
                let (rate, size) = (num(3)?, num(4)? as usize);
                let length = Duration::from_secs_f64(secs);
                let f = fleet.traffic(start, length, rate, size, &mut h, a.quiet);
                for v in h.iter_recorded() {
                    say(
                        &mut out,
                        &format!("lat {} {}", v.value_iterated_to(), v.count_at_value()),
                    )?;
                }
                say(&mut out, &phase_line(&f, cpu0))?;
            }
            _ => return Err(format!("scale-child: unknown command {line:?}")),
        }
    }
    Ok(())
}

/// A phase's figures as the child sends them.
fn phase_line(f: &PhaseFigures, cpu0: CpuTime) -> String {
    let cpu = CpuTime::now().since(cpu0);
    format!(
        "phase {} {} {} {} {} {} {}",
        f.seconds,
        f.heartbeats,
        f.messages,
        f.datagrams,
        f.expected,
        f.received,
        cpu.user_s + cpu.sys_s
    )
}

/// Reads one line without its newline; `None` at the end of input. Lines are bounded.
fn read_line(r: &mut impl BufRead) -> Result<Option<String>, String> {
    let mut line = String::new();
    let n = r
        .by_ref()
        .take(MAX_LINE)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') && n as u64 == MAX_LINE {
        return Err("a line too long".into());
    }
    Ok(Some(line.trim_end().to_string()))
}

/// Parses a child's `phase ...` line.
pub fn parse_phase(line: &str) -> Option<PhaseFigures> {
    let w: Vec<&str> = line.split_whitespace().collect();
    if w.len() != 8 || w[0] != "phase" {
        return None;
    }
    let int = |i: usize| w[i].parse::<u64>().ok();
    Some(PhaseFigures {
        seconds: w[1].parse().ok()?,
        heartbeats: int(2)?,
        messages: int(3)?,
        datagrams: int(4)?,
        expected: int(5)?,
        received: int(6)?,
        server_cpu_s: None,
        bench_cpu_s: w[7].parse().ok()?,
        window_s: 0.0,
        server_busy_s: None,
        udp_drops: None,
    })
}

/// One child process and its pipes.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// Every child of a run; they are told to exit (and killed if they do not) when dropped.
pub struct Procs {
    procs: Vec<Proc>,
    clock: MonoClock,
}

/// What the parent tells [`Procs::spawn`].
pub struct SpawnSpec<'a> {
    /// The run's plan.
    pub plan: &'a Plan,
    /// Every member's CREATE or JOIN.
    pub members: &'a [Option<Membership>],
    /// Members per process.
    pub per_process: usize,
    /// Prefix of the room names.
    pub run_id: &'a str,
    /// The run clock's zero.
    pub clock_base: u64,
    /// Heartbeat period, ns.
    pub heartbeat_ns: u64,
    /// No progress lines.
    pub quiet: bool,
}

impl Procs {
    /// Starts `ceil(members / per_process)` children of this executable and hands each its
    /// members' tokens; returns once every child said it is ready.
    pub fn spawn(s: &SpawnSpec<'_>) -> Result<Procs, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let udp = s
            .members
            .iter()
            .flatten()
            .map(|m| m.udp_addr)
            .next()
            .ok_or("no members")?;
        let mut procs = Procs {
            procs: Vec::new(),
            clock: MonoClock::with_base(s.clock_base),
        };
        let per = s.per_process.max(1);
        for first in (0..s.plan.members).step_by(per) {
            let count = per.min(s.plan.members - first);
            let mut cmd = Command::new(&exe);
            cmd.arg("scale-child")
                .args(["--udp", &udp.to_string(), "--run-id", s.run_id])
                .args(["--members", &s.plan.members.to_string()])
                .args(["--rooms", &s.plan.rooms.to_string()])
                .args(["--per-address", &s.plan.per_address.to_string()])
                .args(["--first-address", &s.plan.first.to_string()])
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args(["--heartbeat-ns", &s.heartbeat_ns.to_string()])
                .args(["--clock-base", &s.clock_base.to_string()]);
            if s.quiet || first > 0 {
                // One child's progress lines stand for all.
                cmd.arg("--quiet");
            }
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot start a member process: {e}"))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err("a member process has no pipes".into());
            };
            let mut p = Proc {
                child,
                stdin: Some(stdin),
                stdout: BufReader::new(stdout),
            };
            let mut text = String::with_capacity(count * (TOKEN_LEN + 1));
            for m in first..first + count {
                let ms = s.members[m].as_ref().ok_or("a member without a token")?;
                text.push_str(std::str::from_utf8(&ms.token).map_err(|_| "a token not UTF-8")?);
                text.push('\n');
            }
            let written = p.send(&text);
            procs.procs.push(p);
            written?;
        }
        for p in &mut procs.procs {
            p.expect_line("ready")?;
        }
        Ok(procs)
    }

    /// How many children.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Every child binds its members; returns how many are bound over all children.
    pub fn bind(&mut self, timeout: Duration) -> Result<usize, String> {
        // The processes share the bind rate.
        let rate = BIND_RATE / self.procs.len().max(1) as f64;
        self.broadcast(&format!("bind {} {rate}\n", timeout.as_secs_f64()))?;
        let mut bound = 0;
        for p in &mut self.procs {
            let line = p.line()?;
            bound += line
                .strip_prefix("bound ")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| format!("a member process answered {line:?} to bind"))?;
        }
        Ok(bound)
    }

    /// Runs the phase `kind` (`idle` or `traffic`) with `args` after its start time in
    /// every child; returns the sums, and adds the children's latency histograms into
    /// `latency`. `window_s` is the parent's wall time from the start to the last answer,
    /// and `server_cpu_s` what `probe` saw the server use over it.
    pub fn phase(
        &mut self,
        kind: &str,
        args: &str,
        probe: &Probe,
        mut latency: Option<&mut Histogram<u64>>,
    ) -> Result<PhaseFigures, String> {
        let start = self.clock.now_ns() + PHASE_LEAD_NS;
        self.broadcast(&format!("{kind} {start} {args}\n"))?;
        let wait = Duration::from_nanos(start.saturating_sub(self.clock.now_ns()));
        std::thread::sleep(wait);
        let drops0 = probe::udp_rcvbuf_errors();
        let t = Instant::now();
        let s0 = probe.sample();
        let mut sum = PhaseFigures::default();
        for p in &mut self.procs {
            loop {
                let line = p.line()?;
                if let Some(rest) = line.strip_prefix("lat ") {
                    let mut w = rest.split_whitespace().map(|x| x.parse::<u64>().ok());
                    if let (Some(Some(v)), Some(Some(n)), Some(h)) =
                        (w.next(), w.next(), latency.as_deref_mut())
                    {
                        h.saturating_record_n(v.clamp(1, crate::stats::HIST_MAX_NS), n);
                    }
                    continue;
                }
                let f = parse_phase(&line)
                    .ok_or_else(|| format!("a member process answered {line:?}"))?;
                sum.heartbeats += f.heartbeats;
                sum.messages += f.messages;
                sum.datagrams += f.datagrams;
                sum.expected += f.expected;
                sum.received += f.received;
                sum.bench_cpu_s += f.bench_cpu_s;
                sum.seconds = sum.seconds.max(f.seconds);
                break;
            }
        }
        sum.window_s = t.elapsed().as_secs_f64();
        let s1 = probe.sample();
        if let (Some(a), Some(b)) = (s0.cpu_s, s1.cpu_s) {
            sum.server_cpu_s = Some((b.0 - a.0, b.1 - a.1));
        }
        if let (Some(a), Some(b)) = (s0.gauges, s1.gauges) {
            sum.server_busy_s = Some(b.busy_ms.saturating_sub(a.busy_ms) as f64 / 1e3);
        }
        if let (Some(a), Some(b)) = (drops0, probe::udp_rcvbuf_errors()) {
            sum.udp_drops = Some(b.saturating_sub(a));
        }
        Ok(sum)
    }

    fn broadcast(&mut self, text: &str) -> Result<(), String> {
        self.procs.iter_mut().try_for_each(|p| p.send(text))
    }
}

impl Proc {
    fn send(&mut self, text: &str) -> Result<(), String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or("a member process's input is closed")?;
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("a member process exited early ({e}); see its message above"))
    }

    fn line(&mut self) -> Result<String, String> {
        read_line(&mut self.stdout)?
            .ok_or_else(|| "a member process exited early; see its message above".to_string())
    }

    fn expect_line(&mut self, want: &str) -> Result<(), String> {
        let line = self.line()?;
        if line == want {
            Ok(())
        } else {
            Err(format!("a member process said {line:?}, not {want:?}"))
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        // End of input tells each child to exit.
        for p in &mut self.procs {
            p.stdin = None;
        }
        let deadline = Instant::now() + EXIT_GRACE;
        for p in &mut self.procs {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines_round_trip() {
        let f = PhaseFigures {
            seconds: 2.5,
            heartbeats: 10,
            messages: 20,
            datagrams: 30,
            expected: 200,
            received: 199,
            server_cpu_s: None,
            bench_cpu_s: 0.0,
            window_s: 0.0,
            server_busy_s: None,
            udp_drops: None,
        };
        let line = phase_line(&f, CpuTime::now());
        let back = parse_phase(&line).unwrap();
        assert_eq!(
            (back.seconds, back.heartbeats, back.received),
            (2.5, 10, 199)
        );
        assert!(back.bench_cpu_s >= 0.0);
        assert_eq!(parse_phase("phase 1 2"), None);
        assert_eq!(parse_phase("bound 3"), None);
    }

    #[test]
    fn lines_are_bounded() {
        let mut ok = std::io::Cursor::new(b"ready\nbound 3\n".to_vec());
        assert_eq!(read_line(&mut ok).unwrap().as_deref(), Some("ready"));
        assert_eq!(read_line(&mut ok).unwrap().as_deref(), Some("bound 3"));
        assert_eq!(read_line(&mut ok).unwrap(), None);
        let mut long = std::io::Cursor::new(vec![b'a'; 10_000]);
        assert!(read_line(&mut long).is_err());
    }
}
