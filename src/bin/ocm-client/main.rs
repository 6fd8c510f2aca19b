//! `ocm-client`: chat in an OCM room from a terminal, or from a script.
//!
//! Full-screen mode when standard input and output are both terminals (and `--plain` is
//! not given); plain line mode otherwise (see [`plain`]). Whatever is missing from the
//! flags (name, create or join, room, password) is asked for in full-screen mode, and is
//! an error (exit code 2) in plain mode.
//!
//! Exit codes: 0 after leaving normally, 1 when the server cannot be reached or refuses
//! (the message says why), 2 for a usage error, 3 when the room closed under us or the
//! server dropped us for silence.

mod app;
mod clock;
mod plain;
mod tui;
mod view;

use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use argh::FromArgs;
use ocm::client::control::{self, ControlError, Membership};
use ocm::client::e2e::{Deriving, RoomCrypto, RoomKey};
use ocm::client::session::{Options, Session};
use ocm::protocol::{MAX_ROOM_NAME, MAX_USER_NAME, Status, control_char};

use crate::app::{End, sanitize};

/// Exit code after a clean leave.
const EXIT_OK: u8 = 0;
/// Exit code when the server cannot be reached, refuses, or stops answering.
const EXIT_FAILED: u8 = 1;
/// Exit code for a usage error (a missing or invalid flag).
const EXIT_USAGE: u8 = 2;
/// Exit code when the room closed under us or we were dropped for silence.
const EXIT_CLOSED: u8 = 3;
/// Events of the room's history fetched at join unless `--history` says otherwise: a
/// screenful of context, one NACK.
const DEFAULT_HISTORY: u32 = 50;
/// Times a wrong password or a taken name may be re-entered before giving up (the server
/// answers TOO_MANY_REQUESTS after five wrong passwords a minute anyway).
const MAX_ATTEMPTS: usize = 5;

/// Chat in a room of an OCM server. With no flags it asks for what it needs; `--plain`
/// (or a pipe) reads messages from standard input, one per line, and prints every event on
/// one line of standard output.
#[derive(FromArgs, Debug)]
struct Args {
    /// server address as HOST:PORT (default: 127.0.0.1:9001)
    #[argh(option, default = "String::from(\"127.0.0.1:9001\")")]
    server: String,

    /// your user name in the room (asked for when missing in full-screen mode)
    #[argh(option)]
    name: Option<String>,

    /// create this room and be its host (your leaving closes it)
    #[argh(option)]
    create: Option<String>,

    /// join this existing room
    #[argh(option)]
    join: Option<String>,

    /// room password (default: none; asked for in full-screen mode when creating, or when
    /// the room needs one)
    #[argh(option)]
    password: Option<String>,

    /// most members of a room you create, you included (default: 0, the server's default)
    #[argh(option, default = "0")]
    capacity: u16,

    /// list the server's rooms and exit
    #[argh(switch)]
    list: bool,

    /// plain line mode even on a terminal (default: full-screen when stdin and stdout are
    /// terminals)
    #[argh(switch)]
    plain: bool,

    /// messages from before you came to show at join: the last N events the room still
    /// holds (default: 50; 0 for none)
    #[argh(option, default = "DEFAULT_HISTORY")]
    history: u32,

    /// speak TLS to the server's control port (ocm-server --tls-cert), checking its
    /// certificate against the system's trusted CAs and the name in --server; chat
    /// messages still go over UDP, unencrypted
    #[argh(switch)]
    tls: bool,

    /// also trust the CA certificate(s) in this PEM file (a private CA, such as
    /// scripts/dev-cert.sh makes); implies --tls
    #[argh(option)]
    ca: Option<PathBuf>,

    /// make the room private (end-to-end encrypted, PROTOCOL.md §7): messages are sealed
    /// with a key from the room's passphrase, which is asked for without echo (or read
    /// from --e2e-passphrase-file); the server never sees the passphrase or the text
    #[argh(switch)]
    e2e: bool,

    /// read the room's passphrase from the first line of this file (implies --e2e; for
    /// scripts and tests)
    #[argh(option)]
    e2e_passphrase_file: Option<PathBuf>,

    /// write the log to this file (default: none in full-screen mode, warnings to stderr in
    /// plain mode; RUST_LOG sets the level)
    #[argh(option)]
    log: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    ExitCode::from(run(args))
}

/// Why the program stops before chatting.
struct Fail(u8, String);

