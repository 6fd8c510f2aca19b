//! End-to-end encrypted rooms (PROTOCOL.md §7, docs/protocol.md §12), sans-IO and pure.
//!
//! Members who share a room passphrase turn each message into an *envelope*, a text field the
//! server relays like any other, and read each other's envelopes; the server never sees a key.
//! Every primitive is one browsers' WebCrypto has (`web/e2e.js` is the same scheme), so the
//! terminal and the page read each other.
//!
//! ```text
//!   passphrase, room ──RoomKey::derive (slow: off the input path)──▶ RoomKey
//!                                                                      │
//!   text ──Sender::seal(text, room, user)──▶ "ocm-e2e-v1:…" ──server──▶ Receiver::open(…)
//!                                                                      │
//!                                         text, or "could not be decrypted", or a replay
//! ```
//!
//! * [`RoomKey`]: PBKDF2-HMAC-SHA256 of the NFC passphrase, 600 000 rounds. It takes a visible
//!   moment by design (it is what makes guessing a passphrase slow): derive it once per room,
//!   on a thread ([`RoomKey::derive_in_background`]), and show that it is being derived.
//! * [`Sender`]: one per client session and room; a random `SenderId`, `Counter` from 1.
//!   Seal a message once and keep the string: a retransmission resends the same envelope,
//!   since a (`SenderId`, `Counter`) pair must never encrypt two plaintexts.
//! * [`Receiver`]: checks an envelope (commitment in constant time, replay window, tag, text
//!   field), keeping a bounded replay window per `SenderId`.
//! * [`RoomCrypto`]: the three together for one room, returning what a client shows
//!   ([`Shown`]), and counting replays and failures.

use std::collections::HashMap;
use std::fmt;
use std::thread::JoinHandle;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::Rng as _;
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization as _;

use crate::protocol::{self, MAX_MESSAGE};

#[cfg(test)]
mod tests;

/// The start of every envelope; a message without it is not encrypted.
pub const PREFIX: &str = "ocm-e2e-v1:";
/// PBKDF2 salt = this + the room name: one passphrase gives different keys in different rooms.
pub const SALT_PREFIX: &str = "ocm-e2e-v1/";
/// HKDF info for the sender key (§7).
const SENDER_KEY_INFO: &[u8] = b"ocm-e2e-v1 message";
/// HMAC input of the key commitment (§7).
const COMMIT_LABEL: &[u8] = b"ocm-e2e-v1 commit";
/// PBKDF2 rounds (§7): what makes an offline guess at a passphrase cost ~0.1-1 s of CPU.
pub const PBKDF2_ROUNDS: u32 = 600_000;
/// Largest plaintext a sender seals: 2800 bytes make a 3798-byte envelope, inside the
/// 3800-byte message limit (docs/protocol.md §12.3).
pub const MAX_PLAINTEXT: usize = 2800;
/// Largest envelope a receiver accepts: any message the protocol can carry.
pub const MAX_ENVELOPE: usize = MAX_MESSAGE;
/// Length of a `SenderId`.
pub const SENDER_ID_LEN: usize = 8;
/// `SenderId` (8), `Counter` (8), commitment (8).
const HEADER_LEN: usize = 24;
/// The AES-GCM tag at the end of the ciphertext.
const TAG_LEN: usize = 16;
/// Shortest binary part: a header and the tag of an empty plaintext.
pub const MIN_BINARY_LEN: usize = HEADER_LEN + TAG_LEN;
/// The binary part of an envelope is this many bytes longer than its plaintext (and the
/// whole envelope about a third longer again, plus the prefix).
pub const OVERHEAD: usize = MIN_BINARY_LEN;
/// Counters at most this far below a sender's highest are remembered; older is a replay (§7).
pub const REPLAY_WINDOW: u64 = 1024;
/// Senders a [`Receiver`] keeps a replay window for; past it the one verified longest ago is
/// forgotten. Each client session is one sender, so 1024 is far more than one conversation
/// holds, while it bounds the state at about 1024 × 0.8 KB whatever the network sends. (Only
/// an envelope whose tag verifies creates a sender, so a stranger cannot fill the table; a
/// member, or a server replaying 1024 recorded sessions, could make one sender's window be
/// forgotten: docs/security.md.)
pub const MAX_SENDERS: usize = 1024;

