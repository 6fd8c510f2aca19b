//! Drawing the full-screen client: a pure function of [`App`] onto a ratatui frame, so it
//! is tested with `TestBackend` and insta snapshots.
//!
//! ```text
//! 09:05:07 alice (you): hi            message pane, newest at the bottom, wrapped
//! 09:05:09 * bob joined               system lines in their own colours
//! 09:05:11 alice (you): hey …          our message on its way (dim until its echo is back)
//!  room lobby │ alice (host) │ 2 members seen │ 127.0.0.1:9001  status bar
//! > typed text_                       input line
//! ```

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::app::{
    App, DERIVING, Entry, LOCK_MARK, Lock, NOT_ENCRYPTED_MARK, SystemKind, char_width, sanitize,
    str_width,
};

/// Columns a wrapped line's continuation is indented by: under the text, past the time.
const INDENT: usize = 9;
/// The input line's prompt.
const PROMPT: &str = "> ";

/// Colours user names are drawn in; a name always gets the same one.
const PALETTE: [Color; 12] = [
    Color::Red,
    Color::Green,
    Color::Yellow,
    Color::Blue,
    Color::Magenta,
    Color::Cyan,
    Color::LightRed,
    Color::LightGreen,
    Color::LightYellow,
    Color::LightBlue,
    Color::LightMagenta,
    Color::LightCyan,
];

/// The colour of a user name: FNV-1a of its bytes (stable across runs and machines, unlike
/// std's seeded hasher) picks from [`PALETTE`].
pub fn user_color(name: &str) -> Color {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    PALETTE[(h as usize) % PALETTE.len()]
}

fn system_style(kind: SystemKind) -> Style {
    match kind {
        SystemKind::Joined => Style::new().fg(Color::Green),
        SystemKind::Departed => Style::new().fg(Color::Yellow),
        SystemKind::Closed => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        SystemKind::Warning => Style::new().fg(Color::Magenta),
        SystemKind::Info => Style::new().fg(Color::Cyan),
        SystemKind::Error => Style::new().fg(Color::Red),
    }
}

/// The styled pieces of one entry, before wrapping.
fn pieces(entry: &Entry) -> Vec<(String, Style)> {
    let dim = Style::new().fg(Color::DarkGray);
    match entry {
        Entry::Chat {
            time,
            user,
            text,
            own,
            lock,
        } => {
            let mut v = vec![
                (format!("{time} "), dim),
                (
                    user.clone(),
                    Style::new()
                        .fg(user_color(user))
                        .add_modifier(Modifier::BOLD),
                ),
            ];
            if *own {
                v.push((" (you)".to_string(), dim));
            }
            v.push((": ".to_string(), Style::new()));
            match lock {
                Lock::Off => {}
                Lock::Encrypted => v.push((format!("{LOCK_MARK} "), Style::new().fg(Color::Green))),
                Lock::NotEncrypted => v.push((
                    format!("{NOT_ENCRYPTED_MARK} "),
                    Style::new().fg(Color::Yellow),
                )),
            }
            v.push((text.clone(), Style::new()));
            v
        }
        Entry::System { time, kind, text } => vec![
            (format!("{time} "), dim),
            (format!("* {text}"), system_style(*kind)),
        ],
    }
}

/// The pieces of one of our messages still on its way: all dim, ending in " …" (the
/// colours come back when the server's echo replaces it).
fn pending_pieces(entry: &Entry) -> Vec<(String, Style)> {
    let dim = Style::new().fg(Color::DarkGray);
    let mut v: Vec<(String, Style)> = pieces(entry)
        .into_iter()
        .map(|(text, _)| (text, dim))
        .collect();
    v.push((" …".to_string(), dim));
    v
}

