// Test harness: virtual time, a fake WebSocket, and a small fake OCM server that plays the
// server's part of PROTOCOL.md (rooms, tokens, Seq, history, SEND/NACK/SYNC, RESUME) over
// the §6 units, so the session's recovery logic runs end to end without a browser or socket.
// Loss is injected by a filter on server-to-client datagrams.

import {
  Channel,
  Kind,
  Op,
  State,
  Status,
  decodeFrame,
  encodeEvent,
  encodeFrame,
  seqAdd,
  seqDiff,
  unwrapUnit,
  wrapUnit,
} from '../protocol.js';

/** Virtual clock: timers run only inside advance(), in deadline order. */
export function virtualClock() {
  let now = 0;
  let nextId = 1;
  const timers = new Map();
  const flush = () => new Promise((resolve) => setImmediate(resolve));
  return {
    now: () => now,
    setTimeout: (fn, ms) => {
      const id = nextId++;
      timers.set(id, { at: now + Math.max(0, ms), fn, id });
      return id;
    },
    clearTimeout: (id) => timers.delete(id),
    pending: () => timers.size,
    /** Runs every timer due within `ms`, letting promises settle after each. */
    async advance(ms) {
      const end = now + ms;
      await flush();
      for (let guard = 0; guard < 100000; guard++) {
        let first = null;
        for (const t of timers.values()) if (t.at <= end && (first === null || t.at < first.at || (t.at === first.at && t.id < first.id))) first = t;
        if (!first) break;
        timers.delete(first.id);
        now = first.at;
        first.fn();
        await flush();
      }
      now = end;
      await flush();
    },
  };
}

const LATENCY_MS = 1;

/** The page's end of a WebSocket; the server holds the other end (`peer`). */
class FakeSocket {
  constructor(server, url) {
    this.server = server;
    this.url = url;
    this.open = false;
    this.closed = false;
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
  }
  send(data) {
    // As a browser's WebSocket: an error while CONNECTING, silently lost once closing.
    if (!this.open) throw new Error('InvalidStateError: still connecting');
    if (this.closed) return;
    const copy = new Uint8Array(data);
    this.sent.push(copy);
    this.server.clock.setTimeout(() => this.server.receive(this, copy), LATENCY_MS);
  }
  close() {
    if (this.closed) return;
    this.closed = true;
    this.server.clock.setTimeout(() => this.server.disconnected(this), LATENCY_MS);
  }
  /** Server side: deliver one message to the page. */
  deliver(bytes) {
    if (this.closed) return;
    const buf = new Uint8Array(bytes).buffer;
    this.server.clock.setTimeout(() => {
      if (!this.closed && this.onmessage) this.onmessage({ data: buf });
    }, LATENCY_MS);
  }
  /** Server side: the connection breaks (as a cut proxy would). */
  cut() {
    if (this.closed) return;
    this.closed = true;
    this.server.disconnected(this);
    this.server.clock.setTimeout(() => this.onclose && this.onclose({ code: 1006 }), LATENCY_MS);
  }
}

function u16(b, at) {
  return (b[at] << 8) | b[at + 1];
}
function u32(b, at) {
  return ((b[at] << 24) >>> 0) + (b[at + 1] << 16) + (b[at + 2] << 8) + b[at + 3];
}
const dec = new TextDecoder();
const enc = new TextEncoder();

/** A fake OCM server with just enough of PROTOCOL.md to exercise a client. */
export class FakeServer {
  constructor(clock, { idleTimeout = 60, history = 1024 } = {}) {
    this.clock = clock;
    this.idleTimeout = idleTimeout;
    this.historyLimit = history;
    this.rooms = new Map();
    this.sockets = [];
    this.accepting = true;
    this.answerResume = true;
    this.answerRequests = true;
    /** (socket, eventBytes, kind) => true drops that server-to-client datagram. */
    this.dropFilter = null;
    /** (datagramBytes) => true drops that client-to-server datagram. */
    this.dropFromClient = null;
    this.log = []; // decoded client datagrams: { op, ... }
    this.tokenCounter = 0;
  }

  /** createSocket for the Session. */
  socketFactory() {
    return (url) => {
      const s = new FakeSocket(this, url);
      this.sockets.push(s);
      this.clock.setTimeout(() => {
        if (!this.accepting) {
          s.closed = true;
          if (s.onclose) s.onclose({ code: 1006 });
          return;
        }
        s.open = true;
        if (s.onopen) s.onopen();
      }, LATENCY_MS);
      return s;
    };
  }

  /** The most recent socket still open. */
  get socket() {
    return [...this.sockets].reverse().find((s) => s.open && !s.closed);
  }

  receive(socket, bytes) {
    if (socket.closed) return;
    const unit = unwrapUnit(bytes);
    if (unit.ok && unit.channel === Channel.DATAGRAM && this.dropFromClient && this.dropFromClient(unit.bytes)) return;
    if (!unit.ok) throw new Error(`client sent a bad unit: ${unit.error}`);
    if (unit.channel === Channel.FRAME) this.onRequest(socket, unit.bytes);
    else this.onDatagram(socket, unit.bytes);
  }