/// A random identifier a client session draws for each room it encrypts in.
pub type SenderId = [u8; SENDER_ID_LEN];

/// Why an envelope could not be sealed or opened. Every failure of a check on a received
/// envelope reads "could not be decrypted (…)": that is how a client shows it, never as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E2eError {
    /// (open) The message does not start with [`PREFIX`]: shown as text marked "not encrypted".
    NotEnvelope,
    /// (open) The envelope is longer than [`MAX_ENVELOPE`] bytes.
    TooLong,
    /// (open) What follows the prefix is not unpadded base64url.
    NotBase64,
    /// (open) The binary part is shorter than [`MIN_BINARY_LEN`] bytes.
    TooShort,
    /// (open) The commitment is not that of this room key: another passphrase (or another
    /// room) made it.
    WrongKey,
    /// (open) The tag does not verify: the ciphertext was altered, or the envelope is shown
    /// under another user name or in another room than it was sealed for.
    Forged,
    /// (open) This `SenderId` and `Counter` were seen already, or are too far in the past.
    Replayed,
    /// (open) The plaintext is not a text field (not UTF-8, or a control character).
    NotText,
    /// (seal) The plaintext is longer than [`MAX_PLAINTEXT`] bytes.
    PlaintextTooLong,
    /// (seal) The plaintext is not a text field; receivers would refuse it.
    PlaintextNotText,
    /// (seal) This sender has used every counter (2^64 - 1 messages): make a new [`Sender`].
    CounterExhausted,
}

impl E2eError {
    /// A check failed on a received envelope: shown as a notice, never as text. (A replay is
    /// not shown at all, and a non-envelope is shown as text marked "not encrypted".)
    pub fn is_undecryptable(self) -> bool {
        matches!(
            self,
            E2eError::TooLong
                | E2eError::NotBase64
                | E2eError::TooShort
                | E2eError::WrongKey
                | E2eError::Forged
                | E2eError::NotText
        )
    }
}

impl fmt::Display for E2eError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            E2eError::NotEnvelope => "not encrypted",
            E2eError::TooLong => "could not be decrypted (envelope longer than 3800 bytes)",
            E2eError::NotBase64 => "could not be decrypted (not base64url)",
            E2eError::TooShort => "could not be decrypted (envelope too short)",
            E2eError::WrongKey => "could not be decrypted (different passphrase?)",
            E2eError::Forged => "could not be decrypted (altered, or under another name)",
            E2eError::Replayed => "replayed",
            E2eError::NotText => "could not be decrypted (not a text field)",
            E2eError::PlaintextTooLong => "message too long to encrypt (at most 2800 bytes)",
            E2eError::PlaintextNotText => "message is not a text field",
            E2eError::CounterExhausted => "no message counter left (start a new session)",
        })
    }
}

impl std::error::Error for E2eError {}

/// Whether a message is an envelope (starts with [`PREFIX`]). In a room a client treats as
/// encrypted, a message that is not is shown as text, marked "not encrypted".
pub fn is_envelope(message: &str) -> bool {
    message.starts_with(PREFIX)
}

/// A room's key: 32 bytes from the passphrase and the room name.
#[derive(Clone, PartialEq, Eq)]
pub struct RoomKey([u8; 32]);

impl fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never into a log.
        f.write_str("RoomKey(..)")
    }
}

