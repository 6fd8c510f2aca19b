// OCM wire protocol v1.1 in JavaScript: a second implementation of PROTOCOL.md, written
// from the spec (not from the Rust code) so that the two can check each other.
//
// Wire formats only: no sockets, no clocks. Encoders take checked input and throw a
// ProtocolError naming the field when it is invalid (the page validates first, so a throw
// is a bug). Decoders face hostile bytes: they never throw; they return { ok: false, error }
// or, for server datagrams, the events read before the cut plus an error.
//
//   TCRP frame (§1)      = RoomNameSize(1) Operation(1) State(1) PayloadSize(29) RoomName Payload
//   client datagram (§2.1) = RoomNameSize(1) TokenSize(1) RoomName Token Message
//   control datagram (§5.2) = 0x00 Op(1) RoomNameSize(1) TokenSize(1) RoomName Token Body
//   server datagram (§2.2) = events: Kind(1) Seq(4) UserNameSize(1) UserName BodySize(2) Body
//   WebSocket unit (§6)  = Channel(1: frame, 2: datagram) then the unit's bytes

/** TCRP operations (§1). */
export const Op = Object.freeze({ CREATE: 1, JOIN: 2, LEAVE: 3, LIST: 4, RESUME: 5 });
/** TCRP frame states (§1). */
export const State = Object.freeze({ REQUEST: 0, RESPONSE: 1, COMPLETE: 2 });
/** RESPONSE status codes (§1.2). */
export const Status = Object.freeze({
  OK: 0,
  ROOM_EXISTS: 1,
  ROOM_NOT_FOUND: 2,
  ROOM_FULL: 3,
  BAD_PASSWORD: 4,
  NAME_TAKEN: 5,
  INVALID_REQUEST: 6,
  SERVER_FULL: 7,
  UNAUTHORIZED: 8,
  TOO_MANY_REQUESTS: 9,
});
/** Names of the status codes, for messages and logs. */
export const STATUS_NAMES = Object.freeze(
  Object.fromEntries(Object.entries(Status).map(([name, code]) => [code, name])),
);
/** Event kinds of server datagrams (§2.2, §5.3). */
export const Kind = Object.freeze({
  MESSAGE: 1,
  JOINED: 2,
  LEFT: 3,
  TIMED_OUT: 4,
  ROOM_CLOSED: 5,
  RATE_LIMITED: 6,
  GONE: 7,
  SYNC: 8,
  RESUMED: 9,
});
/** Control datagram operations (§5.2). */
export const CtlOp = Object.freeze({ SEND: 1, NACK: 2, SYNC: 3 });
/** WebSocket channel bytes (§6). */
export const Channel = Object.freeze({ FRAME: 1, DATAGRAM: 2 });

/** TCRP header: 3 one-byte fields and the 29-byte payload size (§1). */
export const HEADER_LEN = 32;
/** Width of OperationPayloadSize: a 29-byte big-endian integer (§1). */
export const PAYLOAD_SIZE_LEN = 29;
/** Largest OperationPayloadSize the protocol allows (§1). */
export const MAX_PAYLOAD = 4096;
/** Room and user names: 1..=255 bytes, one length byte (§1, §1.3). */
export const MAX_NAME = 255;
/** Chat message: 0..=3800 bytes so that any event fits one datagram (§2.1). */
export const MAX_MESSAGE = 3800;
/** Any datagram, either direction (§2.1, §2.2). */
export const MAX_DATAGRAM = 4096;
/** Tokens: 1..=255 bytes, one length byte (§1.3). */
export const MAX_TOKEN = 255;
/** Resume key: 16..=64 bytes (§1.3 v1.1). */
export const MIN_RESUME_KEY = 16;
export const MAX_RESUME_KEY = 64;
/** Passwords: any bytes, one length byte (§1.3). */
export const MAX_PASSWORD = 255;
/** NACK Count: 1..=512 (§5.2). */
export const MAX_NACK_COUNT = 512;
/** A WebSocket message, channel byte included, is at most 8192 bytes (§6). */
export const MAX_WS_MESSAGE = 8192;
/** Seq after 0xFFFFFFFF is 1: the room sequence has 2^32 - 1 values (§2.2). */
export const SEQ_MAX = 0xffffffff;

