//! The client's state and key handling, with no terminal or network I/O, so every rule
//! here is unit-tested: what an event looks like on screen, the input line's editing and
//! history, commands, scrollback.
//!
//! [`crate::tui`] feeds it keys and session events and performs the [`Action`]s it returns;
//! [`crate::view`] draws it.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
use std::fmt;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ocm::client::e2e::{MAX_PLAINTEXT, RoomCrypto, Shown};
use ocm::client::session::{SessionEvent, check_message};
use ocm::protocol::MAX_MESSAGE;
use unicode_width::UnicodeWidthChar;

/// Lines kept in the scrollback; older ones are dropped (a chat client runs for days).
pub const MAX_ENTRIES: usize = 5000;
/// Names remembered for "members seen" (a room holds at most 65535 members; this bounds
/// what a misbehaving server can make us store).
pub const MAX_MEMBERS_SEEN: usize = 65_536;
/// Lines kept in the input history.
pub const MAX_HISTORY: usize = 500;

/// A wall-clock time of day, shown in front of every line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clock {
    /// Hours, 0-23.
    pub h: u8,
    /// Minutes, 0-59.
    pub m: u8,
    /// Seconds, 0-59 (60 on a leap second).
    pub s: u8,
}

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}:{:02}", self.h, self.m, self.s)
    }
}