impl RoomKey {
    /// PBKDF2-HMAC-SHA256(NFC(passphrase), `ocm-e2e-v1/` + room, 600 000 rounds).
    ///
    /// **Slow by design** (a few tenths of a second in a release build, seconds in a debug
    /// one): never call it on an input or network path. Use [`RoomKey::derive_in_background`]
    /// and show "deriving key…" until it is done; derive once per room and keep the key.
    pub fn derive(passphrase: &str, room: &str) -> RoomKey {
        let passphrase: String = passphrase.nfc().collect();
        let mut salt = Vec::with_capacity(SALT_PREFIX.len() + room.len());
        salt.extend_from_slice(SALT_PREFIX.as_bytes());
        salt.extend_from_slice(room.as_bytes());
        let mut key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(passphrase.as_bytes(), &salt, PBKDF2_ROUNDS, &mut key);
        RoomKey(key)
    }

    /// [`RoomKey::derive`] on a thread of its own; poll the returned [`Deriving`] from the
    /// event loop. Fails only if no thread can be started.
    pub fn derive_in_background(passphrase: String, room: String) -> std::io::Result<Deriving> {
        let handle = std::thread::Builder::new()
            .name("ocm-e2e-derive".into())
            .spawn(move || RoomKey::derive(&passphrase, &room))?;
        Ok(Deriving(Some(handle)))
    }

    /// A key derived before (kept for a session, or from a test vector).
    pub fn from_bytes(bytes: [u8; 32]) -> RoomKey {
        RoomKey(bytes)
    }

    /// The key's bytes (test vectors compare them).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The sender key of `id`: HKDF-SHA256(IKM = room key, salt = `SenderId`, info =
    /// `ocm-e2e-v1 message`).
    pub fn sender_key(&self, id: &SenderId) -> [u8; 32] {
        let mut out = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(Some(id), &self.0)
            .expand(SENDER_KEY_INFO, &mut out)
            .expect("32 bytes is within HKDF-SHA256's 8160-byte limit");
        out
    }
}

/// The first 8 bytes of HMAC-SHA256(sender key, `ocm-e2e-v1 commit`): pins envelopes to one
/// key (AES-GCM alone does not), and rejects another passphrase's envelopes before decrypting.
pub fn commitment(sender_key: &[u8; 32]) -> [u8; 8] {
    let tag = commit_mac(sender_key).finalize().into_bytes();
    let mut out = [0u8; 8];
    out.copy_from_slice(&tag[..8]);
    out
}

fn commit_mac(sender_key: &[u8; 32]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(sender_key)
        .expect("HMAC takes a key of any length");
    mac.update(COMMIT_LABEL);
    mac
}

/// A room key being derived on its own thread ([`RoomKey::derive_in_background`]).
#[derive(Debug)]
pub struct Deriving(Option<JoinHandle<RoomKey>>);

impl Deriving {
    /// The key once it is ready (then `None` again forever), without blocking.
    pub fn try_take(&mut self) -> Option<RoomKey> {
        if self.0.as_ref().is_some_and(JoinHandle::is_finished) {
            return self.0.take().map(join);
        }
        None
    }

    /// Blocks until the key is ready. `None` if [`Deriving::try_take`] already took it.
    pub fn wait(mut self) -> Option<RoomKey> {
        self.0.take().map(join)
    }
}