/** An encoder was given input the protocol cannot carry. `field` names it. */
export class ProtocolError extends Error {
  constructor(field, message) {
    super(`${field}: ${message}`);
    this.name = 'ProtocolError';
    this.field = field;
  }
}

const encoder = new TextEncoder();
// fatal: invalid UTF-8 is an error, not U+FFFD; ignoreBOM: a leading U+FEFF is kept as data.
const strictDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const lenientDecoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

/** True for the code points a text field may not hold (§ intro). */
export function isControl(cp) {
  return cp <= 0x1f || (cp >= 0x7f && cp <= 0x9f);
}

/**
 * Checks a JS string as a text field of min..=max UTF-8 bytes.
 * Returns { ok: true, bytes } or { ok: false, error } with the reason in words.
 */
export function checkText(value, min, max) {
  if (typeof value !== 'string') return { ok: false, error: 'not text' };
  for (let i = 0; i < value.length; i++) {
    const unit = value.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff) {
      const next = value.charCodeAt(i + 1);
      if (!(next >= 0xdc00 && next <= 0xdfff)) return { ok: false, error: 'not valid Unicode' };
      i++;
      continue;
    }
    if (unit >= 0xdc00 && unit <= 0xdfff) return { ok: false, error: 'not valid Unicode' };
    if (isControl(unit)) return { ok: false, error: 'contains a control character' };
  }
  const bytes = encoder.encode(value);
  if (bytes.length < min) {
    return { ok: false, error: min === 1 ? 'is empty' : `is shorter than ${min} bytes` };
  }
  if (bytes.length > max) {
    return { ok: false, error: `is ${bytes.length} bytes, at most ${max} allowed` };
  }
  return { ok: true, bytes };
}

/**
 * Decodes bytes as a text field. Returns { ok: true, text } or { ok: false, error }.
 */
export function decodeText(bytes) {
  let text;
  try {
    text = strictDecoder.decode(bytes);
  } catch {
    return { ok: false, error: 'invalid UTF-8' };
  }
  for (const ch of text) {
    if (isControl(ch.codePointAt(0))) return { ok: false, error: 'control character' };
  }
  return { ok: true, text };
}

/**
 * Text for display from bytes a peer sent: invalid UTF-8 becomes U+FFFD and control
 * characters become U+FFFD, so nothing a peer sends can steer a terminal or the page.
 * `valid` says whether the bytes were a proper text field.
 */
export function displayText(bytes) {
  const checked = decodeText(bytes);
  if (checked.ok) return { text: checked.text, valid: true };
  let text = '';
  for (const ch of lenientDecoder.decode(bytes)) {
    text += isControl(ch.codePointAt(0)) ? '\ufffd' : ch;
  }
  return { text, valid: false };
}

/** The UTF-8 length of a string, as the limits count it. */
export function byteLength(value) {
  return encoder.encode(value).length;
}

// --- encoding helpers -------------------------------------------------------------

function textField(value, field, min, max) {
  if (value instanceof Uint8Array) {
    const checked = decodeText(value);
    if (!checked.ok) throw new ProtocolError(field, checked.error);
    if (value.length < min || value.length > max) {
      throw new ProtocolError(field, `${value.length} bytes, must be ${min}..=${max}`);
    }
    return value;
  }
  const checked = checkText(value, min, max);
  if (!checked.ok) throw new ProtocolError(field, checked.error);
  return checked.bytes;
}

function bytesField(value, field, min, max) {
  const bytes = typeof value === 'string' ? encoder.encode(value) : value;
  if (!(bytes instanceof Uint8Array)) throw new ProtocolError(field, 'not bytes');
  if (bytes.length < min || bytes.length > max) {
    throw new ProtocolError(field, `${bytes.length} bytes, must be ${min}..=${max}`);
  }
  return bytes;
}