/// Replaces what must never reach a terminal: control characters (the protocol refuses
/// them, but this is the last line of defence for anything printed) and the Unicode
/// bidirectional overrides and isolates, which can make a line read differently from what
/// was sent. Each becomes U+FFFD. Borrows when nothing needs replacing.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    fn bad(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    }
    if s.chars().any(bad) {
        Cow::Owned(
            s.chars()
                .map(|c| if bad(c) { '\u{FFFD}' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

/// What kind of system line an entry is; the view gives each its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemKind {
    /// A member joined.
    Joined,
    /// A member left or timed out.
    Departed,
    /// The room closed.
    Closed,
    /// Events were missed, or a message of ours was rate limited.
    Warning,
    /// Help, LIST output, and other notes of the client itself.
    Info,
    /// Something we tried failed.
    Error,
}

/// One line of the message pane (before wrapping). Texts are already sanitized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A chat message.
    Chat {
        /// When it arrived.
        time: Clock,
        /// Who sent it.
        user: String,
        /// What they said.
        text: String,
        /// Whether we sent it.
        own: bool,
        /// Whether it came encrypted (only in a private room).
        lock: Lock,
    },
    /// Something that happened to the room, or a note from the client.
    System {
        /// When.
        time: Clock,
        /// Which kind (for colour).
        kind: SystemKind,
        /// The words, e.g. `bob joined`.
        text: String,
    },
}

/// How a chat message travelled, as far as this client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// The room is not private here (no `--e2e`): nothing to say.
    Off,
    /// Decrypted: only holders of the passphrase could have written or read it.
    Encrypted,
    /// In a private room, a message that came as plain text (the server and the network
    /// could read it, and anyone could have sent it under that name).
    NotEncrypted,
}

/// The mark in front of an encrypted message's text (plain mode prints it too).
pub const LOCK_MARK: &str = "🔒";
/// The mark in front of a plain-text message in a private room.
pub const NOT_ENCRYPTED_MARK: &str = "(not encrypted)";
/// What a message sealed under another passphrase reads as, after the sender's name (other
/// failed checks name their own reason, each starting "could not be decrypted").
#[cfg(test)]
pub const UNDECRYPTABLE: &str = "could not be decrypted (different passphrase?)";

/// "1 message" or "3 messages".
fn messages(n: impl Into<u64>) -> String {
    match n.into() {
        1 => "1 message".to_string(),
        n => format!("{n} messages"),
    }
}

/// The line that opens the history fetched at join.
pub const HISTORY_START: &str = "— earlier messages —";
/// The line that closes it: what follows happened while we are here.
pub const HISTORY_END: &str = "— end of earlier messages —";

/// How a session event reads, shared by the full-screen and the plain front end.
/// Returns the entry (`None` for events that only change state, such as a confirmation),
/// and whether the event ends our session.
///
/// The match names every variant (a new one must be given a reading here); the helpers
/// word one group each.
pub fn describe(event: &SessionEvent, me: &str, time: Clock) -> (Option<Entry>, Option<End>) {
    let sys = |(kind, text)| Entry::System { time, kind, text };
    match event {
        SessionEvent::Message { user, text, .. } => (
            Some(Entry::Chat {
                time,
                user: sanitize(user).into_owned(),
                text: sanitize(text).into_owned(),
                own: user == me,
                lock: Lock::Off,
            }),
            None,
        ),
        SessionEvent::Confirmed { .. } => (None, None),
        SessionEvent::Joined { .. }
        | SessionEvent::Left { .. }
        | SessionEvent::TimedOut { .. }
        | SessionEvent::Resumed { .. } => (member_notice(event, me).map(sys), None),
        SessionEvent::RateLimited { .. }
        | SessionEvent::Missed(_)
        | SessionEvent::Unrecoverable { .. }
        | SessionEvent::Recovered { .. }
        | SessionEvent::SendFailed { .. } => (delivery_notice(event).map(sys), None),
        SessionEvent::Reconnecting
        | SessionEvent::Reconnected
        | SessionEvent::Rejoined
        | SessionEvent::FellBackToV1 => (link_notice(event).map(sys), None),
        SessionEvent::RoomClosed { .. } | SessionEvent::Dropped | SessionEvent::Lost { .. } => {
            match ending(event) {
                Some((kind, text, end)) => (Some(sys((kind, text))), Some(end)),
                None => (None, None),
            }
        }
    }
}

/// What a member's coming, going or coming back reads as (`None` for other events).
fn member_notice(event: &SessionEvent, me: &str) -> Option<(SystemKind, String)> {
    Some(match event {
        SessionEvent::Joined { user, .. } => {
            (SystemKind::Joined, format!("{} joined", sanitize(user)))
        }
        SessionEvent::Left { user, .. } => {
            (SystemKind::Departed, format!("{} left", sanitize(user)))
        }
        SessionEvent::TimedOut {
            user,
            history: false,
        } if user == me => (
            SystemKind::Warning,
            format!(
                "{} timed out (the server stopped hearing you)",
                sanitize(user)
            ),
        ),
        SessionEvent::TimedOut { user, .. } => (
            SystemKind::Departed,
            format!("{} timed out", sanitize(user)),
        ),
        SessionEvent::Resumed { user } => {
            (SystemKind::Info, format!("{} reconnected", sanitize(user)))
        }
        _ => return None,
    })
}

/// What happened to messages on the way reads as: dropped, missed, recovered, not sent
/// (`None` for other events).
fn delivery_notice(event: &SessionEvent) -> Option<(SystemKind, String)> {
    Some(match event {
        SessionEvent::RateLimited { limit } => (
            SystemKind::Warning,
            format!(
                "rate limited: {}; a message of yours was dropped",
                sanitize(limit)
            ),
        ),
        SessionEvent::Missed(n) => (SystemKind::Warning, format!("{} missed", messages(*n))),
        SessionEvent::Unrecoverable { count } => (
            SystemKind::Warning,
            format!(
                "{} could not be recovered (older than the server keeps)",
                messages(*count)
            ),
        ),
        SessionEvent::Recovered { count } => {
            (SystemKind::Info, format!("{} recovered", messages(*count)))
        }
        SessionEvent::SendFailed { .. } => (
            SystemKind::Error,
            "a message of yours could not be sent (the server never took it)".into(),
        ),
        _ => return None,
    })
}

/// What the state of our link to the server reads as, while it lasts (`None` for other
/// events).
fn link_notice(event: &SessionEvent) -> Option<(SystemKind, String)> {
    Some(match event {
        SessionEvent::Reconnecting => (
            SystemKind::Warning,
            "the server stopped answering; reconnecting…".into(),
        ),
        SessionEvent::Reconnected => (SystemKind::Info, "reconnected".into()),
        SessionEvent::Rejoined => (
            SystemKind::Info,
            "reconnected (joined the room again)".into(),
        ),
        SessionEvent::FellBackToV1 => (
            SystemKind::Warning,
            "the server is version 1: lost messages cannot be recovered".into(),
        ),
        _ => return None,
    })
}

/// What an event that ends our session reads as, and how it ends (`None` for other
/// events).
fn ending(event: &SessionEvent) -> Option<(SystemKind, String, End)> {
    Some(match event {
        SessionEvent::RoomClosed { reason } => {
            let reason = sanitize(reason).into_owned();
            (
                SystemKind::Closed,
                format!("room closed: {reason}"),
                End::Closed(reason),
            )
        }
        SessionEvent::Dropped => (
            SystemKind::Closed,
            "the server dropped you from the room after a silence".into(),
            End::TimedOut,
        ),
        SessionEvent::Lost { reason } => {
            let reason = sanitize(reason).into_owned();
            (SystemKind::Closed, reason.clone(), End::Lost(reason))
        }
        _ => return None,
    })
}

/// [`describe`] in a private room: every message (our own echoes and the history too) goes
/// through [`RoomCrypto::open`] first. An encrypted one is shown with its plaintext and a
/// lock; a plain-text one marked not encrypted; a replay not at all (the crypto counts it);
/// one that fails a check as a notice naming the sender, never as text. Other events read
/// as [`describe`] says.
pub fn describe_private(
    event: &SessionEvent,
    me: &str,
    time: Clock,
    crypto: &mut RoomCrypto,
) -> (Option<Entry>, Option<End>) {
    let SessionEvent::Message { user, text, .. } = event else {
        return describe(event, me, time);
    };
    let chat = |text: &str, lock| Entry::Chat {
        time,
        user: sanitize(user).into_owned(),
        text: sanitize(text).into_owned(),
        own: user == me,
        lock,
    };
    let entry = match crypto.open(text, user) {
        Shown::Encrypted(plain) => Some(chat(&plain, Lock::Encrypted)),
        Shown::NotEncrypted(plain) => Some(chat(&plain, Lock::NotEncrypted)),
        Shown::Replay => None,
        Shown::Undecryptable(e) => Some(Entry::System {
            time,
            kind: SystemKind::Warning,
            text: format!("{}: {e}", sanitize(user)),
        }),
    };
    (entry, None)
}

/// Seals `text` for a private room, or says why it cannot go (over [`MAX_PLAINTEXT`]
/// bytes, which leaves room for the envelope within a message).
pub fn seal(crypto: &mut RoomCrypto, text: &str, me: &str) -> Result<String, String> {
    if text.len() > MAX_PLAINTEXT {
        return Err(format!(
            "it is {} bytes long; an encrypted message is at most {MAX_PLAINTEXT} bytes",
            text.len()
        ));
    }
    crypto.seal(text, me).map_err(|e| e.to_string())
}

/// Whether a room event is from the history fetched at join (`None` for the other events,
/// which neither open nor close it).
pub fn is_history(event: &SessionEvent) -> Option<bool> {
    match event {
        SessionEvent::Message { history, .. }
        | SessionEvent::Joined { history, .. }
        | SessionEvent::Left { history, .. }
        | SessionEvent::TimedOut { history, .. } => Some(*history),
        SessionEvent::RoomClosed { .. } => Some(false),
        _ => None,
    }
}

/// Follows whether the stream is in the history fetched at join, and gives the separator
/// line to show before `event` when it opens or closes it.
pub fn history_mark(in_history: &mut bool, event: &SessionEvent, time: Clock) -> Option<Entry> {
    let now = is_history(event)?;
    if now == *in_history {
        return None;
    }
    *in_history = now;
    Some(Entry::System {
        time,
        kind: SystemKind::Info,
        text: if now { HISTORY_START } else { HISTORY_END }.to_string(),
    })
}

/// Why a session ended; decides the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// We chose to leave (a command, Ctrl-C, a signal, end of input).
    Left,
    /// The room closed under us; the server's reason.
    Closed(String),
    /// The server dropped us for silence.
    TimedOut,
    /// The server stopped answering.
    Lost(String),
}

/// What the user's line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send this message.
    Say(String),
    /// `/leave`, `/quit`, `/exit`, `/q` or a bare `exit`.
    Leave,
    /// `/list`: the server's rooms.
    List,
    /// `/help`.
    Help,
    /// A `/word` that is not a command.
    Unknown(String),
    /// Nothing but spaces.
    Nothing,
}

