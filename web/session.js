// The browser's chat session over one WebSocket (PROTOCOL.md §6), with the v1.1 client
// behaviour of §5.4: ordered exactly-once delivery, NACK with backoff, GONE, SEND with
// ClientSeq confirmed by its own echo, SYNC heartbeats, history at join, and reconnect with
// RESUME (§5.5) when the WebSocket drops.
//
//   page ──create/join/send/leave/list──▶ Session ──units (channel 1 frame, 2 datagram)──▶ /ws
//   page ◀──────── onEvent({type, ...}) ── Session ◀──── frames, datagrams of events ───── /ws
//
// No clock or socket is reached for directly: `now`, `setTimeout`, `clearTimeout`,
// `createSocket` and `randomBytes` are passed in, so tests run the whole state machine in
// virtual time with a fake WebSocket. The session keeps one timer armed for its earliest
// deadline (gap NACK, send check, heartbeat, reconnect, request timeout).

import {
  Channel,
  Kind,
  Op,
  State,
  Status,
  MAX_MESSAGE,
  MAX_NACK_COUNT,
  checkText,
  decodeFrame,
  decodeJoinComplete,
  decodeListComplete,
  decodeServerDatagram,
  decodeStatus,
  encodeCreate,
  encodeJoin,
  encodeLeave,
  encodeList,
  encodeNack,
  encodeResume,
  encodeSend,
  encodeSync,
  seqAdd,
  seqDiff,
  unwrapUnit,
  wrapUnit,
} from './protocol.js';

/** Tunables; every one may be overridden through `options.config`. */
export const DEFAULT_CONFIG = Object.freeze({
  /** History fetched at join: NACK J-N..J-1 (§5.4). */
  historyCount: 50,
  /** Wait this long for reordering before NACKing a gap (§5.4 "about 10 ms"). */
  reorderWaitMs: 10,
  /** ...or until this many later events arrived (§5.4). */
  reorderEvents: 3,
  /** NACK repeat interval: 50, 100, 200, ... ms while a gap lasts (§5.4). */
  nackBackoffMs: 50,
  /** Cap of the NACK repeat interval, so a long gap is still asked for every few seconds. */
  nackBackoffMaxMs: 3200,
  /** Events kept ahead of a gap: bounds memory against a hostile or runaway Seq. */
  maxBuffered: 4096,
  /** NACKs sent per round (512 events each): bounds one round's burst after a long outage. */
  maxNacksPerRound: 8,
  /** First check of an unconfirmed SEND, doubling after (§5.4 "250 ms, doubling, 5 tries"). */
  sendCheckMs: 250,
  sendTries: 5,
  /** Unconfirmed messages at most: typing on while offline does not queue without end. */
  maxPending: 100,
  /** An unanswered SYNC is repeated this soon (§5.4 "three SYNCs ... about a second apart"). */
  syncRetryMs: 1000,
  /** This many unanswered SYNCs in a row mean the WebSocket is dead: reconnect. */
  deadSyncs: 3,
  /** Reconnect attempts: first at once, then 500 ms doubling up to the cap. */
  reconnectBaseMs: 500,
  reconnectMaxMs: 8000,
  /** A request (or the WebSocket opening) not answered within this is a dead connection. */
  requestTimeoutMs: 10000,
});

/** A buffer entry for a Seq that GONE said is no longer held. */
const GONE = Symbol('gone');

/** Statuses that mean "try the same request again later" rather than "give up". */
const TRANSIENT = new Set([Status.SERVER_FULL, Status.TOO_MANY_REQUESTS]);

/** Random bytes from the platform CSPRNG (the browser's, or Node's global crypto). */
function defaultRandomBytes(n) {
  const out = new Uint8Array(n);
  globalThis.crypto.getRandomValues(out);
  return out;
}

/**
 * One chat client. Create it once per page; it connects lazily and is reused for LIST,
 * CREATE/JOIN, the membership, and a new CREATE/JOIN after the room ended.
 *
 * options: { url, onEvent, createSocket(url), now(), setTimeout(fn, ms), clearTimeout(id),
 *            randomBytes(n), config }
 */