function u16(value, field) {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) {
    throw new ProtocolError(field, 'not a 16-bit unsigned integer');
  }
  return value;
}

function u32(value, field) {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new ProtocolError(field, 'not a 32-bit unsigned integer');
  }
  return value;
}

/** Builds bytes from parts: Uint8Array, or { u8 }, { u16 }, { u32 }. */
function concat(parts) {
  let len = 0;
  for (const p of parts) {
    len += p instanceof Uint8Array ? p.length : 'u8' in p ? 1 : 'u16' in p ? 2 : 4;
  }
  const out = new Uint8Array(len);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const p of parts) {
    if (p instanceof Uint8Array) {
      out.set(p, at);
      at += p.length;
    } else if ('u8' in p) {
      out[at++] = p.u8;
    } else if ('u16' in p) {
      view.setUint16(at, p.u16);
      at += 2;
    } else {
      view.setUint32(at, p.u32);
      at += 4;
    }
  }
  return out;
}

// --- TCRP frames (§1) -------------------------------------------------------------

/** Encodes one TCRP frame. `room` and `payload` are bytes already checked by the caller. */
export function encodeFrame(op, state, room, payload) {
  if (room.length > MAX_NAME) throw new ProtocolError('RoomName', 'over 255 bytes');
  if (payload.length > MAX_PAYLOAD) throw new ProtocolError('OperationPayload', 'over 4096 bytes');
  const out = new Uint8Array(HEADER_LEN + room.length + payload.length);
  out[0] = room.length;
  out[1] = op;
  out[2] = state;
  // OperationPayloadSize: 29 bytes big-endian; the value fits in the last two.
  out[HEADER_LEN - 2] = payload.length >> 8;
  out[HEADER_LEN - 1] = payload.length & 0xff;
  out.set(room, HEADER_LEN);
  out.set(payload, HEADER_LEN + room.length);
  return out;
}

/** Reads the 29-byte OperationPayloadSize at `at`; returns the number or -1 if over 4096. */
export function readPayloadSize(bytes, at) {
  let value = 0;
  for (let i = 0; i < PAYLOAD_SIZE_LEN; i++) {
    value = value * 256 + bytes[at + i];
    // Stop as soon as it is over the limit: a 29-byte number does not fit a double.
    if (value > MAX_PAYLOAD) return -1;
  }
  return value;
}

function userPasswordPayload(user, password, resumeKey, tail) {
  const userBytes = textField(user, 'UserName', 1, MAX_NAME);
  const pw = bytesField(password ?? new Uint8Array(0), 'Password', 0, MAX_PASSWORD);
  const parts = [{ u8: userBytes.length }, userBytes, { u8: pw.length }, pw, ...tail];
  if (resumeKey != null) {
    const key = bytesField(resumeKey, 'ResumeKey', MIN_RESUME_KEY, MAX_RESUME_KEY);
    parts.push({ u8: key.length }, key);
  }
  return concat(parts);
}

/** CREATE request (§1.3): room, host name, password ('' = none), capacity (0 = default). */
export function encodeCreate({ room, user, password = '', capacity = 0, resumeKey = null }) {
  const roomBytes = textField(room, 'RoomName', 1, MAX_NAME);
  const payload = userPasswordPayload(user, password, resumeKey, [
    { u16: u16(capacity, 'Capacity') },
  ]);
  return encodeFrame(Op.CREATE, State.REQUEST, roomBytes, payload);
}

/** JOIN request (§1.3), with an optional resume key (v1.1). */
export function encodeJoin({ room, user, password = '', resumeKey = null }) {
  const roomBytes = textField(room, 'RoomName', 1, MAX_NAME);
  const payload = userPasswordPayload(user, password, resumeKey, []);
  return encodeFrame(Op.JOIN, State.REQUEST, roomBytes, payload);
}

/** LEAVE request (§1.3): the payload is the token. */
export function encodeLeave({ room, token }) {
  const roomBytes = textField(room, 'RoomName', 1, MAX_NAME);
  return encodeFrame(Op.LEAVE, State.REQUEST, roomBytes, bytesField(token, 'Token', 1, MAX_TOKEN));
}