fn join(handle: JoinHandle<RoomKey>) -> RoomKey {
    // The thread runs only PBKDF2 over a fixed-size output, which does not panic; if it ever
    // did, carry that panic to the caller rather than invent a key.
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The nonce of `counter`: 4 zero bytes, then the counter (8, big-endian).
fn nonce(counter: u64) -> Nonce<Aes256Gcm> {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n.into()
}

/// Additional data: room name, one 0x00, user name (names are text fields, so the 0x00 is
/// unambiguous). Binds the envelope to the room and the name it is shown under.
fn additional_data(room: &str, user: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(room.len() + 1 + user.len());
    aad.extend_from_slice(room.as_bytes());
    aad.push(0);
    aad.extend_from_slice(user.as_bytes());
    aad
}

fn cipher(sender_key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(sender_key.into())
}

/// One client session's sending side in one room.
pub struct Sender {
    id: SenderId,
    /// The counter of the next envelope; 0 once every counter is used.
    next: u64,
    commitment: [u8; 8],
    cipher: Aes256Gcm,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("id", &self.id)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender with a random `SenderId` (from `rand::rng()`, a CSPRNG) and Counter 1.
    pub fn new(key: &RoomKey) -> Sender {
        let mut id = [0u8; SENDER_ID_LEN];
        rand::rng().fill_bytes(&mut id);
        Sender::with_id(key, id, 1)
    }

    /// A sender with a given `SenderId` whose next Counter is `next` (from 1). For test
    /// vectors: a `SenderId` must be fresh, since reusing one with a counter already used
    /// reveals both plaintexts and lets anyone forge messages.
    pub fn with_id(key: &RoomKey, id: SenderId, next: u64) -> Sender {
        let sender_key = key.sender_key(&id);
        Sender {
            id,
            next,
            commitment: commitment(&sender_key),
            cipher: cipher(&sender_key),
        }
    }

    /// This sender's `SenderId`.
    pub fn id(&self) -> SenderId {
        self.id
    }

    /// The Counter the next envelope will carry.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Encrypts `plaintext` for `room`, shown under `user`, into an envelope of at most
    /// [`MAX_ENVELOPE`] bytes, and uses up one Counter. Seal each message once and keep the
    /// string: resending it is safe, sealing it again would be a second message.
    pub fn seal(&mut self, plaintext: &str, room: &str, user: &str) -> Result<String, E2eError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(E2eError::PlaintextTooLong);
        }
        if protocol::control_char(plaintext).is_some() {
            return Err(E2eError::PlaintextNotText);
        }
        self.seal_bytes(plaintext.as_bytes(), room, user)
    }

    /// [`Sender::seal`] without the checks on the plaintext (tests make bad envelopes with it).
    fn seal_bytes(&mut self, plaintext: &[u8], room: &str, user: &str) -> Result<String, E2eError> {
        if self.next == 0 {
            return Err(E2eError::CounterExhausted);
        }
        let counter = self.next;
        let mut binary = Vec::with_capacity(OVERHEAD + plaintext.len());
        binary.extend_from_slice(&self.id);
        binary.extend_from_slice(&counter.to_be_bytes());
        binary.extend_from_slice(&self.commitment);
        binary.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &nonce(counter),
                &additional_data(room, user),
                (&mut binary[HEADER_LEN..]).into(),
            )
            .expect("a plaintext that fits a message is within AES-GCM's 64 GB limit");
        binary.extend_from_slice(&tag);
        self.next = counter.wrapping_add(1);
        let mut envelope = String::with_capacity(PREFIX.len() + (binary.len() * 4).div_ceil(3));
        envelope.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&binary, &mut envelope);
        Ok(envelope)
    }
}

/// A decrypted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plaintext {
    /// The message, a text field.
    pub text: String,
    /// Who sealed it (one client session).
    pub sender_id: SenderId,
    /// Its Counter.
    pub counter: u64,
}

/// Which counters of one sender were seen: the highest whose tag verified, and a bitmap of
/// the [`REPLAY_WINDOW`] counters ending at it, indexed by `counter % REPLAY_WINDOW`.
#[derive(Debug, Clone)]
struct ReplayWindow {
    highest: u64,
    seen: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn new(counter: u64) -> ReplayWindow {
        let mut window = ReplayWindow {
            highest: counter,
            seen: [0; (REPLAY_WINDOW / 64) as usize],
        };
        window.set(counter);
        window
    }

    fn slot(counter: u64) -> (usize, u64) {
        let bit = counter % REPLAY_WINDOW;
        ((bit / 64) as usize, 1 << (bit % 64))
    }

    fn set(&mut self, counter: u64) {
        let (word, mask) = Self::slot(counter);
        self.seen[word] |= mask;
    }