fn run(args: Args) -> u8 {
    let full_screen = !args.plain && io::stdin().is_terminal() && io::stdout().is_terminal();
    if let Err(e) = init_logging(args.log.as_ref(), full_screen) {
        eprintln!("ocm-client: cannot open the log file: {e}");
        return EXIT_USAGE;
    }
    if let Err(msg) = use_tls(&args) {
        eprintln!("ocm-client: {msg}");
        return EXIT_USAGE;
    }
    if args.list {
        return list(&args.server);
    }
    let passphrase = match passphrase(&args) {
        Ok(p) => p,
        Err(Fail(code, msg)) => {
            eprintln!("ocm-client: {msg}");
            return code;
        }
    };
    let membership = match enter_room(&args, full_screen) {
        Ok(m) => m,
        Err(Fail(code, msg)) => {
            eprintln!("ocm-client: {msg}");
            return code;
        }
    };
    let options = Options {
        history: args.history,
    };
    // Derived once per room, on its own thread, while the chat starts.
    let deriving = match passphrase
        .map(|p| RoomKey::derive_in_background(p, membership.room.clone()))
        .transpose()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ocm-client: cannot start deriving the room key: {e}");
            let _ = control::leave(&membership);
            return EXIT_FAILED;
        }
    };
    chat(&args.server, membership, options, full_screen, deriving)
}

/// Longest passphrase taken (PBKDF2 takes any length; this bounds what a wrong file makes
/// us read and hash).
const MAX_PASSPHRASE: usize = 1024;

/// The room's passphrase when the room is private (`--e2e` or `--e2e-passphrase-file`):
/// the file's first line without its line ending, or asked for without echo on a terminal.
fn passphrase(args: &Args) -> Result<Option<String>, Fail> {
    let checked = |p: String| {
        check_passphrase(&p).map_err(usage)?;
        Ok(Some(p))
    };
    if let Some(path) = &args.e2e_passphrase_file {
        let file = File::open(path).map_err(|e| {
            usage(format!(
                "cannot read the passphrase file {}: {e}",
                path.display()
            ))
        })?;
        let mut line = Vec::new();
        io::BufReader::new(file)
            .take(MAX_PASSPHRASE as u64 + 2)
            .read_until(b'\n', &mut line)
            .map_err(|e| usage(format!("cannot read the passphrase file: {e}")))?;
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let p = String::from_utf8(line.to_vec())
            .map_err(|_| usage("the passphrase file is not UTF-8 text".into()))?;
        return checked(p);
    }
    if !args.e2e {
        return Ok(None);
    }
    if !io::stdin().is_terminal() {
        return Err(usage(
            "--e2e needs a terminal to ask for the passphrase; give --e2e-passphrase-file FILE"
                .into(),
        ));
    }
    let p = ask_hidden("Passphrase of the private room", check_passphrase)?;
    checked(p)
}

fn check_passphrase(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("the passphrase is empty".into());
    }
    if p.len() > MAX_PASSPHRASE {
        return Err(format!(
            "the passphrase is {} bytes; at most {MAX_PASSPHRASE} are allowed",
            p.len()
        ));
    }
    Ok(())
}

/// Plain mode waits for the room key before the chat starts (600 000 PBKDF2 rounds take
/// a visible moment), saying so on standard error, so that a script's first line is
/// sealed and the first message printed is opened.
fn wait_for_key(deriving: Deriving, room: &str) -> Option<RoomCrypto> {
    eprint!("ocm-client: deriving key…");
    let _ = io::stderr().flush();
    let started = std::time::Instant::now();
    let key = deriving.wait()?;
    eprintln!(" done in {} ms", started.elapsed().as_millis());
    Some(RoomCrypto::new(&key, room))
}

/// With --tls or --ca, every control connection of this process speaks TLS, checked
/// against the host named in --server (LEAVE included, which dials the address reached).
fn use_tls(args: &Args) -> Result<(), String> {
    if !args.tls && args.ca.is_none() {
        return Ok(());
    }
    let tls = control::Tls::new(args.ca.as_deref())
        .and_then(|t| t.for_host(control::host_of(&args.server)))
        .map_err(|e| e.to_string())?;
    control::use_tls(tls);
    Ok(())
}

fn init_logging(path: Option<&PathBuf>, full_screen: bool) -> io::Result<()> {
    let env = env_logger::Env::default().default_filter_or("warn");
    let mut builder = env_logger::Builder::from_env(env);
    match path {
        Some(p) => {
            let file = File::create(p)?;
            builder.target(env_logger::Target::Pipe(Box::new(file)));
        }
        // The screen belongs to the UI: no logger at all.
        None if full_screen => return Ok(()),
        None => {}
    }
    let _ = builder.try_init();
    Ok(())
}