export class Session {
  constructor(options) {
    this.url = options.url;
    this.onEvent = options.onEvent ?? (() => {});
    this.createSocket = options.createSocket ?? ((url) => new WebSocket(url));
    this.now = options.now ?? (() => Date.now());
    this.setTimer = options.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
    this.clearTimer = options.clearTimeout ?? ((id) => globalThis.clearTimeout(id));
    this.randomBytes = options.randomBytes ?? defaultRandomBytes;
    this.config = { ...DEFAULT_CONFIG, ...(options.config ?? {}) };

    this.ws = null;
    this.wsOpen = false;
    this.openWaiters = [];
    this.openDeadline = null;
    this.requests = [];
    this.timer = null;
    this.timerAt = null;
    this.closed = false;
    this.entering = false;

    /** 'lobby' | 'member' | 'reconnecting' | 'rejoining' | 'leaving' */
    this.phase = 'lobby';
    this.member = null;
    this.resetDelivery();
  }

  // --- public API -------------------------------------------------------------------

  /** LIST: { ok: true, rooms } or { ok: false, status, error }. */
  async list() {
    const reply = await this.request(Op.LIST, encodeList());
    if (reply.status !== Status.OK) return { ok: false, status: reply.status, error: reply.error };
    return { ok: true, rooms: reply.rooms };
  }

  /** CREATE a room and become its host: { ok: true } or { ok: false, status, error }. */
  async create({ room, user, password = '', capacity = 0 }) {
    return this.enter(Op.CREATE, { room, user, password, capacity });
  }

  /** JOIN a room: { ok: true } or { ok: false, status, error }. */
  async join({ room, user, password = '' }) {
    return this.enter(Op.JOIN, { room, user, password });
  }

  /**
   * Sends a chat message with SEND. Returns { ok: true, clientSeq } (the page shows it as
   * "sending…" until a `confirmed` event) or { ok: false, error }.
   */
  send(text) {
    if (!this.member || !['member', 'reconnecting', 'rejoining'].includes(this.phase)) {
      return { ok: false, error: 'not in a room' };
    }
    const checked = checkText(text, 1, MAX_MESSAGE);
    if (!checked.ok) return { ok: false, error: `message ${checked.error}` };
    if (this.pending.length >= this.config.maxPending) {
      return { ok: false, error: 'too many messages not yet sent; wait for the connection' };
    }
    const clientSeq = this.member.nextClientSeq++;
    const pending = { clientSeq, text, state: 'sending', round: 0, checkAt: null, syncsBefore: 0 };
    this.pending.push(pending);
    // After a new JOIN, older unconfirmed messages go first, once recovery shows which
    // of them the room already has (checkRecovery): a new one waits behind them.
    const holding = this.phase === 'rejoining' || (this.recovery !== null && this.recovery.rejoined);
    if (this.phase === 'member' && !holding) this.transmitSend(pending);
    else {
      // Offline: it goes out once RESUME (checked by SYNC first) or the new JOIN succeeds.
      if (holding) pending.state = 'held';
      pending.announced = true;
      this.emit({ type: 'pending', clientSeq, text });
    }
    this.arm();
    return { ok: true, clientSeq };
  }

  /** LEAVE the room (for the host this closes it). Resolves { ok, status }. */
  async leave() {
    const member = this.member;
    if (!member) return { ok: false, error: 'not in a room' };
    this.phase = 'leaving';
    this.endMembership();
    let reply;
    try {
      reply = await this.request(Op.LEAVE, encodeLeave({ room: member.room, token: member.token }));
    } catch (err) {
      reply = { status: null, error: String(err.message ?? err) };
    }
    this.phase = 'lobby';
    this.emit({ type: 'ended', reason: 'left' });
    // UNAUTHORIZED: the token was already void (timed out); either way we are out.
    return { ok: reply.status === Status.OK, status: reply.status, error: reply.error };
  }

  /** Closes the WebSocket and stops every timer; the session is not used again. */
  close() {
    this.closed = true;
    this.endMembership();
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
    this.dropSocket('closed by page');
  }