/// Parses one submitted line. A line starting with `//` sends the rest with one `/`, so a
/// message may start with a slash.
pub fn parse_command(line: &str) -> Command {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Command::Nothing;
    }
    if trimmed == "exit" {
        return Command::Leave;
    }
    if let Some(rest) = line.strip_prefix("//") {
        return Command::Say(format!("/{rest}"));
    }
    if let Some(cmd) = trimmed.strip_prefix('/') {
        let word = cmd.split_whitespace().next().unwrap_or("");
        return match word.to_lowercase().as_str() {
            "leave" | "quit" | "exit" | "q" => Command::Leave,
            "list" => Command::List,
            "help" | "?" => Command::Help,
            _ => Command::Unknown(format!("/{word}")),
        };
    }
    Command::Say(line.to_string())
}

/// The help text, one line each.
pub const HELP: &[&str] = &[
    "Type a message and press Enter to send it to the room.",
    "/list  rooms on the server   /help  this help",
    "/leave, /quit, /exit, exit or Ctrl-C  leave the room (the host's leaving closes it)",
    "//text  sends a message that starts with '/'",
    "Left/Right/Home/End/Backspace/Delete edit, Ctrl-A/E/U/K/W as in a shell",
    "Up/Down  input history   PageUp/PageDown  scroll the messages",
];

/// A one-line text editor: a string and a cursor on a character boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineEditor {
    text: String,
    cursor: usize,
}

impl LineEditor {
    /// The text typed so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The cursor as a byte offset into [`LineEditor::text`].
    #[cfg(test)]
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// The cursor's column: the display width of the text before it (a CJK character
    /// takes two columns).
    pub fn cursor_col(&self) -> usize {
        str_width(&self.text[..self.cursor])
    }

    /// Replaces the text and puts the cursor at its end.
    pub fn set(&mut self, text: String) {
        self.cursor = text.len();
        self.text = text;
    }

    /// Empties the editor and returns what it held.
    pub fn take(&mut self) -> String {
        self.cursor = 0;
        std::mem::take(&mut self.text)
    }

    /// Inserts `c` at the cursor. Control characters are ignored; returns false when the
    /// line would exceed [`MAX_MESSAGE`] bytes (nothing is inserted then).
    pub fn insert(&mut self, c: char) -> bool {
        if c.is_control() {
            return true;
        }
        if self.text.len() + c.len_utf8() > MAX_MESSAGE {
            return false;
        }
        self.text.insert(self.cursor, c);
        self.cursor += c.len_utf8();
        true
    }

    /// Inserts pasted text: newlines and tabs become spaces, other control characters
    /// are dropped. Returns false if it was cut at the length limit.
    pub fn insert_str(&mut self, s: &str) -> bool {
        for c in s.chars() {
            let c = match c {
                '\r' => continue,
                '\n' | '\t' => ' ',
                c => c,
            };
            if !self.insert(c) {
                return false;
            }
        }
        true
    }

    fn prev_boundary(&self) -> Option<usize> {
        self.text[..self.cursor]
            .char_indices()
            .next_back()
            .map(|(i, _)| i)
    }

    fn next_boundary(&self) -> Option<usize> {
        self.text[self.cursor..]
            .chars()
            .next()
            .map(|c| self.cursor + c.len_utf8())
    }

    /// Moves one character left.
    pub fn left(&mut self) {
        if let Some(i) = self.prev_boundary() {
            self.cursor = i;
        }
    }

    /// Moves one character right.
    pub fn right(&mut self) {
        if let Some(i) = self.next_boundary() {
            self.cursor = i;
        }
    }

    /// Moves to the start.
    pub fn home(&mut self) {
        self.cursor = 0;
    }

    /// Moves to the end.
    pub fn end(&mut self) {
        self.cursor = self.text.len();
    }

    /// Deletes the character before the cursor.
    pub fn backspace(&mut self) {
        if let Some(i) = self.prev_boundary() {
            self.text.replace_range(i..self.cursor, "");
            self.cursor = i;
        }
    }

    /// Deletes the character under the cursor.
    pub fn delete(&mut self) {
        if let Some(i) = self.next_boundary() {
            self.text.replace_range(self.cursor..i, "");
        }
    }

    /// Deletes from the start to the cursor (Ctrl-U).
    pub fn kill_to_start(&mut self) {
        self.text.replace_range(..self.cursor, "");
        self.cursor = 0;
    }

    /// Deletes from the cursor to the end (Ctrl-K).
    pub fn kill_to_end(&mut self) {
        self.text.truncate(self.cursor);
    }

    /// Deletes the word before the cursor and the spaces after it (Ctrl-W).
    pub fn delete_word_back(&mut self) {
        let before = &self.text[..self.cursor];
        let trimmed = before.trim_end_matches(' ');
        let start = trimmed
            .char_indices()
            .rev()
            .find(|&(_, c)| c == ' ')
            .map_or(0, |(i, c)| i + c.len_utf8());
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// The part of the line to show in `width` columns so that the cursor is visible, and
    /// the cursor's column within it.
    pub fn window(&self, width: usize) -> (&str, usize) {
        if width == 0 {
            return ("", 0);
        }
        // Drop characters from the left until the cursor fits (leaving its own column).
        let mut start = 0;
        let mut col = self.cursor_col();
        while col >= width {
            let Some(c) = self.text[start..].chars().next() else {
                break;
            };
            start += c.len_utf8();
            col -= char_width(c);
        }
        let mut end = start;
        let mut used = 0;
        for c in self.text[start..].chars() {
            let w = char_width(c);
            if used + w > width {
                break;
            }
            used += w;
            end += c.len_utf8();
        }
        (&self.text[start..end], col)
    }
}

/// Display width of one character in a terminal (0 for combining marks).
pub fn char_width(c: char) -> usize {
    c.width().unwrap_or(0)
}

/// Display width of a string.
pub fn str_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// Lines sent before, walked with Up and Down like a shell's history.
#[derive(Debug, Clone, Default)]
pub struct History {
    lines: VecDeque<String>,
    /// Index into `lines` while browsing, `None` while editing a new line.
    pos: Option<usize>,
    /// The line being typed before browsing began, restored after the newest entry.
    draft: String,
}

impl History {
    /// Records a submitted line (not a blank one, nor a repeat of the last).
    pub fn push(&mut self, line: &str) {
        self.pos = None;
        self.draft.clear();
        if line.trim().is_empty() || self.lines.back().is_some_and(|l| l == line) {
            return;
        }
        if self.lines.len() == MAX_HISTORY {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_string());
    }