/** LIST request (§1.3): empty room name and payload. */
export function encodeList() {
  return encodeFrame(Op.LIST, State.REQUEST, new Uint8Array(0), new Uint8Array(0));
}

/** RESUME request (§5.5): token and resume key. */
export function encodeResume({ room, token, resumeKey }) {
  const roomBytes = textField(room, 'RoomName', 1, MAX_NAME);
  const tok = bytesField(token, 'Token', 1, MAX_TOKEN);
  const key = bytesField(resumeKey, 'ResumeKey', MIN_RESUME_KEY, MAX_RESUME_KEY);
  return encodeFrame(
    Op.RESUME,
    State.REQUEST,
    roomBytes,
    concat([{ u8: tok.length }, tok, { u8: key.length }, key]),
  );
}

/**
 * Reads one TCRP frame from the start of `bytes` (a stream may hold part of one).
 * Returns { ok: true, frame, used }, { ok: false, incomplete: true } when more bytes are
 * needed, or { ok: false, error } for a bad header (the size is checked before the body).
 * frame = { op, state, room: Uint8Array, payload: Uint8Array }.
 */
export function readFrame(bytes) {
  if (bytes.length < HEADER_LEN) return { ok: false, incomplete: true };
  const size = readPayloadSize(bytes, 3);
  if (size < 0) return { ok: false, error: 'OperationPayloadSize over 4096' };
  const roomLen = bytes[0];
  const total = HEADER_LEN + roomLen + size;
  if (bytes.length < total) return { ok: false, incomplete: true };
  return {
    ok: true,
    used: total,
    frame: {
      op: bytes[1],
      state: bytes[2],
      room: bytes.slice(HEADER_LEN, HEADER_LEN + roomLen),
      payload: bytes.slice(HEADER_LEN + roomLen, total),
    },
  };
}

/** Decodes bytes that must be exactly one TCRP frame (a §6 channel-1 message). */
export function decodeFrame(bytes) {
  const read = readFrame(bytes);
  if (!read.ok) return read.incomplete ? { ok: false, error: 'frame cut short' } : read;
  if (read.used !== bytes.length) return { ok: false, error: 'bytes after the frame' };
  return { ok: true, frame: read.frame };
}

/** RESPONSE payload (§1.1): exactly one status byte. Returns { ok, status }. */
export function decodeStatus(payload) {
  if (payload.length !== 1) return { ok: false, error: 'status payload is not 1 byte' };
  return { ok: true, status: payload[0] };
}

/**
 * COMPLETE payload of CREATE, JOIN and RESUME (§1.3):
 * { ok: true, token: Uint8Array, udpPort, idleTimeout } or { ok: false, error }.
 */
export function decodeJoinComplete(payload) {
  if (payload.length < 1) return { ok: false, error: 'TokenSize missing' };
  const size = payload[0];
  if (size < 1) return { ok: false, error: 'TokenSize 0' };
  if (payload.length !== 1 + size + 4) return { ok: false, error: 'payload length is not 1+TokenSize+4' };
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  return {
    ok: true,
    token: payload.slice(1, 1 + size),
    udpPort: view.getUint16(1 + size),
    idleTimeout: view.getUint16(3 + size),
  };
}

/**
 * COMPLETE payload of LIST (§1.3): { ok: true, rooms: [{ name, nameValid, members,
 * capacity, hasPassword }] } or { ok: false, error, rooms } with the rooms read before it.
 */
export function decodeListComplete(payload) {
  const rooms = [];
  if (payload.length < 2) return { ok: false, error: 'Count missing', rooms };
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const count = view.getUint16(0);
  let at = 2;
  for (let i = 0; i < count; i++) {
    if (at + 1 > payload.length) return { ok: false, error: `room ${i} cut short`, rooms };
    const nameLen = payload[at];
    if (at + 1 + nameLen + 5 > payload.length) {
      return { ok: false, error: `room ${i} cut short`, rooms };
    }
    const shown = displayText(payload.subarray(at + 1, at + 1 + nameLen));
    at += 1 + nameLen;
    rooms.push({
      name: shown.text,
      nameValid: shown.valid && nameLen > 0,
      members: view.getUint16(at),
      capacity: view.getUint16(at + 2),
      hasPassword: (payload[at + 4] & 1) === 1,
    });
    at += 5;
  }
  if (at !== payload.length) return { ok: false, error: 'bytes after the last room', rooms };
  return { ok: true, rooms };
}