  /** True while a membership is live (member, reconnecting or rejoining). */
  get inRoom() {
    return this.member !== null;
  }

  // --- requests (TCRP over channel 1) -----------------------------------------------

  async enter(op, fields) {
    if (this.member || this.entering) return { ok: false, status: null, error: 'already in a room' };
    const resumeKey = this.randomBytes(32);
    let frame;
    try {
      frame = op === Op.CREATE ? encodeCreate({ ...fields, resumeKey }) : encodeJoin({ ...fields, resumeKey });
    } catch (err) {
      return { ok: false, status: Status.INVALID_REQUEST, error: err.message };
    }
    this.entering = true;
    const reply = await this.request(op, frame);
    this.entering = false;
    if (reply.status !== Status.OK) return { ok: false, status: reply.status, error: reply.error };
    if (this.closed) return { ok: false, status: null, error: 'session closed' };
    this.resetDelivery();
    this.member = {
      room: fields.room,
      user: fields.user,
      password: fields.password ?? '',
      isHost: op === Op.CREATE,
      token: reply.token,
      resumeKey,
      idleTimeout: reply.idleTimeout,
      nextClientSeq: 1,
      // A TIMED_OUT for our own name ends this membership only once it is ours (see onRoomEvent).
      armed: true,
    };
    this.phase = 'member';
    this.emit({ type: 'entered', room: fields.room, user: fields.user, isHost: op === Op.CREATE });
    this.startDataPlane();
    return { ok: true };
  }

  /**
   * Sends one request and resolves with its reply: { status, ...COMPLETE fields } or
   * { status: null, error } when the connection failed. Never rejects.
   */
  async request(op, frame) {
    try {
      await this.ensureOpen();
    } catch (err) {
      return { status: null, error: String(err.message ?? err) };
    }
    if (!this.ws || !this.wsOpen) return { status: null, error: 'connection closed' };
    return new Promise((resolve) => {
      this.requests.push({ op, resolve, awaitingComplete: false, deadline: this.now() + this.config.requestTimeoutMs });
      try {
        this.ws.send(wrapUnit(Channel.FRAME, frame));
      } catch {
        // left to the request deadline (or the close event) to fail it
      }
      this.arm();
    });
  }

  onFrame(bytes) {
    const decoded = decodeFrame(bytes);
    const head = this.requests[0];
    if (!decoded.ok || !head) return this.dropSocket(decoded.ok ? 'reply without request' : decoded.error);
    const { frame } = decoded;
    if (frame.state === State.RESPONSE) {
      if (head.awaitingComplete) return this.dropSocket('RESPONSE where COMPLETE was due');
      const status = decodeStatus(frame.payload);
      if (!status.ok) return this.dropSocket(status.error);
      // Operation 0 with SERVER_FULL: the connection limit's answer (§1.1), for our request.
      if (frame.op !== head.op && !(frame.op === 0 && status.status === Status.SERVER_FULL)) {
        return this.dropSocket('RESPONSE for another operation');
      }
      const completes = [Op.CREATE, Op.JOIN, Op.LIST, Op.RESUME].includes(head.op);
      if (status.status === Status.OK && completes) {
        head.awaitingComplete = true;
        return;
      }
      this.requests.shift();
      head.resolve({ status: status.status });
      return;
    }
    if (frame.state !== State.COMPLETE || !head.awaitingComplete || frame.op !== head.op) {
      return this.dropSocket('unexpected frame');
    }
    const body = head.op === Op.LIST ? decodeListComplete(frame.payload) : decodeJoinComplete(frame.payload);
    if (!body.ok) return this.dropSocket(body.error);
    this.requests.shift();
    head.resolve({ status: Status.OK, ...body });
  }

  // --- the WebSocket ----------------------------------------------------------------