  disconnected(socket) {
    socket.closed = true;
    for (const room of this.rooms.values()) {
      for (const m of room.members.values()) if (m.session === socket) m.session = null;
    }
  }

  reply(socket, room, op, status, complete = null) {
    socket.deliver(wrapUnit(Channel.FRAME, encodeFrame(op, State.RESPONSE, room, new Uint8Array([status]))));
    if (complete) socket.deliver(wrapUnit(Channel.FRAME, encodeFrame(op, State.COMPLETE, room, complete)));
  }

  joinComplete(token) {
    const t = enc.encode(token);
    return new Uint8Array([t.length, ...t, 0x23, 0x29, this.idleTimeout >> 8, this.idleTimeout & 0xff]);
  }

  onRequest(socket, bytes) {
    if (!this.answerRequests) return undefined;
    const d = decodeFrame(bytes);
    if (!d.ok || d.frame.state !== State.REQUEST) throw new Error('client sent a bad frame');
    const { op, room: roomBytes, payload } = d.frame;
    const name = dec.decode(roomBytes);
    const room = this.rooms.get(name);
    if (op === Op.LIST) {
      const parts = [0, this.rooms.size];
      for (const r of [...this.rooms.values()].sort((a, b) => (a.name < b.name ? -1 : 1))) {
        const n = enc.encode(r.name);
        parts.push(n.length, ...n, 0, r.members.size, r.capacity >> 8, r.capacity & 0xff, r.password ? 1 : 0);
      }
      return this.reply(socket, roomBytes, op, Status.OK, new Uint8Array(parts));
    }
    if (op === Op.CREATE || op === Op.JOIN) {
      let at = 0;
      const user = dec.decode(payload.subarray(at + 1, at + 1 + payload[at]));
      at += 1 + payload[at];
      const password = dec.decode(payload.subarray(at + 1, at + 1 + payload[at]));
      at += 1 + payload[at];
      let capacity = 0;
      if (op === Op.CREATE) {
        capacity = u16(payload, at);
        at += 2;
      }
      const resumeKey = at < payload.length ? payload.slice(at + 1, at + 1 + payload[at]) : null;
      if (op === Op.CREATE) {
        if (room) return this.reply(socket, roomBytes, op, Status.ROOM_EXISTS);
        const r = { name, password, capacity: capacity || 16, seq: 0, history: [], members: new Map(), host: null };
        this.rooms.set(name, r);
        const m = this.addMember(r, user, socket, resumeKey);
        r.host = m;
        return this.reply(socket, roomBytes, op, Status.OK, this.joinComplete(m.token));
      }
      if (!room) return this.reply(socket, roomBytes, op, Status.ROOM_NOT_FOUND);
      if (room.password && room.password !== password) return this.reply(socket, roomBytes, op, Status.BAD_PASSWORD);
      if ([...room.members.values()].some((m) => m.user === user)) return this.reply(socket, roomBytes, op, Status.NAME_TAKEN);
      if (room.members.size >= room.capacity) return this.reply(socket, roomBytes, op, Status.ROOM_FULL);
      const m = this.addMember(room, user, socket, resumeKey);
      return this.reply(socket, roomBytes, op, Status.OK, this.joinComplete(m.token));
    }
    if (op === Op.LEAVE) {
      if (!room) return this.reply(socket, roomBytes, op, Status.ROOM_NOT_FOUND);
      const m = room.members.get(dec.decode(payload));
      if (!m) return this.reply(socket, roomBytes, op, Status.UNAUTHORIZED);
      this.reply(socket, roomBytes, op, Status.OK);
      return this.removeMember(room, m, Kind.LEFT, 'host left');
    }
    if (op === Op.RESUME) {
      if (!this.answerResume) return undefined;
      if (!room) return this.reply(socket, roomBytes, op, Status.ROOM_NOT_FOUND);
      const token = dec.decode(payload.subarray(1, 1 + payload[0]));
      const key = payload.slice(2 + payload[0]);
      const m = room.members.get(token);
      if (!m || !m.resumeKey || m.resumeKey.join() !== key.join()) {
        return this.reply(socket, roomBytes, op, Status.UNAUTHORIZED);
      }
      m.session = socket;
      m.pinned = false;
      this.reply(socket, roomBytes, op, Status.OK, this.joinComplete(m.token));
      for (const o of room.members.values()) {
        if (o !== m && o.v11) this.sendTo(o, encodeEvent({ kind: Kind.RESUMED, seq: 0, user: m.user }), Kind.RESUMED);
      }
      return undefined;
    }
    throw new Error(`unexpected op ${op}`);
  }

  addMember(room, user, socket, resumeKey) {
    const token = `tok${++this.tokenCounter}`.padEnd(32, 'x');
    const m = { user, token, session: socket, pinned: false, bound: false, v11: false, lastClientSeq: 0, resumeKey };
    room.members.set(token, m);
    return m;
  }

