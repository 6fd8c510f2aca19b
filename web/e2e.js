// End-to-end encrypted rooms (PROTOCOL.md §7) with the browser's WebCrypto: a second
// implementation of §7, written from the spec, checked against the same vectors as the Rust
// one (web/test/vectors/e2e.json) so the page and the terminal client read each other.
//
//   passphrase, room ──deriveRoomKey (600 000 PBKDF2 rounds: slow, async)──▶ RoomKey
//   text ──Sender.seal(text, room, user)──▶ "ocm-e2e-v1:…" ──server──▶ Receiver.open(…)
//
// Envelope = "ocm-e2e-v1:" + base64url, unpadded, of
//   SenderId(8) Counter(8, big-endian) Commitment(8) Ciphertext(plaintext + 16-byte tag)
// Sender key = HKDF-SHA256(room key, salt SenderId, info "ocm-e2e-v1 message"); commitment =
// HMAC-SHA256(sender key, "ocm-e2e-v1 commit")[0..8]; AES-256-GCM with nonce 0000 + Counter
// and additional data room 00 user.
//
// Seal throws E2eError on bad input (the page checks first). Open faces hostile text: it
// never throws, it resolves to { ok: true, text, senderId, counter } or { ok: false, error,
// message } where `message` is what the page shows.

import { MAX_MESSAGE, byteLength, checkText, decodeText } from './protocol.js';

/** The start of every envelope; a message without it is not encrypted. */
export const PREFIX = 'ocm-e2e-v1:';
/** PBKDF2 salt = this + the room name: one passphrase, different keys in different rooms. */
export const SALT_PREFIX = 'ocm-e2e-v1/';
/** PBKDF2 rounds: what makes an offline guess at a passphrase slow. */
export const PBKDF2_ROUNDS = 600000;
/** Largest plaintext a sender seals: 2800 bytes make a 3798-byte envelope. */
export const MAX_PLAINTEXT = 2800;
/** Largest envelope a receiver accepts: any message the protocol carries. */
export const MAX_ENVELOPE = MAX_MESSAGE;
/** SenderId (8), Counter (8), commitment (8). */
const HEADER_LEN = 24;
/** The AES-GCM tag. */
const TAG_LEN = 16;
/** Shortest binary part: a header and the tag of an empty plaintext. */
export const MIN_BINARY_LEN = HEADER_LEN + TAG_LEN;
/** Counters at most this far below a sender's highest are a replay. */
export const REPLAY_WINDOW = 1024n;
/** Senders a Receiver keeps a window for; the one verified longest ago goes first. */
export const MAX_SENDERS = 1024;

const SENDER_KEY_INFO = 'ocm-e2e-v1 message';
const COMMIT_LABEL = 'ocm-e2e-v1 commit';
const LAST_COUNTER = (1n << 64n) - 1n;

const encoder = new TextEncoder();
const subtle = () => globalThis.crypto.subtle;

/** What the page shows for each failure; the same words as the Rust client. */
export const E2E_MESSAGES = Object.freeze({
  'not-envelope': 'not encrypted',
  'too-long': 'could not be decrypted (envelope longer than 3800 bytes)',
  'not-base64': 'could not be decrypted (not base64url)',
  'too-short': 'could not be decrypted (envelope too short)',
  'wrong-key': 'could not be decrypted (different passphrase?)',
  forged: 'could not be decrypted (altered, or under another name)',
  replayed: 'replayed',
  'not-text': 'could not be decrypted (not a text field)',
  'plaintext-too-long': 'message too long to encrypt (at most 2800 bytes)',
  'plaintext-not-text': 'message is not a text field',
  'counter-exhausted': 'no message counter left (start a new session)',
});

/** A seal that cannot be done; `kind` is a key of E2E_MESSAGES. */
export class E2eError extends Error {
  constructor(kind) {
    super(E2E_MESSAGES[kind] ?? kind);
    this.name = 'E2eError';
    this.kind = kind;
  }
}

/** Whether a message is an envelope. In an encrypted room, one that is not is shown marked. */
export function isEnvelope(message) {
  return typeof message === 'string' && message.startsWith(PREFIX);
}