// --- datagrams (§2.1, §5.2) -------------------------------------------------------

function checkDatagramLength(out) {
  if (out.length > MAX_DATAGRAM) {
    throw new ProtocolError('datagram', `${out.length} bytes, at most ${MAX_DATAGRAM}`);
  }
  return out;
}

/** Version 1 chat datagram (§2.1); an empty message is a heartbeat. */
export function encodeChat({ room, token, message = '' }) {
  const roomBytes = textField(room, 'RoomName', 1, MAX_NAME);
  const tok = bytesField(token, 'Token', 1, MAX_TOKEN);
  const msg = textField(message, 'Message', 0, MAX_MESSAGE);
  return checkDatagramLength(concat([{ u8: roomBytes.length }, { u8: tok.length }, roomBytes, tok, msg]));
}

function encodeControl(op, room, token, body) {
  const roomBytes = textField(room, 'RoomName', 1, MAX_NAME);
  const tok = bytesField(token, 'Token', 1, MAX_TOKEN);
  return checkDatagramLength(
    concat([{ u8: 0 }, { u8: op }, { u8: roomBytes.length }, { u8: tok.length }, roomBytes, tok, ...body]),
  );
}

/** SEND (§5.2): ClientSeq then a 1..=3800-byte message. */
export function encodeSend({ room, token, clientSeq, message }) {
  const msg = textField(message, 'Message', 1, MAX_MESSAGE);
  return encodeControl(CtlOp.SEND, room, token, [{ u32: u32(clientSeq, 'ClientSeq') }, msg]);
}

/** NACK (§5.2): FromSeq (not 0) and Count (1..=512). */
export function encodeNack({ room, token, fromSeq, count }) {
  if (u32(fromSeq, 'FromSeq') === 0) throw new ProtocolError('FromSeq', 'must not be 0');
  if (!Number.isInteger(count) || count < 1 || count > MAX_NACK_COUNT) {
    throw new ProtocolError('Count', 'must be 1..=512');
  }
  return encodeControl(CtlOp.NACK, room, token, [{ u32: fromSeq }, { u16: count }]);
}

/** SYNC (§5.2): empty body; also a heartbeat. */
export function encodeSync({ room, token }) {
  return encodeControl(CtlOp.SYNC, room, token, []);
}

// --- server datagrams (§2.2, §5.3) ------------------------------------------------

/**
 * Decodes a server datagram into its events, in order. Never throws.
 * Returns { events, error } where error is null or says where the datagram went wrong;
 * the events before that point are kept (§2.2: ignore the rest).
 *
 * Each event: { kind, seq, user, userValid, body: Uint8Array, ... } plus per kind:
 * MESSAGE / ROOM_CLOSED / RATE_LIMITED: text, textValid; GONE: fromSeq, count;
 * SYNC: lastSeq, lastClientSeq. A GONE or SYNC whose body has the wrong length gets
 * `malformed: true` and no fields.
 */
export function decodeServerDatagram(bytes) {
  const events = [];
  if (!(bytes instanceof Uint8Array)) return { events, error: 'not bytes' };
  if (bytes.length > MAX_DATAGRAM) return { events, error: 'datagram over 4096 bytes' };
  if (bytes.length === 0) return { events, error: 'empty datagram' };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  while (at < bytes.length) {
    // Kind(1) Seq(4) UserNameSize(1) = 6 bytes before the name.
    if (at + 6 > bytes.length) return { events, error: `event cut short at byte ${at}` };
    const kind = bytes[at];
    const seq = view.getUint32(at + 1);
    const userLen = bytes[at + 5];
    const bodySizeAt = at + 6 + userLen;
    if (bodySizeAt + 2 > bytes.length) return { events, error: `event cut short at byte ${at}` };
    const bodyLen = view.getUint16(bodySizeAt);
    const end = bodySizeAt + 2 + bodyLen;
    if (end > bytes.length) return { events, error: `event cut short at byte ${at}` };
    const user = displayText(bytes.subarray(at + 6, bodySizeAt));
    const body = bytes.slice(bodySizeAt + 2, end);
    events.push(decodeEvent(kind, seq, user, body));
    at = end;
  }
  return { events, error: null };
}