    /// Up: puts the previous line into `editor`.
    pub fn up(&mut self, editor: &mut LineEditor) {
        let pos = match self.pos {
            None if self.lines.is_empty() => return,
            None => {
                self.draft = editor.text().to_string();
                self.lines.len() - 1
            }
            Some(0) => return,
            Some(p) => p - 1,
        };
        self.pos = Some(pos);
        if let Some(line) = self.lines.get(pos) {
            editor.set(line.clone());
        }
    }

    /// Down: the next line, or back to the draft after the newest.
    pub fn down(&mut self, editor: &mut LineEditor) {
        let Some(p) = self.pos else {
            return;
        };
        if p + 1 < self.lines.len() {
            self.pos = Some(p + 1);
            if let Some(line) = self.lines.get(p + 1) {
                editor.set(line.clone());
            }
        } else {
            self.pos = None;
            editor.set(std::mem::take(&mut self.draft));
        }
    }

    /// How many lines are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lines.len()
    }
}

/// What the event loop must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond redrawing.
    None,
    /// Send this message.
    Send(String),
    /// Ask the server for its rooms.
    List,
    /// Leave the room and exit.
    Leave,
}

/// The whole state of the full-screen client.
#[derive(Debug)]
pub struct App {
    /// The server address shown in the status bar.
    pub server: String,
    /// The room.
    pub room: String,
    /// Our user name.
    pub me: String,
    /// Whether we are the room's host.
    pub host: bool,
    entries: VecDeque<Entry>,
    /// The input line.
    pub editor: LineEditor,
    /// The input history.
    pub history: History,
    scroll: usize,
    max_scroll: usize,
    page: usize,
    members: BTreeSet<String>,
    ended: Option<End>,
    /// Our messages sent and not yet confirmed, oldest first, by number: drawn dimmed
    /// below the others until their own event comes back.
    pending: VecDeque<(u32, Entry)>,
    /// Whether the last room event was from the history fetched at join.
    in_history: bool,
    /// Messages told recovered by the last line of the pane, when it is such a notice: on
    /// a bad network recoveries come one after another, and one line counts them all.
    recovered_run: Option<u64>,
    /// The room's encryption when it is private (`--e2e`): messages are sealed before they
    /// are sent and opened before they are shown.
    crypto: Option<RoomCrypto>,
    /// While the room key is being derived (a private room, before [`App::key_ready`]):
    /// the session's events, held to be shown once they can be opened.
    deriving: Option<VecDeque<SessionEvent>>,
    /// Events dropped from `deriving` beyond [`MAX_ENTRIES`].
    deriving_dropped: u64,
}

/// Words for the wait while the room key is derived.
pub const DERIVING: &str = "deriving key…";

impl App {
    /// A fresh state for member `me` of `room` on `server`.
    pub fn new(server: &str, room: &str, me: &str, host: bool) -> App {
        App {
            server: sanitize(server).into_owned(),
            room: sanitize(room).into_owned(),
            me: me.to_string(),
            host,
            entries: VecDeque::new(),
            editor: LineEditor::default(),
            history: History::default(),
            scroll: 0,
            max_scroll: 0,
            page: 10,
            members: BTreeSet::new(),
            ended: None,
            pending: VecDeque::new(),
            in_history: false,
            recovered_run: None,
            crypto: None,
            deriving: None,
            deriving_dropped: 0,
        }
    }

    /// Makes the room private, its key still being derived: the session's events wait (at
    /// most [`MAX_ENTRIES`]) and nothing can be sent until [`App::key_ready`].
    pub fn key_deriving(&mut self, time: Clock) {
        self.deriving = Some(VecDeque::new());
        self.info(time, format!("this room is private; {DERIVING}"));
    }

    /// The room key is ready: from now on messages are sealed and opened with `crypto`,
    /// beginning with the events that waited for it.
    pub fn key_ready(&mut self, crypto: RoomCrypto, time: Clock) {
        self.crypto = Some(crypto);
        self.info(
            time,
            "messages in this room are end-to-end encrypted (🔒 marks them)",
        );
        if self.deriving_dropped > 0 {
            self.push(Entry::System {
                time,
                kind: SystemKind::Warning,
                text: format!(
                    "{} missed while the key was derived",
                    messages(self.deriving_dropped)
                ),
            });
        }
        for event in self.deriving.take().unwrap_or_default() {
            self.on_event(&event, time);
        }
    }

    /// Whether the room is private here (shown in the status bar).
    pub fn encrypted(&self) -> bool {
        self.crypto.is_some() || self.deriving.is_some()
    }

    /// Whether the room key is still being derived.
    pub fn deriving(&self) -> bool {
        self.deriving.is_some()
    }

    /// Replayed envelopes dropped so far (0 in a room that is not private).
    pub fn replays(&self) -> u64 {
        self.crypto.as_ref().map_or(0, RoomCrypto::replays)
    }

    /// What to hand the session for `text`: the text itself, or in a private room its
    /// envelope (sealed once, so a retransmission resends the same bytes, §7). `Err` says
    /// why it cannot be sent.
    pub fn outgoing(&mut self, text: &str) -> Result<String, String> {
        if self.deriving() {
            return Err(format!("the room key is still being derived ({DERIVING})"));
        }
        match &mut self.crypto {
            Some(c) => seal(c, text, &self.me),
            None => Ok(text.to_string()),
        }
    }

    /// Our messages on their way (sent, not yet confirmed by the server), oldest first.
    pub fn pending(&self) -> impl DoubleEndedIterator<Item = &Entry> + ExactSizeIterator {
        self.pending.iter().map(|(_, e)| e)
    }

    /// Records that our message number `client_seq` with `text` was sent: it is shown as
    /// pending until [`SessionEvent::Confirmed`] names it.
    pub fn sending(&mut self, client_seq: u32, text: &str, time: Clock) {
        if self.pending.len() == MAX_ENTRIES {
            self.pending.pop_front();
        }
        self.pending.push_back((
            client_seq,
            Entry::Chat {
                time,
                user: sanitize(&self.me).into_owned(),
                text: sanitize(text).into_owned(),
                own: true,
                lock: if self.encrypted() {
                    Lock::Encrypted
                } else {
                    Lock::Off
                },
            },
        ));
    }