fn list(server: &str) -> u8 {
    match control::list(server) {
        Ok(rooms) => {
            let mut out = io::stdout().lock();
            if rooms.is_empty() {
                let _ = writeln!(out, "no rooms on {}", sanitize(server));
            }
            for r in rooms {
                let _ = writeln!(
                    out,
                    "{}\t{}/{}\t{}",
                    sanitize(&r.name),
                    r.members,
                    r.capacity,
                    if r.password { "password" } else { "open" }
                );
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("ocm-client: {e}");
            EXIT_FAILED
        }
    }
}

/// Checks a user or room name before it goes to the server, so the message is precise.
fn check_name(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if s.len() > max {
        return Err(format!(
            "the {what} is {} bytes; at most {max} are allowed",
            s.len()
        ));
    }
    if let Some(c) = control_char(s) {
        return Err(format!(
            "the {what} contains a control character (U+{:04X})",
            u32::from(c)
        ));
    }
    Ok(())
}

fn check_password(p: &str) -> Result<(), String> {
    if p.len() > 255 {
        return Err(format!(
            "the password is {} bytes; at most 255 are allowed",
            p.len()
        ));
    }
    Ok(())
}

fn usage(msg: String) -> Fail {
    Fail(EXIT_USAGE, format!("{msg} (see `ocm-client --help`)"))
}

/// Creates or joins the room the flags (and, in full-screen mode, the answers) name.
fn enter_room(args: &Args, interactive: bool) -> Result<Membership, Fail> {
    let mut name = match &args.name {
        Some(n) => {
            check_name("user name", n, MAX_USER_NAME).map_err(usage)?;
            n.clone()
        }
        None if interactive => ask_name("Your name")?,
        None => return Err(missing("--name")),
    };
    let (create, room) = room_choice(args, interactive)?;
    check_name("room name", &room, MAX_ROOM_NAME).map_err(usage)?;
    let mut password = first_password(args, interactive, create, &room)?;
    for _ in 0..MAX_ATTEMPTS {
        let result = if create {
            control::create(
                &args.server,
                &room,
                &name,
                password.as_bytes(),
                args.capacity,
            )
        } else {
            control::join(&args.server, &room, &name, password.as_bytes())
        };
        let e = match result {
            Ok(m) => return Ok(m),
            Err(e) => e,
        };
        match e.status() {
            Some(Status::BadPassword) if interactive => {
                eprintln!("{e}.");
                password = ask_hidden(
                    &format!("Password for room '{}'", sanitize(&room)),
                    check_password,
                )?;
            }
            Some(Status::NameTaken) if interactive => {
                eprintln!("{e}.");
                name = ask_name("Another name")?;
            }
            _ => return Err(refused(e)),
        }
    }
    Err(Fail(EXIT_FAILED, "too many attempts; giving up".into()))
}

/// Whether to create or join, and which room: from the flags, else (full-screen mode)
/// asked.
fn room_choice(args: &Args, interactive: bool) -> Result<(bool, String), Fail> {
    Ok(match (&args.create, &args.join) {
        (Some(_), Some(_)) => {
            return Err(usage(
                "give either --create ROOM or --join ROOM, not both".into(),
            ));
        }
        (Some(r), None) => (true, r.clone()),
        (None, Some(r)) => (false, r.clone()),
        (None, None) if interactive => {
            let create = loop {
                let a = ask("Create a new room or join one? [c/j]")?;
                match a.trim().to_lowercase().as_str() {
                    "c" | "create" => break true,
                    "j" | "join" => break false,
                    _ => eprintln!("Please answer c (create) or j (join)."),
                }
            };
            (create, ask_room()?)
        }
        (None, None) => return Err(missing("--create ROOM or --join ROOM")),
    })
}

/// The password to try first: from the flag, else asked when the room is being created
/// or LIST says it needs one, else none.
fn first_password(
    args: &Args,
    interactive: bool,
    create: bool,
    room: &str,
) -> Result<String, Fail> {
    Ok(match &args.password {
        Some(p) => {
            check_password(p).map_err(usage)?;
            p.clone()
        }
        None if interactive && create => {
            ask_hidden("Password for the new room (Enter for none)", check_password)?
        }
        // Ask up front when LIST says the room needs one: a wrong (empty) try would count
        // towards the server's limit of failed attempts.
        None if interactive && needs_password(&args.server, room) => ask_hidden(
            &format!("Password for room '{}'", sanitize(room)),
            check_password,
        )?,
        None => String::new(),
    })
}

/// A usage error for a value plain mode cannot ask for.
fn missing(what: &str) -> Fail {
    usage(format!(
        "missing {what}: it is required in plain mode (or when input is not a terminal)"
    ))
}

/// Whether LIST shows `room` as password protected (false if unknown).
fn needs_password(server: &str, room: &str) -> bool {
    control::list(server)
        .map(|rooms| rooms.iter().any(|r| r.name == room && r.password))
        .unwrap_or(false)
}

fn refused(e: ControlError) -> Fail {
    Fail(EXIT_FAILED, e.to_string())
}

fn ask(label: &str) -> Result<String, Fail> {
    eprint!("{label}: ");
    let _ = io::stderr().flush();
    let mut line = String::new();
    match io::stdin().lock().read_line(&mut line) {
        Ok(0) => Err(Fail(EXIT_USAGE, "no answer (end of input)".into())),
        Ok(_) => Ok(line.trim_end_matches(['\n', '\r']).to_string()),
        Err(e) => Err(Fail(EXIT_USAGE, format!("cannot read the answer: {e}"))),
    }
}

fn ask_valid(label: &str, what: &str, max: usize) -> Result<String, Fail> {
    for _ in 0..MAX_ATTEMPTS {
        let answer = ask(label)?;
        let answer = answer.trim();
        match check_name(what, answer, max) {
            Ok(()) => return Ok(answer.to_string()),
            Err(msg) => eprintln!("{msg}."),
        }
    }
    Err(Fail(EXIT_USAGE, format!("no valid {what} given")))
}

fn ask_name(label: &str) -> Result<String, Fail> {
    ask_valid(label, "user name", MAX_USER_NAME)
}

fn ask_room() -> Result<String, Fail> {
    ask_valid("Room name", "room name", MAX_ROOM_NAME)
}

/// Asks for a password (or passphrase) without echoing it; `check` says what is wrong with
/// an answer, which is then asked for again.
fn ask_hidden(label: &str, check: fn(&str) -> Result<(), String>) -> Result<String, Fail> {
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    use crossterm::terminal::{disable_raw_mode, enable_raw_mode};

    struct Raw;
    impl Drop for Raw {
        fn drop(&mut self) {
            let _ = disable_raw_mode();
        }
    }

    let io_fail = |e: io::Error| Fail(EXIT_USAGE, format!("cannot read the password: {e}"));
    for _ in 0..MAX_ATTEMPTS {
        eprint!("{label}: ");
        let _ = io::stderr().flush();
        let mut password = String::new();
        {
            enable_raw_mode().map_err(io_fail)?;
            let _raw = Raw;
            loop {
                let Event::Key(k) = event::read().map_err(io_fail)? else {
                    continue;
                };
                if k.kind == KeyEventKind::Release {
                    continue;
                }
                let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
                match k.code {
                    KeyCode::Enter => break,
                    KeyCode::Char('c') | KeyCode::Char('d') if ctrl => {
                        drop(_raw);
                        eprintln!();
                        return Err(Fail(EXIT_USAGE, "interrupted".into()));
                    }
                    KeyCode::Char(_) if ctrl => {}
                    KeyCode::Char(c) => password.push(c),
                    KeyCode::Backspace => {
                        password.pop();
                    }
                    _ => {}
                }
            }
        }
        eprintln!();
        match check(&password) {
            Ok(()) => return Ok(password),
            Err(msg) => eprintln!("{msg}."),
        }
    }
    Err(Fail(EXIT_USAGE, "no valid password given".into()))
}

/// Sends LEAVE if the chat loop panics, so a bug does not leave a ghost member behind
/// until the idle timeout (the terminal itself is restored by `tui::TerminalGuard`).
struct LeaveIfPanicking<'a>(&'a Membership);