// ---- base64url, unpadded, strict (as the Rust side's decoder) ----

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 64; i++) VALUE[ALPHABET.charCodeAt(i)] = i;

/** Unpadded base64url of bytes. */
export function base64urlEncode(bytes) {
  let out = '';
  let i = 0;
  for (; i + 3 <= bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63] + ALPHABET[(n >> 6) & 63] + ALPHABET[n & 63];
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i] << 16;
    out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63];
  } else if (rest === 2) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63] + ALPHABET[(n >> 6) & 63];
  }
  return out;
}

/**
 * Decodes unpadded base64url; null for anything else: another character (padding, `+`,
 * `/`, space, non-ASCII), a length of 4n + 1, or set bits after the last byte.
 */
export function base64urlDecode(text) {
  if (text.length % 4 === 1) return null;
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const v = c < 128 ? VALUE[c] : -1;
    if (v < 0) return null;
    acc = ((acc << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
    }
  }
  // The bits left over (2 or 4) must be zero: one encoding per byte string.
  if (bits > 0 && (acc & ((1 << bits) - 1)) !== 0) return null;
  return out;
}

// ---- keys ----

/** A room's key: 32 bytes (`bytes`) and the HKDF key made from them. */
export class RoomKey {
  constructor(bytes, hkdfKey) {
    this.bytes = bytes;
    this.hkdfKey = hkdfKey;
  }

  /** A key derived before (or from a test vector). */
  static async fromBytes(bytes) {
    const raw = Uint8Array.from(bytes);
    const hkdfKey = await subtle().importKey('raw', raw, 'HKDF', false, ['deriveBits']);
    return new RoomKey(raw, hkdfKey);
  }

  /** The sender key of `senderId` (32 bytes). */
  async senderKey(senderId) {
    const bits = await subtle().deriveBits(
      { name: 'HKDF', hash: 'SHA-256', salt: senderId, info: encoder.encode(SENDER_KEY_INFO) },
      this.hkdfKey,
      256,
    );
    return new Uint8Array(bits);
  }

  /** The AES-GCM key and the commitment of `senderId`. */
  async senderKeys(senderId) {
    const key = await this.senderKey(senderId);
    const hmacKey = await subtle().importKey(
      'raw',
      key,
      { name: 'HMAC', hash: 'SHA-256' },
      false,
      ['sign'],
    );
    const tag = await subtle().sign('HMAC', hmacKey, encoder.encode(COMMIT_LABEL));
    const aesKey = await subtle().importKey('raw', key, 'AES-GCM', false, ['encrypt', 'decrypt']);
    return { aesKey, commitment: new Uint8Array(tag, 0, 8) };
  }
}

/**
 * PBKDF2-HMAC-SHA256(NFC(passphrase), "ocm-e2e-v1/" + room, 600 000 rounds) → RoomKey.
 * Slow by design (a visible moment): await it once per room and show "deriving key…".
 */
export async function deriveRoomKey(passphrase, room) {
  const password = encoder.encode(passphrase.normalize('NFC'));
  const base = await subtle().importKey('raw', password, 'PBKDF2', false, ['deriveBits']);
  const bits = await subtle().deriveBits(
    {
      name: 'PBKDF2',
      hash: 'SHA-256',
      salt: encoder.encode(SALT_PREFIX + room),
      iterations: PBKDF2_ROUNDS,
    },
    base,
    256,
  );
  return RoomKey.fromBytes(new Uint8Array(bits));
}

function nonce(counter) {
  const n = new Uint8Array(12);
  new DataView(n.buffer).setBigUint64(4, counter);
  return n;
}

/** Room name, one 00, user name: binds the envelope to where and under whom it is shown. */
function additionalData(room, user) {
  const r = encoder.encode(room);
  const u = encoder.encode(user);
  const aad = new Uint8Array(r.length + 1 + u.length);
  aad.set(r, 0);
  aad.set(u, r.length + 1);
  return aad;
}