  ensureOpen() {
    if (this.closed) return Promise.reject(new Error('session closed'));
    if (this.ws && this.wsOpen) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.openWaiters.push({ resolve, reject });
      if (!this.ws) this.connect();
    });
  }

  connect() {
    let ws;
    try {
      ws = this.createSocket(this.url);
    } catch (err) {
      this.failOpen(err);
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.wsOpen = false;
    this.openDeadline = this.now() + this.config.requestTimeoutMs;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.wsOpen = true;
      this.openDeadline = null;
      this.syncsSent = 0;
      this.syncAnswers = 0;
      this.unanswered = [];
      this.emit({ type: 'connection', open: true });
      const waiters = this.openWaiters.splice(0);
      for (const w of waiters) w.resolve();
      this.arm();
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.onMessage(ev.data);
      this.arm();
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.dropSocket('connection closed');
    };
    ws.onerror = () => {};
    this.arm();
  }

  failOpen(err) {
    const waiters = this.openWaiters.splice(0);
    for (const w of waiters) w.reject(err instanceof Error ? err : new Error(String(err)));
  }

  /** Forgets the current WebSocket: fails what waited on it and starts a reconnect if in a room. */
  dropSocket(reason) {
    const ws = this.ws;
    if (!ws) return;
    const wasOpen = this.wsOpen;
    this.ws = null;
    this.wsOpen = false;
    this.openDeadline = null;
    try {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      ws.close();
    } catch {
      // A socket that cannot close is gone anyway.
    }
    this.failOpen(new Error(reason));
    const requests = this.requests.splice(0);
    for (const r of requests) r.resolve({ status: null, error: reason });
    if (wasOpen) this.emit({ type: 'connection', open: false, reason });
    if (this.phase === 'member') this.startReconnect();
    this.arm();
  }

  onMessage(data) {
    const unit = unwrapUnit(data instanceof ArrayBuffer ? new Uint8Array(data) : data);
    if (!unit.ok) return this.dropSocket(unit.error);
    if (unit.channel === Channel.FRAME) return this.onFrame(unit.bytes);
    return this.onDatagram(unit.bytes);
  }

  sendDatagram(bytes) {
    if (!this.ws || !this.wsOpen) return false;
    try {
      this.ws.send(wrapUnit(Channel.DATAGRAM, bytes));
    } catch {
      return false; // a socket failing under us: its close event starts the reconnect
    }
    return true;
  }

  // --- the data plane ---------------------------------------------------------------

  /** Delivery state of a new membership: nothing delivered, nothing pending. */
  resetDelivery() {
    this.delivered = null; // highest Seq delivered, null until the first event anchors it
    this.joinSeq = null; // events before it are history
    this.highest = null; // highest Seq known to exist (events, SYNC LastSeq)
    this.buffer = new Map(); // Seq -> event or GONE, ahead of a gap
    this.gap = null; // { since, later, attempt, nextAt }
    this.pending = []; // unconfirmed SENDs, oldest first
    this.recovery = null; // { awaitSync, upTo, count, rejoined }
    this.syncsSent = this.syncsSent ?? 0;
    this.syncAnswers = this.syncAnswers ?? 0;
    this.unanswered = this.unanswered ?? [];
    this.nextHeartbeatAt = null;
    this.reconnect = null; // { attempt, nextAt, busy }
  }

  /** First datagram after CREATE/JOIN/RESUME: a SYNC binds (or re-pins) the member. */
  startDataPlane() {
    this.sendSync();
    this.arm();
  }

  heartbeatMs() {
    // §2.1: at least every IdleTimeout × 250 ms.
    return Math.max(1, this.member.idleTimeout) * 250;
  }

  sendSync() {
    const m = this.member;
    if (!m || !this.sendDatagram(encodeSync({ room: m.room, token: m.token }))) return;
    this.syncsSent++;
    this.unanswered.push(this.now());
    // Unanswered so far: ask again in about a second (three in a row mean a dead link).
    this.nextHeartbeatAt = this.now() + Math.min(this.heartbeatMs(), this.config.syncRetryMs);
  }

  transmitSend(p) {
    const m = this.member;
    p.state = 'sending';
    p.syncsBefore = this.syncsSent;
    p.round += 1;
    p.checkAt = this.now() + this.config.sendCheckMs * 2 ** (p.round - 1);
    this.sendDatagram(encodeSend({ room: m.room, token: m.token, clientSeq: p.clientSeq, message: p.text }));
    if (!p.announced) {
      p.announced = true;
      this.emit({ type: 'pending', clientSeq: p.clientSeq, text: p.text });
    }
  }

  onDatagram(bytes) {
    if (!this.member || this.phase === 'leaving') return;
    const { events } = decodeServerDatagram(bytes);
    for (const ev of events) {
      if (!this.member) return; // the room ended inside this datagram
      this.onServerEvent(ev);
    }
  }

  onServerEvent(ev) {
    switch (ev.kind) {
      case Kind.MESSAGE:
      case Kind.JOINED:
      case Kind.LEFT:
      case Kind.TIMED_OUT:
      case Kind.ROOM_CLOSED:
        if (ev.seq !== 0) this.onRoomEvent(ev);
        return;
      case Kind.RATE_LIMITED:
        this.emit({ type: 'rateLimited', text: ev.text });
        return;
      case Kind.GONE:
        if (!ev.malformed) this.onGone(ev.fromSeq, ev.count);
        return;
      case Kind.SYNC:
        if (ev.malformed) return;
        if (ev.user !== '') this.onSyncAnswer(ev.lastClientSeq, ev.lastSeq);
        this.learnLatest(ev.lastSeq);
        this.checkRecovery();
        return;
      case Kind.RESUMED:
        this.emit({ type: 'resumed', user: ev.user });
        return;
      default:
        return; // §2.2: a receiver ignores Kinds it does not know
    }
  }

  /** Sets the start of delivery at the first Seq seen: history J-N..J-1 is fetched at once. */
  anchor(seq) {
    this.joinSeq = seq;
    this.delivered = Math.max(0, seq - this.config.historyCount - 1);
    this.gap = { since: this.now(), later: 0, attempt: 0, nextAt: this.now() };
  }

  onRoomEvent(ev) {
    if (this.delivered === null) this.anchor(ev.seq);
    const d = seqDiff(ev.seq, this.delivered);
    if (d <= 0) return; // delivered already: a duplicate
    this.noteHighest(ev.seq);
    if (d > this.config.maxBuffered) return; // beyond the window: fetched again later
    if (!this.buffer.has(ev.seq) || this.buffer.get(ev.seq) === GONE) {
      if (this.gap && d > 1) this.gap.later += 1;
      this.buffer.set(ev.seq, ev);
    }
    this.drain();
    if (this.gap && this.gap.attempt === 0 && this.gap.later >= this.config.reorderEvents) this.sendNacks();
  }

  noteHighest(seq) {
    if (this.highest === null || seqDiff(seq, this.highest) > 0) this.highest = seq;
  }

  learnLatest(lastSeq) {
    if (lastSeq === 0) return;
    if (this.delivered === null) {
      this.anchor(lastSeq);
      this.noteHighest(lastSeq);
      this.drain();
      return;
    }
    if (seqDiff(lastSeq, this.delivered) > 0) this.noteHighest(lastSeq);
    this.drain();
  }

  onGone(fromSeq, count) {
    if (this.delivered === null || fromSeq === 0) return;
    for (let i = 0; i < count; i++) {
      const seq = seqAdd(fromSeq, i);
      const d = seqDiff(seq, this.delivered);
      if (d <= 0) continue;
      if (d > this.config.maxBuffered) break;
      if (!this.buffer.has(seq)) this.buffer.set(seq, GONE);
      this.noteHighest(seq);
    }
    this.drain();
  }

  /** Delivers what follows `delivered` without a hole, then updates the gap. */
  drain() {
    let lost = 0;
    let lostHistory = 0;
    let advanced = false;
    for (;;) {
      const next = seqAdd(this.delivered, 1);
      const item = this.buffer.get(next);
      if (item === undefined) break;
      this.buffer.delete(next);
      this.delivered = next;
      advanced = true;
      if (item === GONE) {
        if (this.isHistory(next)) lostHistory++;
        else lost++;
      } else {
        this.deliver(item);
        if (!this.member) return; // ROOM_CLOSED ended it
      }
    }
    if (lostHistory > 0) this.emit({ type: 'gone', count: lostHistory, history: true });
    if (lost > 0) this.emit({ type: 'gone', count: lost, history: false });
    const missing = this.highest !== null && seqDiff(this.highest, this.delivered) > 0;
    if (!missing) {
      this.gap = null;
    } else if (!this.gap) {
      // The events already waiting beyond the hole count as "later events" (§5.4).
      const later = this.buffer.size;
      this.gap = { since: this.now(), later, attempt: 0, nextAt: this.now() + this.config.reorderWaitMs };
    } else if (advanced && this.gap.attempt > 0) {
      // Answers are coming: ask for the rest after one short interval again.
      this.gap.attempt = 1;
      this.gap.nextAt = Math.min(this.gap.nextAt, this.now() + this.config.nackBackoffMs);
    }
    this.checkRecovery();
  }

  isHistory(seq) {
    return this.joinSeq !== null && seqDiff(seq, this.joinSeq) < 0;
  }

  /** NACKs every missing range between `delivered` and what is known to exist. */
  sendNacks() {
    const gap = this.gap;
    const m = this.member;
    if (!gap || !m) return;
    const limit = Math.min(seqDiff(this.highest, this.delivered), this.config.maxBuffered);
    let sent = 0;
    let runStart = null;
    let runLen = 0;
    const flush = () => {
      if (runStart !== null && sent < this.config.maxNacksPerRound) {
        this.sendDatagram(encodeNack({ room: m.room, token: m.token, fromSeq: runStart, count: runLen }));
        sent++;
      }
      runStart = null;
      runLen = 0;
    };
    for (let i = 1; i <= limit && sent < this.config.maxNacksPerRound; i++) {
      const seq = seqAdd(this.delivered, i);
      if (this.buffer.has(seq)) {
        flush();
        continue;
      }
      if (runStart === null) runStart = seq;
      runLen++;
      if (runLen === MAX_NACK_COUNT) flush();
    }
    flush();
    gap.attempt += 1;
    const backoff = this.config.nackBackoffMs * 2 ** (gap.attempt - 1);
    gap.nextAt = this.now() + Math.min(backoff, this.config.nackBackoffMaxMs);
  }

  deliver(ev) {
    const m = this.member;
    const history = this.isHistory(ev.seq);
    const mine = ev.user === m.user;
    if (this.recovery && ev.kind === Kind.MESSAGE) {
      const r = this.recovery;
      if (r.awaitSync || (r.upTo !== null && r.upTo !== 0 && seqDiff(ev.seq, r.upTo) <= 0)) r.count++;
    }
    switch (ev.kind) {
      case Kind.MESSAGE: {
        let clientSeq = null;
        if (mine) {
          const i = this.pending.findIndex((p) => p.text === ev.text);
          if (i >= 0) {
            clientSeq = this.pending[i].clientSeq;
            this.pending.splice(i, 1);
          }
        }
        this.emit({ type: 'message', seq: ev.seq, user: ev.user, text: ev.text, mine, history, clientSeq });
        if (clientSeq !== null) this.emit({ type: 'confirmed', clientSeq, seq: ev.seq });
        return;
      }
      case Kind.JOINED:
        if (mine && !history) m.armed = true;
        this.emit({ type: 'joined', seq: ev.seq, user: ev.user, mine, history });
        return;
      case Kind.LEFT:
        this.emit({ type: 'left', seq: ev.seq, user: ev.user, mine, history });
        return;
      case Kind.TIMED_OUT:
        this.emit({ type: 'timedOut', seq: ev.seq, user: ev.user, mine, history });
        if (mine && !history && m.armed && this.phase === 'member') this.startRejoin('timed out');
        return;
      case Kind.ROOM_CLOSED:
        this.emit({ type: 'closed', seq: ev.seq, reason: ev.text, history });
        if (!history) {
          this.endMembership();
          this.phase = 'lobby';
          this.emit({ type: 'ended', reason: 'closed' });
        }
        return;
      default:
    }
  }

  onSyncAnswer(lastClientSeq, lastSeq) {
    this.syncAnswers++;
    this.unanswered.shift();
    if (this.unanswered.length === 0 && this.member) {
      this.nextHeartbeatAt = this.now() + this.heartbeatMs();
    }
    const answer = this.syncAnswers;
    for (const p of this.pending) {
      if (p.syncsBefore >= answer) continue; // this SYNC went out before that SEND
      if (lastClientSeq >= p.clientSeq) {
        p.state = 'relayed'; // its event is on the way or is recovered by NACK
        p.checkAt = null;
      } else if (p.state === 'checking') {
        this.transmitSend(p);
      }
    }
    if (this.recovery && this.recovery.awaitSync) {
      // The first answer on the new address says how far the room got while we were away.
      this.recovery.awaitSync = false;
      this.recovery.upTo = lastSeq;
    }
  }

  checkRecovery() {
    const r = this.recovery;
    if (!r || r.awaitSync || this.gap) return;
    this.recovery = null;
    this.emit({ type: 'reconnected', recovered: r.count, rejoined: r.rejoined });
    // After a new JOIN, messages that never came back are sent again under the new token.
    for (const p of this.pending) {
      if (p.state !== 'held') continue;
      p.round = 0;
      this.transmitSend(p);
    }
  }

  // --- reconnect (RESUME) and rejoin (JOIN again) ------------------------------------

  startReconnect() {
    this.phase = 'reconnecting';
    this.nextHeartbeatAt = null;
    this.reconnect = { attempt: 0, nextAt: this.now(), busy: false };
    this.emit({ type: 'reconnecting' });
  }

  async attemptReconnect() {
    const r = this.reconnect;
    const m = this.member;
    r.busy = true;
    r.attempt += 1;
    const reply = await this.request(
      Op.RESUME,
      encodeResume({ room: m.room, token: m.token, resumeKey: m.resumeKey }),
    );
    if (this.member !== m || this.phase !== 'reconnecting') return;
    r.busy = false;
    if (reply.status === Status.OK) {
      m.idleTimeout = reply.idleTimeout;
      this.reconnect = null;
      this.phase = 'member';
      this.beginRecovery(false);
      for (const p of this.pending) {
        if (p.state === 'sending' || p.state === 'checking') {
          p.state = 'checking';
          p.syncsBefore = this.syncsSent;
          p.round = 0;
          p.checkAt = this.now() + this.config.sendCheckMs;
        }
      }
      this.startDataPlane();
      return;
    }
    if (reply.status === Status.ROOM_NOT_FOUND) return this.roomGone();
    if (reply.status === null || TRANSIENT.has(reply.status)) return this.scheduleRetry(r);
    // UNAUTHORIZED (the member timed out, or the key is not known) or anything else:
    // the old membership cannot be moved; JOIN again under the same name (§5.4).
    this.startRejoin('resume refused');
  }

  scheduleRetry(r) {
    const delay = Math.min(this.config.reconnectBaseMs * 2 ** (r.attempt - 1), this.config.reconnectMaxMs);
    r.nextAt = this.now() + delay;
    this.arm();
  }

  beginRecovery(rejoined) {
    this.recovery = { awaitSync: true, upTo: null, count: 0, rejoined };
  }

  /** JOIN again under the same name after a TIMED_OUT or a refused RESUME (§5.4). */
  startRejoin(reason) {
    this.phase = 'rejoining';
    this.nextHeartbeatAt = null;
    this.reconnect = { attempt: 0, nextAt: this.now(), busy: false };
    for (const p of this.pending) {
      p.state = 'held';
      p.checkAt = null;
    }
    this.emit({ type: 'rejoining', reason });
    this.arm();
  }

  async attemptRejoin() {
    const r = this.reconnect;
    const m = this.member;
    r.busy = true;
    r.attempt += 1;
    const resumeKey = this.randomBytes(32);
    const reply = await this.request(
      Op.JOIN,
      encodeJoin({ room: m.room, user: m.user, password: m.password, resumeKey }),
    );
    if (this.member !== m || this.phase !== 'rejoining') return;
    r.busy = false;
    if (reply.status === Status.OK) {
      m.token = reply.token;
      m.resumeKey = resumeKey;
      m.idleTimeout = reply.idleTimeout;
      m.isHost = false;
      m.armed = false; // until our new JOINED comes, an old TIMED_OUT of ours is not news
      this.reconnect = null;
      // SYNCs of the old token are never answered: do not count them against the link.
      this.unanswered = [];
      this.syncAnswers = this.syncsSent;
      this.phase = 'member';
      this.beginRecovery(true);
      this.startDataPlane();
      return;
    }
    if (reply.status === Status.ROOM_NOT_FOUND) return this.roomGone();
    if (reply.status === null || TRANSIENT.has(reply.status)) return this.scheduleRetry(r);
    // NAME_TAKEN, ROOM_FULL, BAD_PASSWORD...: this page cannot get back in by itself.
    this.endMembership();
    this.phase = 'lobby';
    this.emit({ type: 'ended', reason: 'rejoin failed', status: reply.status });
  }

  roomGone() {
    this.endMembership();
    this.phase = 'lobby';
    this.emit({ type: 'closed', seq: null, reason: 'room no longer exists', history: false });
    this.emit({ type: 'ended', reason: 'closed' });
  }

  endMembership() {
    for (const p of this.pending) this.emit({ type: 'failed', clientSeq: p.clientSeq });
    this.member = null;
    this.resetDelivery();
    if (this.phase !== 'leaving') this.phase = 'lobby';
  }

  // --- time -------------------------------------------------------------------------

  /** The earliest deadline of anything waiting, or null. */
  nextDeadline() {
    let t = null;
    const consider = (x) => {
      if (x !== null && x !== undefined && (t === null || x < t)) t = x;
    };
    consider(this.openDeadline);
    for (const r of this.requests) consider(r.deadline);
    if (this.member && this.phase === 'member' && this.wsOpen) {
      if (this.gap) consider(this.gap.nextAt);
      for (const p of this.pending) consider(p.checkAt);
      consider(this.nextHeartbeatAt);
    }
    if (this.reconnect && !this.reconnect.busy) consider(this.reconnect.nextAt);
    return t;
  }

  arm() {
    if (this.closed) return;
    const at = this.nextDeadline();
    if (at === this.timerAt) return;
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
    this.timerAt = at;
    if (at === null) return;
    this.timer = this.setTimer(() => {
      this.timer = null;
      this.timerAt = null;
      this.handleTimeout();
      this.arm();
    }, Math.max(0, at - this.now()));
  }

  handleTimeout() {
    const now = this.now();
    if (this.openDeadline !== null && now >= this.openDeadline) return this.dropSocket('connection timed out');
    if (this.requests.some((r) => now >= r.deadline)) return this.dropSocket('request timed out');
    if (this.reconnect && !this.reconnect.busy && now >= this.reconnect.nextAt) {
      if (this.phase === 'reconnecting') this.attemptReconnect();
      else if (this.phase === 'rejoining') this.attemptRejoin();
      return;
    }
    if (!this.member || this.phase !== 'member' || !this.wsOpen) return;
    if (this.gap && now >= this.gap.nextAt) this.sendNacks();
    for (const p of [...this.pending]) {
      if (p.checkAt === null || now < p.checkAt) continue;
      if (p.round >= this.config.sendTries) {
        this.pending.splice(this.pending.indexOf(p), 1);
        this.emit({ type: 'failed', clientSeq: p.clientSeq });
        continue;
      }
      // No echo yet: ask whether it was relayed (the answer decides: wait or send again).
      p.state = 'checking';
      p.syncsBefore = this.syncsSent;
      p.round += 1;
      p.checkAt = now + this.config.sendCheckMs * 2 ** (p.round - 1);
      this.sendSync();
    }
    if (this.nextHeartbeatAt !== null && now >= this.nextHeartbeatAt) {
      if (this.unanswered.length >= this.config.deadSyncs) return this.dropSocket('no answer to SYNC');
      this.sendSync();
    }
  }

  emit(event) {
    try {
      this.onEvent(event);
    } catch (err) {
      // A page bug must not break the protocol state machine.
      if (globalThis.console) console.error(err);
    }
  }
}

/** The WebSocket URL of the page's own server: ws(s)://<page host>/ws (§6). */
export function defaultUrl(location) {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}