impl Drop for LeaveIfPanicking<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = control::leave(self.0);
        }
    }
}

/// Runs the chat until it ends, leaves when we chose to, and turns the end into an exit
/// code with a last word on standard error.
fn chat(
    server: &str,
    membership: Membership,
    options: Options,
    full_screen: bool,
    deriving: Option<Deriving>,
) -> u8 {
    let stop = stop_on_signals();
    let room = sanitize(&membership.room).into_owned();
    let private = deriving.is_some();
    // Full-screen mode takes the key when it comes; plain mode waits for it here.
    let (deriving, crypto) = match deriving {
        Some(d) if !full_screen => match wait_for_key(d, &membership.room) {
            Some(c) => (None, Some(c)),
            // Never fall back to sending in clear in a room meant to be private.
            None => {
                eprintln!("ocm-client: the room key could not be derived");
                let _ = control::leave(&membership);
                return EXIT_FAILED;
            }
        },
        d => (d, None),
    };
    let mut session = match Session::open(&membership, options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ocm-client: cannot open the chat socket: {e}");
            let _ = control::leave(&membership);
            return EXIT_FAILED;
        }
    };
    if !full_screen {
        eprintln!(
            "ocm-client: {} {}room '{room}' as {} (Ctrl-D ends input and leaves)",
            if membership.host { "created" } else { "joined" },
            if private { "private " } else { "" },
            sanitize(&membership.user)
        );
    }
    let unwinding = LeaveIfPanicking(&membership);
    let end = if full_screen {
        match tui::run(&mut session, server, &stop, deriving) {
            Ok(end) => end,
            Err(e) => End::Lost(format!("the terminal failed: {e}")),
        }
    } else {
        plain::run(&mut session, &stop, crypto)
    };
    drop(unwinding);
    exit_code(end, session, &room, full_screen, membership.idle_timeout)
}