  removeMember(room, m, kind, closeReason) {
    room.members.delete(m.token);
    this.broadcast(room, kind, m.user);
    if (room.host === m) {
      this.broadcast(room, Kind.ROOM_CLOSED, '', closeReason);
      this.rooms.delete(room.name);
    }
  }

  /** Server-side timeout of a member (as its IdleTimeout would). */
  timeOut(roomName, user) {
    const room = this.rooms.get(roomName);
    const m = [...room.members.values()].find((x) => x.user === user);
    // TIMED_OUT goes to the room and to that member, then its token is void.
    this.broadcast(room, Kind.TIMED_OUT, user);
    room.members.delete(m.token);
    if (room.host === m) {
      this.broadcast(room, Kind.ROOM_CLOSED, '', 'host timed out');
      this.rooms.delete(room.name);
    }
  }

  /** A room event (Kinds 1-5): next Seq, kept in history, sent to every bound member. */
  broadcast(room, kind, user, body = '') {
    room.seq = seqAdd(room.seq, 1);
    const bytes = encodeEvent({ kind, seq: room.seq, user, body });
    room.history.push({ seq: room.seq, bytes });
    if (room.history.length > this.historyLimit) room.history.shift();
    for (const m of room.members.values()) if (m.bound) this.sendTo(m, bytes, kind);
    // a member removed by this very event (TIMED_OUT) still gets it: handled by timeOut's order
    return room.seq;
  }

  sendTo(m, bytes, kind) {
    if (!m.session || !m.pinned || m.session.closed) return;
    if (this.dropFilter && this.dropFilter(m, bytes, kind)) return;
    m.session.deliver(wrapUnit(Channel.DATAGRAM, bytes));
  }

  onDatagram(socket, b) {
    if (b[0] !== 0) {
      this.log.push({ op: 'v1' });
      return;
    }
    const op = b[1];
    const roomName = dec.decode(b.subarray(4, 4 + b[2]));
    const token = dec.decode(b.subarray(4 + b[2], 4 + b[2] + b[3]));
    const body = b.subarray(4 + b[2] + b[3]);
    const room = this.rooms.get(roomName);
    const m = room && room.members.get(token);
    const entry = { op: ['', 'SEND', 'NACK', 'SYNC'][op], token, at: this.clock.now() };
    this.log.push(entry);
    if (!m || m.session !== socket) {
      entry.dropped = true;
      return;
    }
    m.v11 = true;
    m.pinned = true;
    if (!m.bound) {
      m.bound = true;
      this.broadcast(room, Kind.JOINED, m.user);
    }
    if (op === 1) {
      const cs = u32(body, 0);
      entry.clientSeq = cs;
      entry.text = dec.decode(body.subarray(4));
      if (cs > m.lastClientSeq) {
        m.lastClientSeq = cs;
        this.broadcast(room, Kind.MESSAGE, m.user, body.subarray(4));
      }
    } else if (op === 2) {
      const from = u32(body, 0);
      const count = u16(body, 4);
      entry.fromSeq = from;
      entry.count = count;
      this.answerNack(room, m, from, count);
    } else if (op === 3) {
      const sync = new Uint8Array(8);
      const v = new DataView(sync.buffer);
      v.setUint32(0, room.seq);
      v.setUint32(4, m.lastClientSeq);
      this.sendTo(m, encodeEvent({ kind: Kind.SYNC, seq: 0, user: m.user, body: sync }), Kind.SYNC);
    }
  }

  answerNack(room, m, from, count) {
    const oldest = room.history.length ? room.history[0].seq : null;
    let goneFrom = null;
    let goneCount = 0;
    for (let i = 0; i < count; i++) {
      const seq = seqAdd(from, i);
      if (room.seq === 0 || seqDiff(seq, room.seq) > 0) break; // not yet used
      const ev = room.history.find((h) => h.seq === seq);
      if (ev) {
        this.sendTo(m, ev.bytes, -1);
      } else if (oldest === null || seqDiff(seq, oldest) < 0) {
        if (goneFrom === null) goneFrom = seq;
        goneCount++;
      }
    }
    if (goneCount > 0) {
      const body = new Uint8Array(6);
      const v = new DataView(body.buffer);
      v.setUint32(0, goneFrom);
      v.setUint16(4, goneCount);
      this.sendTo(m, encodeEvent({ kind: Kind.GONE, seq: 0, body }), Kind.GONE);
    }
  }

  /** A member the test plays directly (as a terminal user would be), always bound. */
  addRemote(roomName, user) {
    const room = this.rooms.get(roomName);
    const m = this.addMember(room, user, null, null);
    m.bound = true;
    this.broadcast(room, Kind.JOINED, user);
    return m;
  }

  say(roomName, user, text) {
    const room = this.rooms.get(roomName);
    return this.broadcast(room, Kind.MESSAGE, user, text);
  }
}

/** Collects a session's events. */
export function recorder() {
  const events = [];
  const fn = (e) => events.push(e);
  fn.events = events;
  fn.of = (type) => events.filter((e) => e.type === type);
  fn.messages = () => events.filter((e) => e.type === 'message').map((e) => `${e.seq}:${e.user}:${e.text}`);
  return fn;
}