    fn clear(&mut self, counter: u64) {
        let (word, mask) = Self::slot(counter);
        self.seen[word] &= !mask;
    }

    /// A counter not seen and not at or below `highest - 1024`.
    fn is_fresh(&self, counter: u64) -> bool {
        if counter > self.highest {
            return true;
        }
        if self.highest - counter >= REPLAY_WINDOW {
            return false;
        }
        let (word, mask) = Self::slot(counter);
        self.seen[word] & mask == 0
    }

    /// Records a counter whose tag verified (and which [`ReplayWindow::is_fresh`] allowed).
    fn mark(&mut self, counter: u64) {
        if counter > self.highest {
            let step = counter - self.highest;
            if step >= REPLAY_WINDOW {
                self.seen = [0; (REPLAY_WINDOW / 64) as usize];
            } else {
                // The slots of the counters entering the window held counters now too old.
                for c in self.highest + 1..counter {
                    self.clear(c);
                }
            }
            self.highest = counter;
        }
        self.set(counter);
    }
}

/// What a receiver keeps per `SenderId` once one of its envelopes verified.
struct SenderState {
    commitment: [u8; 8],
    cipher: Aes256Gcm,
    window: ReplayWindow,
    /// When its last envelope verified, in [`Receiver`] ticks: the oldest is evicted first.
    last_verified: u64,
}

/// The receiving side of one room: opens envelopes, keeps a replay window per sender.
pub struct Receiver {
    key: RoomKey,
    senders: HashMap<SenderId, SenderState>,
    /// Counts verified envelopes; orders senders for eviction.
    tick: u64,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("senders", &self.senders.len())
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// A receiver that has seen no envelope yet.
    pub fn new(key: &RoomKey) -> Receiver {
        Receiver {
            key: key.clone(),
            senders: HashMap::new(),
            tick: 0,
        }
    }

    /// How many senders have a replay window (at most [`MAX_SENDERS`]).
    pub fn senders(&self) -> usize {
        self.senders.len()
    }

    /// Checks and decrypts an envelope `user` sent in `room` (the event's user name and the
    /// room it came in), in §7's order: size, base64url, length, commitment (constant time),
    /// replay window, tag, text field; only then does the sender's window move. Never panics.
    pub fn open(&mut self, envelope: &str, room: &str, user: &str) -> Result<Plaintext, E2eError> {
        let body = envelope.strip_prefix(PREFIX).ok_or(E2eError::NotEnvelope)?;
        if envelope.len() > MAX_ENVELOPE {
            return Err(E2eError::TooLong);
        }
        let mut binary = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| E2eError::NotBase64)?;
        if binary.len() < MIN_BINARY_LEN {
            return Err(E2eError::TooShort);
        }
        let (header, sealed) = binary.split_at_mut(HEADER_LEN);
        let (id, rest) = header.split_at(SENDER_ID_LEN);
        let (counter, claimed) = rest.split_at(8);
        let id: SenderId = id.try_into().expect("split at 8");
        let counter = u64::from_be_bytes(counter.try_into().expect("split at 8"));

        // A known sender's commitment was checked before; a new one's is derived (cheap: two
        // HMACs) but kept only once a tag verifies, so forgeries cannot fill the table.
        let known = self.senders.get(&id);
        let mut derived = match known {
            Some(_) => None,
            None => {
                let sender_key = self.key.sender_key(&id);
                Some((commitment(&sender_key), cipher(&sender_key)))
            }
        };
        let (expected, aead, window) = match (known, &derived) {
            (Some(state), _) => (state.commitment, &state.cipher, Some(&state.window)),
            (None, Some((commitment, aead))) => (*commitment, aead, None),
            (None, None) => unreachable!("derived for every unknown sender"),
        };
        if !constant_time_eq(&expected, claimed) {
            return Err(E2eError::WrongKey);
        }
        if window.is_some_and(|w| !w.is_fresh(counter)) {
            return Err(E2eError::Replayed);
        }
        let (ciphertext, tag) = sealed.split_at_mut(sealed.len() - TAG_LEN);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().expect("split at the tag");
        aead.decrypt_inout_detached(
            &nonce(counter),
            &additional_data(room, user),
            ciphertext.into(),
            tag.into(),
        )
        .map_err(|_| E2eError::Forged)?;
        let text = protocol::text(ciphertext)
            .map_err(|_| E2eError::NotText)?
            .to_owned();