/// Wraps styled text into rows of at most `width` columns. Breaks after a space when one
/// is in the second half of the row, else between any two characters (so CJK text, which
/// has no spaces, wraps too); continuation rows are indented by [`INDENT`] when the pane is
/// wide enough. A character wider than the whole row gets a row of its own.
pub fn wrap(pieces: &[(String, Style)], width: usize) -> Vec<Line<'static>> {
    if width == 0 {
        return Vec::new();
    }
    let indent = if width >= INDENT * 3 { INDENT } else { 0 };
    let mut rows: Vec<Vec<(char, Style)>> = Vec::new();
    let mut row: Vec<(char, Style)> = Vec::new();
    let mut used = 0;
    for (text, style) in pieces {
        for c in sanitize(text).chars() {
            let w = char_width(c);
            if used + w > width && used > indent {
                // Find a space to break after, in the second half of the row.
                let floor = indent + (width - indent) / 2;
                let mut col = 0;
                let mut cut = None;
                for (i, &(rc, _)) in row.iter().enumerate() {
                    col += char_width(rc);
                    if rc == ' ' && col > floor && i + 1 < row.len() {
                        cut = Some(i + 1);
                    }
                }
                let carry = match cut {
                    Some(i) => row.split_off(i),
                    None => Vec::new(),
                };
                rows.push(std::mem::take(&mut row));
                row.extend(std::iter::repeat_n((' ', Style::new()), indent));
                row.extend(carry);
                used = row.iter().map(|&(c, _)| char_width(c)).sum();
            }
            row.push((c, *style));
            used += w;
        }
    }
    rows.push(row);
    rows.into_iter().map(to_line).collect()
}

fn to_line(row: Vec<(char, Style)>) -> Line<'static> {
    let mut spans: Vec<Span<'static>> = Vec::new();
    let mut text = String::new();
    let mut style = None;
    for (c, s) in row {
        if style.is_some_and(|st| st != s) {
            spans.push(Span::styled(
                std::mem::take(&mut text),
                style.unwrap_or_default(),
            ));
        }
        style = Some(s);
        text.push(c);
    }
    if !text.is_empty() {
        spans.push(Span::styled(text, style.unwrap_or_default()));
    }
    Line::from(spans)
}

/// What a draw learnt that the app needs for scrolling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewInfo {
    /// Rows in the message pane.
    pub page_rows: usize,
    /// Rows the pane can scroll up (as far as has been wrapped: it grows as one scrolls).
    pub max_scroll: usize,
}

/// Draws the whole client into `frame`.
pub fn draw(frame: &mut Frame<'_>, app: &App) -> ViewInfo {
    let [pane, status, input] = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let info = draw_messages(frame, pane, app);
    draw_status(frame, status, app);
    draw_input(frame, input, app);
    info
}

fn draw_messages(frame: &mut Frame<'_>, area: Rect, app: &App) -> ViewInfo {
    let width = usize::from(area.width);
    let height = usize::from(area.height);
    // Wrap from the newest entry back, only as far as the view (plus a page, so PageUp
    // has somewhere to go) needs: a long scrollback of long lines costs nothing per frame.
    let need = height.saturating_mul(2).saturating_add(app.scroll());
    let mut chunks: Vec<Vec<Line<'static>>> = Vec::new();
    let mut count = 0;
    // Our messages on their way come last, below everything the room has confirmed.
    let pending = app.pending().rev().map(pending_pieces);
    let confirmed = app.entries().iter().rev().map(pieces);
    for entry in pending.chain(confirmed) {
        if count >= need {
            break;
        }
        let rows = wrap(&entry, width);
        count += rows.len();
        chunks.push(rows);
    }
    let mut rows: Vec<Line<'static>> = chunks.into_iter().rev().flatten().collect();
    if app.entries().is_empty() && app.pending().len() == 0 {
        rows.push(Line::styled(
            "Type a message and press Enter; /help lists the commands.",
            Style::new().fg(Color::DarkGray),
        ));
    }
    let max_scroll = rows.len().saturating_sub(height);
    let scroll = app.scroll().min(max_scroll);
    let end = rows.len() - scroll;
    let start = end.saturating_sub(height);
    let visible: Vec<Line<'static>> = rows.drain(start..end).collect();
    // Newest at the bottom: pad above when there are fewer rows than the pane.
    let pad = height.saturating_sub(visible.len());
    let area = Rect {
        y: area.y + pad as u16,
        height: area.height - pad as u16,
        ..area
    };
    frame.render_widget(Paragraph::new(visible), area);
    ViewInfo {
        page_rows: height,
        max_scroll,
    }
}