function constantTimeEqual(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function randomSenderId() {
  const id = new Uint8Array(8);
  globalThis.crypto.getRandomValues(id);
  return id;
}

// ---- sending ----

/** One session's sending side in one room: a random SenderId, Counter from 1. */
export class Sender {
  constructor(senderId, next, keys) {
    this.senderId = senderId;
    /** The Counter of the next envelope (a BigInt); 0n once every counter is used. */
    this.next = next;
    this.keys = keys;
  }

  /**
   * A sender for `roomKey`. `senderId` and `counter` are for test vectors only: a SenderId
   * must be fresh, since reusing one with a counter already used breaks the encryption.
   */
  static async create(roomKey, { senderId = randomSenderId(), counter = 1n } = {}) {
    const id = Uint8Array.from(senderId);
    return new Sender(id, BigInt(counter), await roomKey.senderKeys(id));
  }

  /**
   * Encrypts `plaintext` (a text field of at most 2800 bytes) for `room`, shown under
   * `user`. Uses one Counter, taken before any await, so concurrent seals never share one.
   * Seal a message once and keep the string: a retransmission resends the same envelope.
   */
  async seal(plaintext, room, user) {
    if (typeof plaintext !== 'string') throw new E2eError('plaintext-not-text');
    if (byteLength(plaintext) > MAX_PLAINTEXT) throw new E2eError('plaintext-too-long');
    const checked = checkText(plaintext, 0, MAX_PLAINTEXT);
    if (!checked.ok) throw new E2eError('plaintext-not-text');
    return this.sealBytes(checked.bytes, room, user);
  }

  /** seal() without the checks on the plaintext (the tests make bad envelopes with it). */
  async sealBytes(bytes, room, user) {
    if (this.next === 0n) throw new E2eError('counter-exhausted');
    const counter = this.next;
    this.next = counter === LAST_COUNTER ? 0n : counter + 1n;
    const sealed = new Uint8Array(
      await subtle().encrypt(
        { name: 'AES-GCM', iv: nonce(counter), additionalData: additionalData(room, user) },
        this.keys.aesKey,
        bytes,
      ),
    );
    const binary = new Uint8Array(HEADER_LEN + sealed.length);
    binary.set(this.senderId, 0);
    new DataView(binary.buffer).setBigUint64(8, counter);
    binary.set(this.keys.commitment, 16);
    binary.set(sealed, HEADER_LEN);
    return PREFIX + base64urlEncode(binary);
  }
}

// ---- receiving ----

/** Which counters of one sender were seen: the highest verified and a 1024-bit ring. */
class ReplayWindow {
  constructor(counter) {
    this.highest = counter;
    this.seen = new Uint32Array(Number(REPLAY_WINDOW) / 32);
    this.set(counter);
  }

  static slot(counter) {
    const bit = Number(counter % REPLAY_WINDOW);
    return [bit >> 5, 1 << (bit & 31)];
  }

  set(counter) {
    const [word, mask] = ReplayWindow.slot(counter);
    this.seen[word] |= mask;
  }

  clear(counter) {
    const [word, mask] = ReplayWindow.slot(counter);
    this.seen[word] &= ~mask;
  }

  /** Not seen, and not at or below highest - 1024. */
  isFresh(counter) {
    if (counter > this.highest) return true;
    if (this.highest - counter >= REPLAY_WINDOW) return false;
    const [word, mask] = ReplayWindow.slot(counter);
    return (this.seen[word] & mask) === 0;
  }

  /** Records a counter whose tag verified. */
  mark(counter) {
    if (counter > this.highest) {
      if (counter - this.highest >= REPLAY_WINDOW) {
        this.seen.fill(0);
      } else {
        for (let c = this.highest + 1n; c < counter; c++) this.clear(c);
      }
      this.highest = counter;
    }
    this.set(counter);
  }
}

function failure(error) {
  return { ok: false, error, message: E2E_MESSAGES[error] };
}

/** The receiving side of one room: opens envelopes, a replay window per SenderId. */
export class Receiver {
  constructor(roomKey) {
    this.roomKey = roomKey;
    /** SenderId (hex) → { keys, window }, in order of last verification (oldest first). */
    this.senders = new Map();
    // Opens run one after another, so two copies of one envelope can never both pass the
    // replay check while the first is still decrypting.
    this.queue = Promise.resolve();
  }

  /** How many senders have a replay window. */
  get senderCount() {
    return this.senders.size;
  }

  /**
   * Checks and decrypts an envelope `user` sent in `room`, in §7's order: size, base64url,
   * length, commitment (constant time), replay window, tag, text field; only then does the
   * sender's window move. Never throws.
   */
  open(envelope, room, user) {
    const result = this.queue.then(() => this.openNow(envelope, room, user));
    this.queue = result.catch(() => {});
    return result;
  }

  async openNow(envelope, room, user) {
    if (!isEnvelope(envelope)) return failure('not-envelope');
    if (envelope.length > MAX_ENVELOPE || byteLength(envelope) > MAX_ENVELOPE) {
      return failure('too-long');
    }
    const binary = base64urlDecode(envelope.slice(PREFIX.length));
    if (binary === null) return failure('not-base64');
    if (binary.length < MIN_BINARY_LEN) return failure('too-short');
    const senderId = binary.slice(0, 8);
    const counter = new DataView(binary.buffer).getBigUint64(8);
    const claimed = binary.subarray(16, HEADER_LEN);
    const id = hex(senderId);

    // A new sender's keys are derived, but kept only once a tag verifies.
    const known = this.senders.get(id);
    const keys = known ? known.keys : await this.roomKey.senderKeys(senderId);
    if (!constantTimeEqual(keys.commitment, claimed)) return failure('wrong-key');
    if (known && !known.window.isFresh(counter)) return failure('replayed');
    let plain;
    try {
      plain = await subtle().decrypt(
        { name: 'AES-GCM', iv: nonce(counter), additionalData: additionalData(room, user) },
        keys.aesKey,
        binary.subarray(HEADER_LEN),
      );
    } catch {
      return failure('forged');
    }
    const text = decodeText(new Uint8Array(plain));
    if (!text.ok) return failure('not-text');

    // The tag verified: now, and only now, the window moves (and the sender becomes newest).
    if (known) {
      known.window.mark(counter);
      this.senders.delete(id);
      this.senders.set(id, known);
    } else {
      if (this.senders.size >= MAX_SENDERS) {
        this.senders.delete(this.senders.keys().next().value);
      }
      this.senders.set(id, { keys, window: new ReplayWindow(counter) });
    }
    return { ok: true, text: text.text, senderId, counter };
  }
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// ---- one room ----

/**
 * Everything the page needs for one encrypted room: its key, its own sender, a receiver,
 * and counts of replays and failures. open() resolves to what to show:
 *   { shown: 'encrypted', text }       the text, with a lock mark
 *   { shown: 'not-encrypted', text }   a plain message: the text, marked "not encrypted"
 *   { shown: 'replay' }                nothing (counted)
 *   { shown: 'undecryptable', error, message }   a notice, never the message as text
 */
export class RoomCrypto {
  constructor(room, sender, receiver) {
    this.room = room;
    this.sender = sender;
    this.receiver = receiver;
    this.replays = 0;
    this.undecryptable = 0;
  }

  /** From a passphrase: slow (derives the room key). */
  static async fromPassphrase(passphrase, room) {
    return RoomCrypto.fromKey(await deriveRoomKey(passphrase, room), room);
  }

  static async fromKey(roomKey, room) {
    return new RoomCrypto(room, await Sender.create(roomKey), new Receiver(roomKey));
  }

  /** Seals a message this client (`user`) sends. Throws E2eError on bad input. */
  seal(plaintext, user) {
    return this.sender.seal(plaintext, this.room, user);
  }

  async open(message, user) {
    const got = await this.receiver.open(message, this.room, user);
    if (got.ok) return { shown: 'encrypted', text: got.text };
    if (got.error === 'not-envelope') return { shown: 'not-encrypted', text: message };
    if (got.error === 'replayed') {
      this.replays++;
      return { shown: 'replay' };
    }
    this.undecryptable++;
    return { shown: 'undecryptable', error: got.error, message: got.message };
  }
}