        // The tag verified: now, and only now, the window moves.
        self.tick += 1;
        let tick = self.tick;
        if let Some(state) = self.senders.get_mut(&id) {
            state.window.mark(counter);
            state.last_verified = tick;
        } else if let Some((commitment, cipher)) = derived.take() {
            if self.senders.len() >= MAX_SENDERS {
                self.evict_oldest();
            }
            self.senders.insert(
                id,
                SenderState {
                    commitment,
                    cipher,
                    window: ReplayWindow::new(counter),
                    last_verified: tick,
                },
            );
        }
        Ok(Plaintext {
            text,
            sender_id: id,
            counter,
        })
    }

    /// Forgets the sender whose last envelope verified longest ago (O(senders), and only when
    /// a new sender arrives at a full table).
    fn evict_oldest(&mut self) {
        let oldest = self
            .senders
            .iter()
            .min_by_key(|(_, state)| state.last_verified)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.senders.remove(&id);
        }
    }
}

/// Compares two byte strings in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// What a client shows for a message in a room it treats as encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// The decrypted text: show it with a lock mark.
    Encrypted(String),
    /// A message that is not an envelope: show it as text, marked "not encrypted".
    NotEncrypted(String),
    /// A replay: not shown as a message (counted in [`RoomCrypto::replays`]).
    Replay,
    /// A check failed: show the error's text ("could not be decrypted (…)") as a notice from
    /// that user, never the message as text.
    Undecryptable(E2eError),
}

/// Everything a client needs to encrypt one room: its key, its own sender, and a receiver.
pub struct RoomCrypto {
    room: String,
    sender: Sender,
    receiver: Receiver,
    replays: u64,
    undecryptable: u64,
}

impl fmt::Debug for RoomCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomCrypto")
            .field("room", &self.room)
            .field("sender", &self.sender)
            .field("receiver", &self.receiver)
            .field("replays", &self.replays)
            .field("undecryptable", &self.undecryptable)
            .finish()
    }
}

impl RoomCrypto {
    /// Encryption for `room` with `key` (derived for that room), with a fresh random sender.
    pub fn new(key: &RoomKey, room: impl Into<String>) -> RoomCrypto {
        RoomCrypto {
            room: room.into(),
            sender: Sender::new(key),
            receiver: Receiver::new(key),
            replays: 0,
            undecryptable: 0,
        }
    }

    /// The room this is for.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Seals a message `user` (this client) sends. Seal once, resend the same string.
    pub fn seal(&mut self, plaintext: &str, user: &str) -> Result<String, E2eError> {
        self.sender.seal(plaintext, &self.room, user)
    }

    /// What to show for a message `user` sent in this room.
    pub fn open(&mut self, message: &str, user: &str) -> Shown {
        match self.receiver.open(message, &self.room, user) {
            Ok(plaintext) => Shown::Encrypted(plaintext.text),
            Err(E2eError::NotEnvelope) => Shown::NotEncrypted(message.to_owned()),
            Err(E2eError::Replayed) => {
                self.replays += 1;
                Shown::Replay
            }
            Err(e) => {
                self.undecryptable += 1;
                Shown::Undecryptable(e)
            }
        }
    }

    /// Replayed envelopes dropped so far.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// Envelopes that could not be decrypted so far.
    pub fn undecryptable(&self) -> u64 {
        self.undecryptable
    }
}