fn draw_status(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let bar = Style::new().fg(Color::White).bg(Color::Blue);
    let role = if app.host { "host" } else { "member" };
    let n = app.members_seen();
    // Most useful first: a narrow terminal cuts the end.
    let mut text = String::new();
    if app.scroll() > 0 {
        text.push_str(&format!(" ↑{} rows (PgDn) │", app.scroll()));
    }
    if app.deriving() {
        text.push_str(&format!(" {LOCK_MARK} {DERIVING} │"));
    } else if app.encrypted() {
        text.push_str(&format!(" {LOCK_MARK} encrypted"));
        if app.replays() > 0 {
            let n = app.replays();
            text.push_str(&format!(
                " ({n} replay{} dropped)",
                if n == 1 { "" } else { "s" }
            ));
        }
        text.push_str(" │");
    }
    text.push_str(&format!(
        " room {} │ {} ({role}) │ {n} member{} seen │ {}",
        app.room,
        sanitize(&app.me),
        if n == 1 { "" } else { "s" },
        app.server,
    ));
    let width = usize::from(area.width);
    let pad = width.saturating_sub(str_width(&text));
    text.extend(std::iter::repeat_n(' ', pad));
    frame.render_widget(Paragraph::new(Line::styled(text, bar)), area);
}

fn draw_input(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let prompt_w = PROMPT.len() as u16;
    let room = usize::from(area.width.saturating_sub(prompt_w));
    let (shown, col) = app.editor.window(room);
    let line = Line::from(vec![
        Span::styled(PROMPT, Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(shown.to_string()),
    ]);
    frame.render_widget(Paragraph::new(line), area);
    let x = area.x + (prompt_w + col as u16).min(area.width.saturating_sub(1));
    frame.set_cursor_position(Position::new(x, area.y));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Clock;
    use ocm::client::SessionEvent;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn at(s: u8) -> Clock {
        Clock { h: 12, m: 34, s }
    }

    fn render(app: &mut App, w: u16, h: u16) -> TestBackend {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        let mut info = None;
        terminal.draw(|f| info = Some(draw(f, app))).unwrap();
        if let Some(i) = info {
            app.set_view(i.page_rows, i.max_scroll);
        }
        terminal.backend().clone()
    }

    fn chat(app: &mut App, s: u8, user: &str, text: &str) {
        app.on_event(
            &SessionEvent::Message {
                seq: 1,
                user: user.into(),
                text: text.into(),
                history: false,
            },
            at(s),
        );
    }

    fn joined(app: &mut App, s: u8, user: &str) {
        app.on_event(
            &SessionEvent::Joined {
                user: user.into(),
                history: false,
            },
            at(s),
        );
    }

    /// A small conversation used by several snapshots (the README's sample has its own,
    /// below).
    pub fn sample_app() -> App {
        let mut app = App::new("127.0.0.1:9001", "lobby", "alice", true);
        joined(&mut app, 0, "alice");
        joined(&mut app, 2, "bob");
        chat(&mut app, 5, "bob", "hi alice! 👋");
        chat(&mut app, 9, "alice", "hello bob, welcome to the lobby");
        joined(&mut app, 12, "けんじ");
        chat(&mut app, 15, "けんじ", "こんにちは、みなさん。");
        app.on_event(&SessionEvent::Missed(2), at(20));
        app.on_event(
            &SessionEvent::TimedOut {
                user: "bob".into(),
                history: false,
            },
            at(31),
        );
        for c in "see you".chars() {
            app.editor.insert(c);
        }
        app
    }

    #[test]
    fn conversation_snapshot() {
        let mut app = sample_app();
        let backend = render(&mut app, 60, 12);
        insta::assert_snapshot!(backend);
        // The cursor sits after "> see you".
        let mut terminal = Terminal::new(backend).unwrap();
        assert_eq!(
            terminal.get_cursor_position().unwrap(),
            Position::new(9, 11)
        );
    }

    #[test]
    fn events_and_room_closed_snapshot() {
        let mut app = App::new("[::1]:9001", "本の部屋", "bob", false);
        joined(&mut app, 1, "bob");
        app.on_event(
            &SessionEvent::RateLimited {
                limit: "20 messages/s, burst 40".into(),
            },
            at(2),
        );
        app.on_event(
            &SessionEvent::Left {
                user: "carol".into(),
                history: false,
            },
            at(3),
        );
        app.on_event(
            &SessionEvent::Left {
                user: "alice".into(),
                history: false,
            },
            at(4),
        );
        app.on_event(
            &SessionEvent::RoomClosed {
                reason: "host left".into(),
            },
            at(4),
        );
        app.error(at(5), "not sent: the message is empty");
        insta::assert_snapshot!(render(&mut app, 50, 10));
    }

    #[test]
    fn long_japanese_line_wraps_snapshot() {
        let mut app = App::new("127.0.0.1:9001", "lobby", "alice", false);
        chat(
            &mut app,
            1,
            "さくら",
            "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。",
        );
        chat(
            &mut app,
            2,
            "bob",
            "a long English line should break between words when it can, not in the middle",
        );
        insta::assert_snapshot!(render(&mut app, 40, 12));
    }

    #[test]
    fn status_bar_and_input_window_snapshot() {
        let mut app = App::new("127.0.0.1:9001", "lobby", "alice", false);
        for i in 0..30 {
            chat(&mut app, i, "bob", &format!("message {i}"));
        }
        app.on_key(
            crossterm::event::KeyEvent::new(
                crossterm::event::KeyCode::PageUp,
                crossterm::event::KeyModifiers::NONE,
            ),
            at(0),
        );
        // Only after a draw does the app know how far it may scroll.
        render(&mut app, 70, 8);
        app.on_key(
            crossterm::event::KeyEvent::new(
                crossterm::event::KeyCode::PageUp,
                crossterm::event::KeyModifiers::NONE,
            ),
            at(0),
        );
        app.editor
            .set("日本語の長い入力行はカーソルが見えるように左へずれる。".repeat(2));
        insta::assert_snapshot!(render(&mut app, 70, 8));
    }

    /// The sample in README.md ("The terminal client"); `readme_shows_this_sample` keeps
    /// them in step.
    #[test]
    fn readme_sample_snapshot() {
        let mut app = readme_app();
        insta::assert_snapshot!(render(&mut app, 72, 14));
    }

    /// The README's sample screen is what the client draws for that conversation, line for
    /// line (trailing blanks and the empty top rows aside).
    #[test]
    fn readme_shows_this_sample() {
        let backend = render(&mut readme_app(), 72, 14);
        let buffer = backend.buffer();
        let mut drawn = Vec::new();
        for y in 0..buffer.area.height {
            let mut line = String::new();
            let mut x = 0;
            while x < buffer.area.width {
                let symbol = buffer[(x, y)].symbol();
                line.push_str(symbol);
                // A wide character covers the next cell too.
                x += str_width(symbol).max(1) as u16;
            }
            drawn.push(line.trim_end().to_string());
        }
        let first = drawn.iter().position(|l| !l.is_empty()).expect("a line");
        let readme = include_str!("../../../README.md");
        let start = readme
            .find(&format!("```text\n{}\n", drawn[first]))
            .expect("the README has a sample starting with the first drawn line");
        let sample: Vec<&str> = readme[start..]
            .lines()
            .skip(1)
            .take_while(|l| *l != "```")
            .collect();
        assert_eq!(
            sample,
            drawn[first..],
            "README.md's sample and the drawing differ"
        );
    }

    fn readme_app() -> App {
        let mut app = App::new("127.0.0.1:9001", "lobby", "alice", true);
        app.info(
            at(0),
            "created room lobby as alice; /help lists the commands",
        );
        joined(&mut app, 0, "alice");
        joined(&mut app, 4, "bob");
        chat(&mut app, 6, "bob", "hi alice! 👋");
        chat(&mut app, 9, "alice", "hello bob, welcome to the lobby");
        joined(&mut app, 12, "けんじ");
        chat(
            &mut app,
            15,
            "けんじ",
            "こんにちは！日本語のメッセージも長ければ、このように折り返して表示されます。",
        );
        chat(&mut app, 21, "bob", "nice, wide characters wrap correctly");
        app.on_event(&SessionEvent::Missed(2), at(30));
        app.on_event(
            &SessionEvent::Left {
                user: "bob".into(),
                history: false,
            },
            at(41),
        );
        for c in "see you tomorrow".chars() {
            app.editor.insert(c);
        }
        app
    }

    /// What a member sees through a bad network: history at join set apart, recovery and
    /// reconnection told in words, and its own messages dimmed with "…" until confirmed.
    #[test]
    fn recovery_and_pending_messages_snapshot() {
        let mut app = App::new("127.0.0.1:9001", "lobby", "alice", false);
        app.on_event(
            &SessionEvent::Message {
                seq: 7,
                user: "bob".into(),
                text: "did anyone see the build?".into(),
                history: true,
            },
            at(0),
        );
        app.on_event(
            &SessionEvent::Message {
                seq: 8,
                user: "carol".into(),
                text: "yes, green".into(),
                history: true,
            },
            at(0),
        );
        joined(&mut app, 0, "alice");
        chat(&mut app, 3, "bob", "welcome alice");
        app.on_event(&SessionEvent::Reconnecting, at(10));
        app.on_event(&SessionEvent::Reconnected, at(11));
        app.on_event(&SessionEvent::Recovered { count: 12 }, at(11));
        app.on_event(&SessionEvent::Unrecoverable { count: 3 }, at(11));
        app.sending(1, "thanks! my wifi dropped", at(12));
        app.sending(2, "日本語も送ります", at(12));
        app.on_event(&SessionEvent::Confirmed { client_seq: 1 }, at(12));
        chat(&mut app, 12, "alice", "thanks! my wifi dropped");
        let backend = render(&mut app, 72, 16);
        // The confirmed message has its colours; the one on its way is dim.
        assert_eq!(backend.buffer()[(22, 12)].fg, Color::Reset);
        assert_eq!(backend.buffer()[(22, 13)].fg, Color::DarkGray);
        assert_eq!(backend.buffer()[(9, 13)].fg, Color::DarkGray);
        insta::assert_snapshot!(backend);
    }

    /// After a resize the pane is wrapped at the new width on the very next draw: nothing
    /// is kept from the previous one.
    #[test]
    fn a_resize_rewraps_at_once() {
        let mut app = App::new("127.0.0.1:9001", "lobby", "alice", false);
        let text = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。";
        chat(&mut app, 1, "さくら", text);
        let mut terminal = Terminal::new(TestBackend::new(60, 8)).unwrap();
        terminal
            .draw(|f| {
                draw(f, &app);
            })
            .unwrap();
        terminal.backend_mut().resize(30, 8);
        terminal
            .draw(|f| {
                draw(f, &app);
            })
            .unwrap();
        let buffer = terminal.backend().buffer();
        let mut shown = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                shown.push_str(buffer[(x, y)].symbol());
            }
        }
        let shown: String = shown.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(shown.contains(text), "{shown}");
    }

    #[test]
    fn page_up_reaches_the_oldest_line_of_a_long_scrollback() {
        let mut app = App::new("s", "r", "me", false);
        for i in 0..200 {
            chat(&mut app, 0, "bob", &format!("message {i}"));
        }
        let page_up = crossterm::event::KeyEvent::new(
            crossterm::event::KeyCode::PageUp,
            crossterm::event::KeyModifiers::NONE,
        );
        let mut top = String::new();
        for _ in 0..100 {
            let backend = render(&mut app, 30, 6);
            top = (0..30)
                .map(|x| backend.buffer()[(x, 0)].symbol().to_string())
                .collect();
            if top.contains("message 0 ") {
                break;
            }
            app.on_key(page_up, at(0));
        }
        assert!(top.starts_with("12:34:00 bob: message 0 "), "{top:?}");
        assert_eq!(app.scroll(), 200 - 4);
    }

    #[test]
    fn tiny_sizes_do_not_panic() {
        let mut app = sample_app();
        for (w, h) in [(1, 1), (1, 3), (2, 3), (3, 4), (10, 2), (0, 0), (5, 0)] {
            render(&mut app, w, h);
        }
    }

    #[test]
    fn wrap_keeps_every_character_and_the_width() {
        let text = "ab cd 日本語テキスト x".repeat(7);
        for width in 1..40 {
            let rows = wrap(&[(text.clone(), Style::new())], width);
            let joined: String = rows
                .iter()
                .flat_map(|l| l.spans.iter().map(|s| s.content.to_string()))
                .collect::<String>()
                .replace(' ', "");
            assert_eq!(joined, text.replace(' ', ""), "width {width}");
            for r in &rows {
                assert!(r.width() <= width.max(2), "width {width}: {r:?}");
            }
        }
    }

    #[test]
    fn user_colours_are_stable() {
        assert_eq!(user_color("alice"), user_color("alice"));
        let distinct: std::collections::HashSet<_> = ["alice", "bob", "carol", "dave", "けんじ"]
            .iter()
            .map(|n| format!("{:?}", user_color(n)))
            .collect();
        assert!(distinct.len() >= 3);
    }

    /// A private room (`--e2e`): the status bar says so, decrypted messages carry the lock
    /// (our own echo and history included), a plain-text message is marked, a message
    /// under another passphrase is a notice, never text, and a replay is not shown.
    #[test]
    fn encrypted_conversation_snapshot() {
        use ocm::client::e2e::{RoomCrypto, RoomKey};
        // A fixed key: the snapshot must not depend on 600 000 PBKDF2 rounds.
        let key = RoomKey::from_bytes([7; 32]);
        let mut bob = RoomCrypto::new(&key, "lobby");
        let mut mallory = RoomCrypto::new(&RoomKey::from_bytes([9; 32]), "lobby");
        let mut app = App::new("127.0.0.1:9001", "lobby", "alice", true);
        app.key_deriving(at(0));
        let earlier = bob.seal("the plan is in the usual place", "bob").unwrap();
        app.on_event(
            &SessionEvent::Message {
                seq: 1,
                user: "bob".into(),
                text: earlier.clone(),
                history: true,
            },
            at(0),
        );
        joined(&mut app, 1, "alice");
        // While the key is derived: said in the pane and the status bar, events held.
        let waiting = format!("{:?}", render(&mut app, 78, 4));
        assert!(
            waiting.contains("🔒 deriving key… │ room lobby"),
            "{waiting}"
        );
        assert!(!waiting.contains("alice joined"), "{waiting}");
        app.key_ready(RoomCrypto::new(&key, "lobby"), at(1));
        let hi = bob
            .seal("hi alice, only we can read this 🔐", "bob")
            .unwrap();
        chat(&mut app, 2, "bob", &hi);
        // The same envelope again (a replay by the network or the server): not shown.
        chat(&mut app, 3, "bob", &hi);
        let own = app.outgoing("good, the server sees noise").unwrap();
        assert!(own.starts_with("ocm-e2e-v1:"), "{own}");
        chat(&mut app, 4, "alice", &own);
        chat(&mut app, 5, "carol", "hello? I forgot --e2e");
        let guess = mallory.seal("let me in", "mallory").unwrap();
        chat(&mut app, 6, "mallory", &guess);
        app.sending(9, "on its way", at(7));
        insta::assert_snapshot!(render(&mut app, 78, 14));
        assert_eq!(app.replays(), 1);
    }
}