    fn settle_pending(&mut self, client_seq: u32) -> Option<Entry> {
        let i = self.pending.iter().position(|(c, _)| *c == client_seq)?;
        self.pending.remove(i).map(|(_, e)| e)
    }

    /// The pane's lines, oldest first.
    pub fn entries(&self) -> &VecDeque<Entry> {
        &self.entries
    }

    /// Members we know are in the room (seen joining or talking, not seen leaving).
    pub fn members_seen(&self) -> usize {
        self.members.len()
    }

    /// How many rows the pane is scrolled up from the newest line.
    pub fn scroll(&self) -> usize {
        self.scroll
    }

    /// Why the session ended, once it has.
    pub fn ended(&self) -> Option<&End> {
        self.ended.as_ref()
    }

    /// Marks the session as ended (a leave command, a signal, a lost server).
    pub fn end(&mut self, end: End) {
        if self.ended.is_none() {
            self.ended = Some(end);
        }
    }

    /// What the last draw learnt: the pane's height and how far it can scroll.
    pub fn set_view(&mut self, page_rows: usize, max_scroll: usize) {
        self.page = page_rows.max(1);
        self.max_scroll = max_scroll;
        self.scroll = self.scroll.min(max_scroll);
    }

    /// Adds a line, dropping the oldest beyond [`MAX_ENTRIES`].
    pub fn push(&mut self, entry: Entry) {
        self.recovered_run = None;
        if self.entries.len() == MAX_ENTRIES {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// Adds a note of the client itself.
    pub fn info(&mut self, time: Clock, text: impl Into<String>) {
        self.push(Entry::System {
            time,
            kind: SystemKind::Info,
            text: text.into(),
        });
    }

    /// Adds an error note.
    pub fn error(&mut self, time: Clock, text: impl Into<String>) {
        self.push(Entry::System {
            time,
            kind: SystemKind::Error,
            text: text.into(),
        });
    }

    /// Takes in one event from the session.
    pub fn on_event(&mut self, event: &SessionEvent, time: Clock) {
        if let Some(waiting) = &mut self.deriving {
            if waiting.len() == MAX_ENTRIES {
                waiting.pop_front();
                self.deriving_dropped += 1;
            }
            waiting.push_back(event.clone());
            return;
        }
        match event {
            SessionEvent::Joined { user, .. } | SessionEvent::Message { user, .. }
                if self.members.len() < MAX_MEMBERS_SEEN =>
            {
                self.members.insert(user.clone());
            }
            SessionEvent::Left { user, .. } | SessionEvent::TimedOut { user, .. } => {
                self.members.remove(user);
            }
            SessionEvent::Confirmed { client_seq } => {
                self.settle_pending(*client_seq);
            }
            // A version 1 server confirms nothing: what was pending goes out the version 1
            // way, and shows when its echo comes.
            SessionEvent::FellBackToV1 => self.pending.clear(),
            SessionEvent::Recovered { count } => {
                let total = self.recovered_run.unwrap_or(0) + u64::from(*count);
                if self.recovered_run.is_some() {
                    self.entries.pop_back();
                }
                self.push(Entry::System {
                    time,
                    kind: SystemKind::Info,
                    text: format!("{} recovered", messages(total)),
                });
                self.recovered_run = Some(total);
                return;
            }
            SessionEvent::SendFailed { client_seq } => {
                if let Some(Entry::Chat { text, .. }) = self.settle_pending(*client_seq) {
                    self.error(
                        time,
                        format!("not delivered (the server never took it): {text}"),
                    );
                    return;
                }
            }
            _ => {}
        }
        if let Some(mark) = history_mark(&mut self.in_history, event, time) {
            self.push(mark);
        }
        let (entry, end) = match &mut self.crypto {
            Some(c) => describe_private(event, &self.me, time, c),
            None => describe(event, &self.me, time),
        };
        if let Some(entry) = entry {
            self.push(entry);
        }
        if let Some(end) = end {
            self.end(end);
        }
    }

    /// Takes in pasted text.
    pub fn on_paste(&mut self, text: &str, time: Clock) {
        if !self.editor.insert_str(text) {
            self.error(
                time,
                format!("the input line holds at most {MAX_MESSAGE} bytes; the paste was cut"),
            );
        }
    }

    /// Takes in one key press and says what the event loop must do.
    pub fn on_key(&mut self, key: KeyEvent, time: Clock) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        match key.code {
            KeyCode::Char('c') if ctrl => return Action::Leave,
            KeyCode::Char('d') if ctrl => {
                if self.editor.text().is_empty() {
                    return Action::Leave;
                }
                self.editor.delete();
            }
            KeyCode::Char('a') if ctrl => self.editor.home(),
            KeyCode::Char('e') if ctrl => self.editor.end(),
            KeyCode::Char('b') if ctrl => self.editor.left(),
            KeyCode::Char('f') if ctrl => self.editor.right(),
            KeyCode::Char('u') if ctrl => self.editor.kill_to_start(),
            KeyCode::Char('k') if ctrl => self.editor.kill_to_end(),
            KeyCode::Char('w') if ctrl => self.editor.delete_word_back(),
            KeyCode::Char('h') if ctrl => self.editor.backspace(),
            KeyCode::Char(_) if ctrl || alt => {}
            KeyCode::Char(c) => self.type_char(c, time),
            KeyCode::Left => self.editor.left(),
            KeyCode::Right => self.editor.right(),
            KeyCode::Home => self.editor.home(),
            KeyCode::End => self.editor.end(),
            KeyCode::Backspace => self.editor.backspace(),
            KeyCode::Delete => self.editor.delete(),
            KeyCode::Up => self.history.up(&mut self.editor),
            KeyCode::Down => self.history.down(&mut self.editor),
            KeyCode::PageUp => {
                self.scroll =
                    (self.scroll + self.page.saturating_sub(1).max(1)).min(self.max_scroll)
            }
            KeyCode::PageDown => {
                self.scroll = self
                    .scroll
                    .saturating_sub(self.page.saturating_sub(1).max(1))
            }
            KeyCode::Enter => return self.submit(time),
            _ => {}
        }
        Action::None
    }

    fn type_char(&mut self, c: char, time: Clock) {
        if !self.editor.insert(c) {
            self.error(time, format!("a message is at most {MAX_MESSAGE} bytes"));
        }
    }

    fn submit(&mut self, time: Clock) -> Action {
        let line = self.editor.text().to_string();
        let command = parse_command(&line);
        if let Command::Say(text) = &command {
            if let Err(e) = check_message(text) {
                // Keep the line so it can be fixed.
                self.error(time, format!("not sent: {e}"));
                return Action::None;
            }
            if self.deriving() {
                self.error(
                    time,
                    format!("not sent yet: the room key is still being derived ({DERIVING})"),
                );
                return Action::None;
            }
            if self.encrypted() && text.len() > MAX_PLAINTEXT {
                self.error(
                    time,
                    format!(
                        "not sent: it is {} bytes long; an encrypted message is at most {MAX_PLAINTEXT} bytes",
                        text.len()
                    ),
                );
                return Action::None;
            }
        }
        self.history.push(&line);
        self.editor.take();
        self.scroll = 0;
        match command {
            Command::Say(text) => Action::Send(text),
            Command::Leave => Action::Leave,
            Command::List => Action::List,
            Command::Help => {
                for line in HELP {
                    self.info(time, *line);
                }
                Action::None
            }
            Command::Unknown(word) => {
                self.error(
                    time,
                    format!(
                        "unknown command {}; /help lists them (//text sends a message starting with /)",
                        sanitize(&word)
                    ),
                );
                Action::None
            }
            Command::Nothing => Action::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Clock = Clock { h: 9, m: 5, s: 7 };

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    fn typed(app: &mut App, s: &str) {
        for c in s.chars() {
            app.on_key(key(KeyCode::Char(c)), T);
        }
    }

    #[test]
    fn clock_formats_with_leading_zeros() {
        assert_eq!(T.to_string(), "09:05:07");
    }

    #[test]
    fn editor_moves_and_deletes_by_character_in_utf8() {
        let mut e = LineEditor::default();
        for c in "aé日本".chars() {
            e.insert(c);
        }
        assert_eq!(e.cursor_col(), 6);
        e.left();
        assert_eq!(e.cursor_col(), 4);
        e.backspace();
        assert_eq!(e.text(), "aé本");
        e.home();
        e.delete();
        assert_eq!(e.text(), "é本");
        e.right();
        e.insert('x');
        assert_eq!(e.text(), "éx本");
        e.end();
        e.right();
        e.backspace();
        e.backspace();
        e.backspace();
        e.backspace();
        assert_eq!(e.text(), "");
        e.left();
        e.delete();
        assert_eq!(e.cursor(), 0);
    }

    #[test]
    fn editor_kills_and_words() {
        let mut e = LineEditor::default();
        e.set("hello big world".into());
        e.delete_word_back();
        assert_eq!(e.text(), "hello big ");
        e.delete_word_back();
        assert_eq!(e.text(), "hello ");
        e.set("abc def".into());
        e.left();
        e.left();
        e.kill_to_end();
        assert_eq!(e.text(), "abc d");
        e.left();
        e.kill_to_start();
        assert_eq!((e.text(), e.cursor()), ("d", 0));
    }

    #[test]
    fn editor_refuses_controls_and_limits_length() {
        let mut e = LineEditor::default();
        assert!(e.insert('\u{1b}'));
        assert_eq!(e.text(), "");
        assert!(e.insert_str("a\tb\r\nc"));
        assert_eq!(e.text(), "a b c");
        e.set("x".repeat(MAX_MESSAGE - 1));
        assert!(!e.insert('é'));
        assert!(e.insert('y'));
        assert!(!e.insert('z'));
        assert_eq!(e.text().len(), MAX_MESSAGE);
    }

    #[test]
    fn editor_window_keeps_the_cursor_visible() {
        let mut e = LineEditor::default();
        e.set("0123456789".into());
        assert_eq!(e.window(20), ("0123456789", 10));
        assert_eq!(e.window(5), ("6789", 4));
        e.home();
        assert_eq!(e.window(5), ("01234", 0));
        e.set("日本語です".into());
        assert_eq!(e.window(6), ("です", 4));
        assert_eq!(e.window(0), ("", 0));
    }

    #[test]
    fn history_walks_back_and_restores_the_draft() {
        let mut h = History::default();
        let mut e = LineEditor::default();
        h.push("one");
        h.push("two");
        h.push("two");
        h.push("   ");
        assert_eq!(h.len(), 2);
        e.set("draft".into());
        let up = History::up as fn(&mut History, &mut LineEditor);
        let down = History::down as fn(&mut History, &mut LineEditor);
        let steps = [
            (up, "two"),
            (up, "one"),
            (up, "one"),
            (down, "two"),
            (down, "draft"),
            (down, "draft"),
        ];
        for (i, (step, want)) in steps.into_iter().enumerate() {
            step(&mut h, &mut e);
            assert_eq!(e.text(), want, "after step {i}");
        }
    }

    #[test]
    fn commands() {
        assert_eq!(parse_command("hello"), Command::Say("hello".into()));
        assert_eq!(parse_command("  hi  "), Command::Say("  hi  ".into()));
        for leave in [
            "/leave",
            "/quit",
            "/exit",
            "/q",
            "exit",
            " exit ",
            "/QUIT now",
        ] {
            assert_eq!(parse_command(leave), Command::Leave, "{leave}");
        }
        assert_eq!(parse_command("/list"), Command::List);
        assert_eq!(parse_command("/help"), Command::Help);
        assert_eq!(parse_command("/nope x"), Command::Unknown("/nope".into()));
        assert_eq!(
            parse_command("//etc/hosts"),
            Command::Say("/etc/hosts".into())
        );
        assert_eq!(parse_command("   "), Command::Nothing);
        assert_eq!(parse_command("exit now"), Command::Say("exit now".into()));
    }

    #[test]
    fn keys_edit_submit_and_leave() {
        let mut app = App::new("127.0.0.1:9001", "lobby", "alice", true);
        typed(&mut app, "helo");
        app.on_key(key(KeyCode::Left), T);
        typed(&mut app, "l");
        assert_eq!(
            app.on_key(key(KeyCode::Enter), T),
            Action::Send("hello".into())
        );
        assert_eq!(app.editor.text(), "");
        app.on_key(key(KeyCode::Up), T);
        assert_eq!(app.editor.text(), "hello");
        app.on_key(ctrl('u'), T);
        typed(&mut app, "/list");
        assert_eq!(app.on_key(key(KeyCode::Enter), T), Action::List);
        typed(&mut app, "/help");
        assert_eq!(app.on_key(key(KeyCode::Enter), T), Action::None);
        assert_eq!(app.entries().len(), HELP.len());
        assert_eq!(app.on_key(ctrl('c'), T), Action::Leave);
        assert_eq!(app.on_key(ctrl('d'), T), Action::Leave);
        typed(&mut app, "x");
        assert_eq!(app.on_key(ctrl('d'), T), Action::None);
        app.on_key(ctrl('u'), T);
        typed(&mut app, "/bogus");
        app.on_key(key(KeyCode::Enter), T);
        assert!(matches!(
            app.entries().back(),
            Some(Entry::System { kind: SystemKind::Error, text, .. }) if text.starts_with("unknown command /bogus")
        ));
        typed(&mut app, "exit");
        assert_eq!(app.on_key(key(KeyCode::Enter), T), Action::Leave);
    }

    #[test]
    fn scrolling_is_clamped() {
        let mut app = App::new("s", "r", "me", false);
        app.set_view(10, 25);
        app.on_key(key(KeyCode::PageUp), T);
        assert_eq!(app.scroll(), 9);
        for _ in 0..5 {
            app.on_key(key(KeyCode::PageUp), T);
        }
        assert_eq!(app.scroll(), 25);
        app.on_key(key(KeyCode::PageDown), T);
        assert_eq!(app.scroll(), 16);
        app.set_view(10, 3);
        assert_eq!(app.scroll(), 3);
        typed(&mut app, "x");
        app.on_key(key(KeyCode::Enter), T);
        assert_eq!(app.scroll(), 0);
    }

    fn texts(app: &App) -> Vec<String> {
        app.entries()
            .iter()
            .map(|e| match e {
                Entry::Chat {
                    user, text, own, ..
                } => format!("{user}{}: {text}", if *own { "(own)" } else { "" }),
                Entry::System { text, .. } => text.clone(),
            })
            .collect()
    }

    fn joined(user: &str) -> SessionEvent {
        SessionEvent::Joined {
            user: user.into(),
            history: false,
        }
    }

    fn msg(seq: u32, user: &str, text: &str, history: bool) -> SessionEvent {
        SessionEvent::Message {
            seq,
            user: user.into(),
            text: text.into(),
            history,
        }
    }

    #[test]
    fn events_are_described_and_members_counted() {
        let mut app = App::new("s", "lobby", "alice", false);
        let ev = |e: SessionEvent, app: &mut App| app.on_event(&e, T);
        ev(joined("alice"), &mut app);
        ev(joined("bob"), &mut app);
        ev(msg(3, "alice", "hi", false), &mut app);
        ev(
            SessionEvent::Left {
                user: "bob".into(),
                history: false,
            },
            &mut app,
        );
        ev(SessionEvent::Missed(3), &mut app);
        ev(SessionEvent::Missed(1), &mut app);
        assert_eq!(app.members_seen(), 1);
        assert_eq!(
            texts(&app),
            [
                "alice joined",
                "bob joined",
                "alice(own): hi",
                "bob left",
                "3 messages missed",
                "1 message missed"
            ]
        );
        assert_eq!(app.ended(), None);
        ev(
            SessionEvent::RoomClosed {
                reason: "host left".into(),
            },
            &mut app,
        );
        assert_eq!(app.ended(), Some(&End::Closed("host left".into())));
    }

    #[test]
    fn recovery_is_told_in_words() {
        let mut app = App::new("s", "lobby", "alice", false);
        for e in [
            SessionEvent::Recovered { count: 12 },
            SessionEvent::Unrecoverable { count: 3 },
            SessionEvent::Recovered { count: 1 },
            SessionEvent::Confirmed { client_seq: 4 },
            SessionEvent::Recovered { count: 2 },
            SessionEvent::Unrecoverable { count: 1 },
            SessionEvent::Reconnecting,
            SessionEvent::Reconnected,
            SessionEvent::Rejoined,
            SessionEvent::FellBackToV1,
            SessionEvent::Resumed { user: "bob".into() },
            SessionEvent::Confirmed { client_seq: 9 },
        ] {
            app.on_event(&e, T);
        }
        assert_eq!(
            texts(&app),
            [
                "12 messages recovered",
                "3 messages could not be recovered (older than the server keeps)",
                // Recoveries in a row are counted on one line.
                "3 messages recovered",
                "1 message could not be recovered (older than the server keeps)",
                "the server stopped answering; reconnecting…",
                "reconnected",
                "reconnected (joined the room again)",
                "the server is version 1: lost messages cannot be recovered",
                "bob reconnected",
            ]
        );
        assert_eq!(app.ended(), None);
    }

    #[test]
    fn own_messages_are_pending_until_confirmed() {
        let mut app = App::new("s", "lobby", "alice", false);
        app.sending(1, "one", T);
        app.sending(2, "two", T);
        app.sending(3, "three", T);
        assert_eq!(app.pending().len(), 3);
        app.on_event(&SessionEvent::Confirmed { client_seq: 1 }, T);
        app.on_event(&msg(7, "alice", "one", false), T);
        assert_eq!(app.pending().len(), 2);
        app.on_event(&SessionEvent::SendFailed { client_seq: 3 }, T);
        let pending: Vec<&Entry> = app.pending().collect();
        assert!(matches!(pending[..], [Entry::Chat { text, .. }] if text == "two"));
        assert_eq!(
            texts(&app),
            [
                "alice(own): one",
                "not delivered (the server never took it): three"
            ]
        );
        // A version 1 server confirms nothing: nothing stays marked pending.
        app.on_event(&SessionEvent::FellBackToV1, T);
        assert_eq!(app.pending().len(), 0);
    }

    #[test]
    fn history_at_join_is_set_apart() {
        let mut app = App::new("s", "lobby", "alice", false);
        app.on_event(&msg(1, "bob", "earlier", true), T);
        app.on_event(
            &SessionEvent::TimedOut {
                user: "alice".into(),
                history: true,
            },
            T,
        );
        app.on_event(&SessionEvent::Recovered { count: 2 }, T);
        app.on_event(&joined("alice"), T);
        app.on_event(&msg(4, "bob", "now", false), T);
        assert_eq!(
            texts(&app),
            [
                HISTORY_START,
                "bob: earlier",
                "alice timed out",
                "2 messages recovered",
                HISTORY_END,
                "alice joined",
                "bob: now"
            ]
        );
        assert_eq!(app.ended(), None);
    }

    #[test]
    fn being_dropped_ends_the_session_but_an_own_timeout_alone_does_not() {
        let timed_out = |user: &str| SessionEvent::TimedOut {
            user: user.into(),
            history: false,
        };
        let (_, end) = describe(&timed_out("me"), "me", T);
        assert_eq!(end, None);
        let (_, end) = describe(&timed_out("you"), "me", T);
        assert_eq!(end, None);
        let (_, end) = describe(&SessionEvent::Dropped, "me", T);
        assert_eq!(end, Some(End::TimedOut));
        let (entry, end) = describe(
            &SessionEvent::Lost {
                reason: "gone".into(),
            },
            "me",
            T,
        );
        assert_eq!(end, Some(End::Lost("gone".into())));
        assert!(entry.is_some());
    }

    #[test]
    fn sanitize_replaces_controls_and_bidi_overrides() {
        assert!(matches!(sanitize("plain 日本"), Cow::Borrowed(_)));
        assert_eq!(sanitize("a\u{1b}[2Jb"), "a\u{FFFD}[2Jb");
        assert_eq!(sanitize("x\u{202E}y\u{2066}"), "x\u{FFFD}y\u{FFFD}");
        assert_eq!(sanitize("\u{9b}"), "\u{FFFD}");
    }

    fn message(user: &str, text: &str, history: bool) -> SessionEvent {
        SessionEvent::Message {
            seq: 1,
            user: user.into(),
            text: text.into(),
            history,
        }
    }

    #[test]
    fn private_room_messages_read_as_section_7_says() {
        use ocm::client::e2e::{RoomCrypto, RoomKey};
        let key = RoomKey::from_bytes([1; 32]);
        let mut me = RoomCrypto::new(&key, "r");
        let mut bob = RoomCrypto::new(&key, "r");
        let mut eve = RoomCrypto::new(&RoomKey::from_bytes([2; 32]), "r");
        let sealed = bob.seal("secret", "bob").unwrap();
        let lock_of = |e: Option<Entry>| match e {
            Some(Entry::Chat { text, lock, .. }) => Some((text, lock)),
            _ => None,
        };
        let (e, end) = describe_private(&message("bob", &sealed, true), "alice", T, &mut me);
        assert_eq!(lock_of(e), Some(("secret".into(), Lock::Encrypted)));
        assert_eq!(end, None);
        // The same envelope again is a replay: nothing shown, counted.
        let (e, _) = describe_private(&message("bob", &sealed, false), "alice", T, &mut me);
        assert_eq!(e, None);
        assert_eq!(me.replays(), 1);
        // Shown under another name, it fails the tag: a notice, never the text.
        let sealed2 = bob.seal("second", "bob").unwrap();
        let (e, _) = describe_private(&message("carol", &sealed2, false), "alice", T, &mut me);
        assert!(
            matches!(&e, Some(Entry::System { kind: SystemKind::Warning, text, .. })
                if text.starts_with("carol: could not be decrypted") && !text.contains("second")),
            "{e:?}"
        );
        let (e, _) = describe_private(&message("bob", "plain hi", false), "alice", T, &mut me);
        assert_eq!(lock_of(e), Some(("plain hi".into(), Lock::NotEncrypted)));
        let guess = eve.seal("let me in", "eve").unwrap();
        let (e, _) = describe_private(&message("eve", &guess, false), "alice", T, &mut me);
        assert_eq!(
            e,
            Some(Entry::System {
                time: T,
                kind: SystemKind::Warning,
                text: format!("eve: {UNDECRYPTABLE}"),
            })
        );
        // Other events read as ever.
        let (e, _) = describe_private(&joined("bob"), "alice", T, &mut me);
        assert!(matches!(
            e,
            Some(Entry::System {
                kind: SystemKind::Joined,
                ..
            })
        ));
    }

    #[test]
    fn private_room_seals_once_and_refuses_long_text() {
        use ocm::client::e2e::{MAX_PLAINTEXT, RoomCrypto, RoomKey};
        let room_key = RoomKey::from_bytes([3; 32]);
        let mut app = App::new("s", "r", "alice", false);
        assert_eq!(app.outgoing("clear").unwrap(), "clear");
        app.key_deriving(T);
        assert!(app.encrypted() && app.outgoing("early").is_err());
        // Events wait for the key, then show in their order.
        app.on_event(&joined("bob"), T);
        assert_eq!(app.entries().len(), 1);
        app.key_ready(RoomCrypto::new(&room_key, "r"), T);
        assert!(matches!(app.entries().back(),
            Some(Entry::System { kind: SystemKind::Joined, text, .. }) if text == "bob joined"));
        assert!(app.encrypted());
        let a = app.outgoing("x").unwrap();
        let b = app.outgoing("x").unwrap();
        assert!(
            a.starts_with("ocm-e2e-v1:") && a != b,
            "a new counter each time"
        );
        assert!(app.outgoing(&"y".repeat(MAX_PLAINTEXT)).is_ok());
        let why = app.outgoing(&"y".repeat(MAX_PLAINTEXT + 1)).unwrap_err();
        assert!(why.contains("at most 2800 bytes"), "{why}");
        // The editor keeps a line too long to encrypt, with the reason.
        typed(&mut app, &"z".repeat(MAX_PLAINTEXT + 1));
        assert_eq!(app.on_key(key(KeyCode::Enter), T), Action::None);
        assert_eq!(app.editor.text().len(), MAX_PLAINTEXT + 1);
        assert!(matches!(app.entries().back(),
            Some(Entry::System { kind: SystemKind::Error, text, .. }) if text.contains("encrypted message is at most 2800")));
        // Our own echo reads decrypted, with the lock.
        app.on_event(&message("alice", &a, false), T);
        assert!(matches!(app.entries().back(),
            Some(Entry::Chat { text, own: true, lock: Lock::Encrypted, .. }) if text == "x"));
    }
}