/// A flag that SIGINT, SIGTERM and SIGHUP set, so the chat ends (and leaves) cleanly.
fn stop_on_signals() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            log::warn!("cannot handle signal {sig}: {e}");
        }
    }
    stop
}

/// Leaves when we chose to, or tries to when the session was lost, and turns the end into
/// an exit code with a last word on standard error.
fn exit_code(
    end: End,
    session: Session,
    room: &str,
    full_screen: bool,
    idle_timeout: Duration,
) -> u8 {
    match end {
        End::Left => match session.leave() {
            Ok(()) => {
                if full_screen {
                    eprintln!("left room '{room}'");
                }
                EXIT_OK
            }
            Err(e) => {
                eprintln!(
                    "ocm-client: could not send LEAVE ({e}); the server will drop us after the idle timeout"
                );
                EXIT_FAILED
            }
        },
        End::Closed(reason) => {
            eprintln!("ocm-client: room '{room}' closed: {reason}");
            EXIT_CLOSED
        }
        End::TimedOut => {
            eprintln!(
                "ocm-client: the server dropped us from room '{room}' after {} s of silence",
                idle_timeout.as_secs()
            );
            EXIT_CLOSED
        }
        End::Lost(reason) => {
            // Try to leave anyway, in case only the data plane failed.
            if session.leave().is_err() {
                log::debug!("LEAVE after a lost session failed");
            }
            eprintln!("ocm-client: {reason}");
            EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, argh::EarlyExit> {
        Args::from_args(&["ocm-client"], args)
    }

    #[test]
    fn flags_and_defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.server, "127.0.0.1:9001");
        assert_eq!(a.capacity, 0);
        assert_eq!(a.history, 50);
        assert!(!a.plain && !a.list);
        let a = parse(&[
            "--server",
            "[::1]:7000",
            "--name",
            "bob",
            "--join",
            "lobby",
            "--password",
            "pw",
            "--plain",
        ])
        .unwrap();
        assert_eq!(a.name.as_deref(), Some("bob"));
        assert_eq!(a.join.as_deref(), Some("lobby"));
        assert!(a.plain);
        assert!(parse(&["--capacity", "70000"]).is_err());
    }

    #[test]
    fn missing_values_are_usage_errors_in_plain_mode() {
        let a = parse(&["--join", "lobby"]).unwrap();
        let Err(Fail(code, msg)) = enter_room(&a, false) else {
            panic!("expected an error");
        };
        assert_eq!(code, EXIT_USAGE);
        assert!(msg.contains("--name"), "{msg}");
        let a = parse(&["--name", "bob"]).unwrap();
        let Err(Fail(code, msg)) = enter_room(&a, false) else {
            panic!("expected an error");
        };
        assert_eq!(code, EXIT_USAGE);
        assert!(msg.contains("--create ROOM or --join ROOM"), "{msg}");
        let a = parse(&["--name", "bob", "--join", "a", "--create", "b"]).unwrap();
        assert!(matches!(enter_room(&a, false), Err(Fail(EXIT_USAGE, _))));
        let a = parse(&["--name", "", "--join", "a"]).unwrap();
        assert!(matches!(enter_room(&a, false), Err(Fail(EXIT_USAGE, _))));
    }

    #[test]
    fn names_are_checked_with_a_reason() {
        assert!(check_name("user name", "アリス", 255).is_ok());
        assert_eq!(
            check_name("room name", "", 255).unwrap_err(),
            "the room name is empty"
        );
        assert!(
            check_name("user name", &"x".repeat(256), 255)
                .unwrap_err()
                .contains("256 bytes")
        );
        assert!(
            check_name("user name", "a\tb", 255)
                .unwrap_err()
                .contains("U+0009")
        );
        assert!(check_password(&"p".repeat(256)).is_err());
    }
}
