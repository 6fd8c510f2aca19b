//! The full-screen event loop: the only part of the client that touches the terminal.
//!
//! Each turn it draws if something changed (or the terminal was resized), waits for a key
//! for at most [`TICK`] (or until the session's next timer is due), then lets the session
//! drain the UDP socket without blocking and run its timers (NACKs, SYNCs, a reconnect).
//! [`TerminalGuard`] puts the terminal back on every exit path, a panic included.

use std::io::{self, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossterm::event::{self, DisableBracketedPaste, EnableBracketedPaste, Event};
use crossterm::execute;
use crossterm::terminal::{
    Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ocm::client::control::{self, Membership};
use ocm::client::e2e::{Deriving, RoomCrypto};
use ocm::client::session::Session;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

use crate::app::{Action, App, End, sanitize};
use crate::plain::lost_reason;
use crate::{clock, view};

/// Longest wait for a key before the socket is looked at again (the latency a received
/// message can have on screen).
const TICK: Duration = Duration::from_millis(25);
/// How long the screen stays up after the room closed, waiting for a key.
const LINGER: Duration = Duration::from_secs(30);
/// Terminal events handled per turn before the socket gets its turn (a huge paste cannot
/// starve the network).
const MAX_KEYS_PER_TURN: usize = 256;

/// Raw mode, alternate screen and bracketed paste while alive; the normal terminal after.
pub struct TerminalGuard {
    _private: (),
}

fn restore_terminal() {
    let _ = execute!(io::stdout(), DisableBracketedPaste, LeaveAlternateScreen);
    let _ = disable_raw_mode();
}

impl TerminalGuard {
    /// Switches the terminal to full-screen mode and makes a panic restore it before the
    /// panic message is printed (so the message is readable and the shell usable).
    pub fn enter() -> io::Result<TerminalGuard> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        enable_raw_mode()?;
        let guard = TerminalGuard { _private: () };
        // Cleared here rather than with `Terminal::clear`, which asks the terminal for the
        // cursor position and fails where nothing answers.
        execute!(
            io::stdout(),
            EnterAlternateScreen,
            EnableBracketedPaste,
            Clear(ClearType::All)
        )?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Runs the full-screen client until the user leaves, the room closes, or `stop` is set.
/// The caller sends LEAVE afterwards when the result is [`End::Left`].
pub fn run(
    session: &mut Session,
    server: &str,
    stop: &AtomicBool,
    mut deriving: Option<Deriving>,
) -> io::Result<End> {
    let m = session.membership().clone();
    let mut app = welcome(server, &m, deriving.is_some());
    let _guard = TerminalGuard::enter()?;
    let mut terminal: Terminal<CrosstermBackend<Stdout>> =
        Terminal::new(CrosstermBackend::new(io::stdout()))?;
    let mut dirty = true;
    let mut size = terminal.size()?;
    loop {
        // A resize arrives as SIGWINCH, which crossterm turns into an event only when asked;
        // the loop only asks when a key is waiting. So the size is looked at every turn (one
        // ioctl), and the pane is wrapped again at the new width at once.
        // The room key comes from its own thread (600 000 PBKDF2 rounds): looked at every
        // turn, so typing and the session go on meanwhile.
        if let Some(key) = deriving.as_mut().and_then(Deriving::try_take) {
            app.key_ready(RoomCrypto::new(&key, &m.room), clock::now());
            deriving = None;
            dirty = true;
        }
        let now_size = terminal.size()?;
        if now_size != size {
            size = now_size;
            dirty = true;
        }
        if dirty {
            draw(&mut terminal, &mut app)?;
            dirty = false;
        }
        if let Some(end) = app.ended().cloned() {
            if end != End::Left {
                linger(&mut terminal, &mut app, stop)?;
            }
            return Ok(end);
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(End::Left);
        }
        let now = Instant::now();
        let wait = session
            .next_timeout()
            .map_or(TICK, |t| TICK.min(t.saturating_duration_since(now)));
        let input = match terminal_input(wait) {
            Ok(ready) => ready,
            // The terminal is gone (window closed, ssh dropped): its user has left.
            Err(_) => return Ok(End::Left),
        };
        if input && event::poll(Duration::ZERO)? {
            read_keys(&mut app, session, server)?;
            dirty = true;
        }
        if take_events(&mut app, session) {
            dirty = true;
        }
    }
}

/// The app for the room we are in, opening with a line saying so (and that the room key
/// is being derived, when it is).
fn welcome(server: &str, m: &Membership, deriving: bool) -> App {
    let mut app = App::new(server, &m.room, &m.user, m.host);
    if deriving {
        app.key_deriving(clock::now());
    }
    app.info(
        clock::now(),
        format!(
            "{} room {} as {}; /help lists the commands",
            if m.host { "created" } else { "joined" },
            sanitize(&m.room),
            sanitize(&m.user)
        ),
    );
    app
}

/// Draws the screen, and tells the app how many rows a page has and how far it scrolls.
fn draw(terminal: &mut Terminal<CrosstermBackend<Stdout>>, app: &mut App) -> io::Result<()> {
    let mut info = None;
    terminal.draw(|f| info = Some(view::draw(f, app)))?;
    if let Some(i) = info {
        app.set_view(i.page_rows, i.max_scroll);
    }
    Ok(())
}

/// Handles the terminal events waiting (at least one is), at most [`MAX_KEYS_PER_TURN`],
/// stopping early when the session ends.
fn read_keys(app: &mut App, session: &mut Session, server: &str) -> io::Result<()> {
    for _ in 0..MAX_KEYS_PER_TURN {
        let action = match event::read()? {
            Event::Key(key) => app.on_key(key, clock::now()),
            Event::Paste(text) => {
                app.on_paste(&text, clock::now());
                Action::None
            }
            _ => Action::None,
        };
        act(app, session, server, action);
        if app.ended().is_some() || !event::poll(Duration::ZERO)? {
            break;
        }
    }
    Ok(())
}

/// Does what a key asked for: send a line, list the rooms, leave.
fn act(app: &mut App, session: &mut Session, server: &str, action: Action) {
    match action {
        Action::None => {}
        Action::Send(text) => match app.outgoing(&text) {
            Ok(wire) => match session.send_message(&wire) {
                // A version 1 server confirms nothing; its echo is all there is.
                Ok(_) if session.is_v1() => {}
                Ok(client_seq) => app.sending(client_seq, &text, clock::now()),
                Err(e) => app.error(clock::now(), format!("not sent: {e}")),
            },
            Err(why) => app.error(clock::now(), format!("not sent: {why}")),
        },
        Action::List => list_rooms(app, server),
        Action::Leave => app.end(End::Left),
    }
}

/// Lets the session drain the socket and run its timers, without blocking, and hands the
/// app what came; whether anything did (the screen then needs drawing).
fn take_events(app: &mut App, session: &mut Session) -> bool {
    match session.recv_events(Duration::ZERO) {
        Ok(events) => {
            for ev in &events {
                app.on_event(ev, clock::now());
            }
            !events.is_empty()
        }
        Err(e) => {
            app.end(End::Lost(lost_reason(&e)));
            false
        }
    }
}

/// After the room closed under us, keeps the screen up (at most [`LINGER`]) so the last
/// messages and the reason can be read, until a key is pressed.
fn linger(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    app: &mut App,
    stop: &AtomicBool,
) -> io::Result<()> {
    app.info(clock::now(), "press any key to exit");
    terminal.draw(|f| {
        view::draw(f, app);
    })?;
    let end = Instant::now() + LINGER;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        if terminal_input(TICK * 4)? && event::poll(Duration::ZERO)? {
            if let Event::Key(k) = event::read()? {
                if k.kind != event::KeyEventKind::Release {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Waits up to `wait` for input on the terminal (standard input). An error means the
/// terminal hung up.
///
/// crossterm's own `poll` spins at full CPU once the terminal has hung up (every read
/// returns end of file), and never returns to let us notice; so the wait happens here,
/// and crossterm is asked only when there is something to read.
fn terminal_input(wait: Duration) -> io::Result<bool> {
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: poll(2) on one valid pollfd that lives across the call.
    let r = unsafe { libc::poll(&mut fd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    if fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the terminal hung up",
        ));
    }
    Ok(fd.revents & libc::POLLIN != 0)
}

fn list_rooms(app: &mut App, server: &str) {
    let time = clock::now();
    match control::list(server) {
        Ok(rooms) if rooms.is_empty() => app.info(time, "no rooms on the server"),
        Ok(rooms) => {
            app.info(time, format!("{} room(s) on the server:", rooms.len()));
            for r in rooms {
                app.info(
                    time,
                    format!(
                        "  {}  {}/{} members{}",
                        sanitize(&r.name),
                        r.members,
                        r.capacity,
                        if r.password { "  (password)" } else { "" }
                    ),
                );
            }
        }
        Err(e) => app.error(time, format!("/list failed: {e}")),
    }
}