function decodeEvent(kind, seq, user, body) {
  const event = { kind, seq, user: user.text, userValid: user.valid, body };
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  switch (kind) {
    case Kind.MESSAGE:
    case Kind.ROOM_CLOSED:
    case Kind.RATE_LIMITED: {
      const text = displayText(body);
      event.text = text.text;
      event.textValid = text.valid;
      break;
    }
    case Kind.GONE:
      if (body.length === 6) {
        event.fromSeq = view.getUint32(0);
        event.count = view.getUint16(4);
      } else {
        event.malformed = true;
      }
      break;
    case Kind.SYNC:
      if (body.length === 8) {
        event.lastSeq = view.getUint32(0);
        event.lastClientSeq = view.getUint32(4);
      } else {
        event.malformed = true;
      }
      break;
    default:
      break;
  }
  return event;
}

/** Encodes one event (used by tests and fakes to play the server's part). */
export function encodeEvent({ kind, seq, user = '', body = new Uint8Array(0) }) {
  const userBytes = typeof user === 'string' ? encoder.encode(user) : user;
  const bodyBytes = typeof body === 'string' ? encoder.encode(body) : body;
  return concat([{ u8: kind }, { u32: seq }, { u8: userBytes.length }, userBytes, { u16: bodyBytes.length }, bodyBytes]);
}

// --- Seq arithmetic (§2.2: after 0xFFFFFFFF comes 1) ------------------------------

/** The Seq `n` steps after `seq` (n may be negative), skipping 0. */
export function seqAdd(seq, n) {
  // Map 1..=0xFFFFFFFF onto 0..2^32-2, add modulo 2^32-1, map back.
  const m = SEQ_MAX;
  const r = (((seq - 1 + n) % m) + m) % m;
  return r + 1;
}

/**
 * Serial distance from `b` to `a` in the Seq space: positive when `a` is after `b`,
 * negative when before (the nearer way round).
 */
export function seqDiff(a, b) {
  const m = SEQ_MAX;
  const d = (((a - b) % m) + m) % m;
  return d > Math.floor(m / 2) ? d - m : d;
}

// --- WebSocket units (§6) ---------------------------------------------------------

/** Puts a channel byte in front of a frame or datagram. */
export function wrapUnit(channel, bytes) {
  const out = new Uint8Array(1 + bytes.length);
  out[0] = channel;
  out.set(bytes, 1);
  if (out.length > MAX_WS_MESSAGE) throw new ProtocolError('WebSocket message', 'over 8192 bytes');
  return out;
}

/** Splits a WebSocket binary message into { ok: true, channel, bytes } or { ok: false, error }. */
export function unwrapUnit(message) {
  const bytes = message instanceof Uint8Array ? message : message instanceof ArrayBuffer ? new Uint8Array(message) : null;
  if (bytes === null) return { ok: false, error: 'not a binary message' };
  if (bytes.length === 0) return { ok: false, error: 'empty message' };
  if (bytes.length > MAX_WS_MESSAGE) return { ok: false, error: 'message over 8192 bytes' };
  const channel = bytes[0];
  if (channel !== Channel.FRAME && channel !== Channel.DATAGRAM) {
    return { ok: false, error: `unknown channel ${channel}` };
  }
  return { ok: true, channel, bytes: bytes.subarray(1) };
}

/** Hex of bytes, for logs and tests. */
export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
}

/** Bytes from hex with any whitespace, for tests. */
export function fromHex(hex) {
  const clean = hex.replace(/\s+/g, '');
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}
