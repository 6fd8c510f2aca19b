// The session's §5.4 behaviour in virtual time against a fake server over a fake WebSocket:
// reorder and NACK, backoff, GONE, SEND confirmed by echo, SYNC retry, heartbeat, history at
// join, reconnect with RESUME, rejoin, room end, and the bounds on what a server can make it
// hold.

import test from 'node:test';
import assert from 'node:assert/strict';
import { Session } from '../session.js';
import { Channel, Kind, Status, encodeEvent, wrapUnit } from '../protocol.js';
import { FakeServer, recorder, virtualClock } from '../test-support/harness.js';

function setup(serverOptions = {}) {
  const clock = virtualClock();
  const server = new FakeServer(clock, serverOptions);
  let keyByte = 0;
  const make = (config = {}) => {
    const rec = recorder();
    const session = new Session({
      url: 'ws://127.0.0.1:9080/ws',
      onEvent: rec,
      createSocket: server.socketFactory(),
      now: clock.now,
      setTimeout: clock.setTimeout,
      clearTimeout: clock.clearTimeout,
      randomBytes: (n) => new Uint8Array(n).fill(++keyByte),
      config,
    });
    return { session, rec };
  };
  return { clock, server, make };
}

/** Runs a promise-returning call to completion in virtual time. */
async function run(clock, promise, ms = 50) {
  let result;
  promise.then((r) => {
    result = r;
  });
  await clock.advance(ms);
  return result;
}

function messageTexts(rec) {
  return rec.of('message').map((e) => e.text);
}

test('create, join, chat: each sees the other in order, own messages confirmed by echo', async () => {
  const { clock, server, make } = setup();
  const a = make();
  const b = make();
  assert.deepEqual(await run(clock, a.session.create({ room: 'lobby', user: 'alice', password: 'pw', capacity: 10 })), { ok: true });
  assert.deepEqual(await run(clock, b.session.join({ room: 'lobby', user: 'ボブ', password: 'pw' })), { ok: true });
  const sent = a.session.send('こんにちは 👋');
  assert.deepEqual(sent, { ok: true, clientSeq: 1 });
  assert.equal(a.rec.of('pending').length, 1);
  await clock.advance(20);
  b.session.send('hi alice');
  await clock.advance(20);
  assert.deepEqual(a.rec.messages(), ['3:alice:こんにちは 👋', '4:ボブ:hi alice']);
  assert.deepEqual(b.rec.messages(), ['3:alice:こんにちは 👋', '4:ボブ:hi alice']);
  assert.deepEqual(a.rec.of('confirmed'), [{ type: 'confirmed', clientSeq: 1, seq: 3 }]);
  assert.equal(a.rec.of('message')[0].mine, true);
  assert.equal(b.rec.of('message')[0].mine, false);
  // bob's view: alice's JOINED (1) came as history, his own JOINED (2) live
  const joins = b.rec.of('joined').map((e) => [e.seq, e.user, e.history]);
  assert.deepEqual(joins, [
    [1, 'alice', true],
    [2, 'ボブ', false],
  ]);
  // each sent exactly one SEND (no retries on a clean link)
  assert.equal(server.log.filter((l) => l.op === 'SEND').length, 2);
  // protocol errors come back as statuses
  const again = make();
  assert.deepEqual(await run(clock, again.session.create({ room: 'lobby', user: 'x' })), { ok: false, status: Status.ROOM_EXISTS, error: undefined });
  assert.equal((await run(clock, again.session.join({ room: 'lobby', user: 'x', password: 'no' }))).status, Status.BAD_PASSWORD);
  assert.equal((await run(clock, again.session.join({ room: 'lobby', user: 'alice', password: 'pw' }))).status, Status.NAME_TAKEN);
  assert.equal((await run(clock, again.session.join({ room: 'nope', user: 'x' }))).status, Status.ROOM_NOT_FOUND);
  const list = await run(clock, again.session.list());
  assert.deepEqual(list, { ok: true, rooms: [{ name: 'lobby', nameValid: true, members: 2, capacity: 10, hasPassword: true }] });
});

test('history at join: NACK J-50..J-1 at once, shown before the live events', async () => {
  const { clock, server, make } = setup();
  const a = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  for (let i = 1; i <= 60; i++) a.session.send(`m${i}`);
  await clock.advance(50);
  const b = make();
  await run(clock, b.session.join({ room: 'r', user: 'bob' }));
  // room: 1 JOINED alice, 2..61 messages, 62 JOINED bob: history is 12..61
  const bobNacks = server.log.filter((l) => l.op === 'NACK' && l.token.startsWith('tok2'));
  assert.deepEqual(bobNacks.map((l) => [l.fromSeq, l.count]), [[12, 50]]);
  const texts = messageTexts(b.rec);
  assert.deepEqual(texts, Array.from({ length: 50 }, (_, i) => `m${i + 11}`));
  assert.ok(b.rec.of('message').every((e) => e.history));
  assert.deepEqual(b.rec.of('joined').map((e) => [e.seq, e.history]), [[62, false]]);
});

test('a lost event is NACKed after about 10 ms and delivered once, in order', async () => {
  const { clock, server, make } = setup();
  const a = make();
  const b = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  await run(clock, b.session.join({ room: 'r', user: 'bob' }));
  const bob = [...server.rooms.get('r').members.values()].find((m) => m.user === 'bob');
  let dropped = false;
  server.dropFilter = (m, bytes, kind) => {
    if (m === bob && kind === Kind.MESSAGE && !dropped) {
      dropped = true;
      return true;
    }
    return false;
  };
  const before = server.log.length;
  server.say('r', 'alice', 'one'); // seq 3: lost
  await clock.advance(5);
  server.say('r', 'alice', 'two'); // seq 4: shows the gap
  const tGap = clock.now() + 1; // it reaches bob after 1 ms
  await clock.advance(3);
  assert.deepEqual(messageTexts(b.rec), []); // held behind the gap
  await clock.advance(30);
  const nacks = server.log.slice(before).filter((l) => l.op === 'NACK');
  assert.equal(nacks.length, 1);
  assert.deepEqual([nacks[0].fromSeq, nacks[0].count], [3, 1]);
  // the NACK went 10 ms after the gap showed, and took 1 ms to the server
  assert.equal(nacks[0].at - tGap, 10 + 1);
  assert.deepEqual(messageTexts(b.rec), ['one', 'two']);
  // a duplicate datagram changes nothing
  bob.session.deliver(wrapUnit(Channel.DATAGRAM, encodeEvent({ kind: Kind.MESSAGE, seq: 4, user: 'alice', body: 'two' })));
  await clock.advance(10);
  assert.deepEqual(messageTexts(b.rec), ['one', 'two']);
  assert.equal(b.session.buffer.size, 0);
});

test('three later events trigger the NACK before the 10 ms wait', async () => {
  const { clock, server, make } = setup();
  const a = make();
  const b = make({ reorderWaitMs: 1000 });
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  await run(clock, b.session.join({ room: 'r', user: 'bob' }));
  const bob = [...server.rooms.get('r').members.values()].find((m) => m.user === 'bob');
  server.dropFilter = (m, bytes, kind) => m === bob && kind === Kind.MESSAGE && bytes[4] === 3;
  const t0 = clock.now();
  for (const t of ['lost', 'x', 'y']) server.say('r', 'alice', t);
  await clock.advance(5);
  assert.equal(server.log.filter((l) => l.op === 'NACK' && l.at > t0).length, 0); // 2 later events: wait
  server.say('r', 'alice', 'z');
  await clock.advance(5);
  assert.equal(server.log.filter((l) => l.op === 'NACK' && l.at > t0).length, 1);
  server.dropFilter = null;
  await clock.advance(5);
  assert.deepEqual(messageTexts(b.rec), ['lost', 'x', 'y', 'z']);
});

test('NACK repeats after 50, 100, 200 ms while the gap lasts; GONE ends it with a count', async () => {
  const { clock, server, make } = setup();
  const a = make();
  const b = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  await run(clock, b.session.join({ room: 'r', user: 'bob' }));
  const bob = [...server.rooms.get('r').members.values()].find((m) => m.user === 'bob');
  // bob loses seq 3 and 4, and every repair, for a while
  server.dropFilter = (m, bytes, kind) => m === bob && ((kind === Kind.MESSAGE && bytes[4] < 5) || kind === -1 || kind === Kind.GONE);
  const t0 = clock.now();
  server.say('r', 'alice', 'a');
  server.say('r', 'alice', 'b');
  server.say('r', 'alice', 'c');
  await clock.advance(400);
  const times = server.log.filter((l) => l.op === 'NACK' && l.at > t0).map((l) => l.at - t0);
  assert.ok(times.length >= 4, String(times));
  const gaps = times.slice(1).map((t, i) => t - times[i]);
  assert.deepEqual(gaps.slice(0, 3), [50, 100, 200]);
  // the room forgets 3 and 4; the next answer is GONE
  const room = server.rooms.get('r');
  room.history = room.history.filter((h) => h.seq > 4);
  server.dropFilter = null;
  await clock.advance(1000);
  assert.deepEqual(messageTexts(b.rec), ['c']);
  assert.deepEqual(b.rec.of('gone').map((e) => [e.count, e.history]), [[2, false]]);
  const nacksAfter = server.log.filter((l) => l.op === 'NACK' && l.at > clock.now() - 500).length;
  assert.equal(nacksAfter, 0); // the gap is closed: no more NACKs
});

test('a lost echo: SYNC after 250 ms says relayed, NACK recovers it, confirmed once', async () => {
  const { clock, server, make } = setup();
  const a = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  const alice = [...server.rooms.get('r').members.values()][0];
  server.dropFilter = (m, bytes, kind) => m === alice && kind === Kind.MESSAGE;
  const t0 = clock.now();
  a.session.send('hello');
  await clock.advance(200);
  assert.equal(a.rec.of('confirmed').length, 0);
  server.dropFilter = null;
  await clock.advance(100);
  const after = server.log.filter((l) => l.at > t0);
  assert.deepEqual(after.map((l) => l.op).slice(0, 3), ['SEND', 'SYNC', 'NACK']);
  assert.equal(after[1].at - t0, 250 + 1);
  assert.equal(after.filter((l) => l.op === 'SEND').length, 1);
  assert.deepEqual(messageTexts(a.rec), ['hello']);
  assert.equal(a.rec.of('confirmed').length, 1);
});

test('a lost SEND: SYNC says not relayed, the same ClientSeq goes again, relayed once', async () => {
  const { clock, server, make } = setup();
  const a = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  let drops = 1;
  server.dropFromClient = (b) => b[0] === 0 && b[1] === 1 && drops-- > 0;
  a.session.send('again');
  await clock.advance(400);
  const sends = server.log.filter((l) => l.op === 'SEND');
  assert.deepEqual(sends.map((l) => l.clientSeq), [1]); // the first was lost before the log
  assert.deepEqual(messageTexts(a.rec), ['again']);
  assert.equal(a.rec.of('confirmed').length, 1);
  // a message never confirmed fails after 5 tries
  server.dropFromClient = (b) => b[0] === 0 && b[1] === 1;
  a.session.send('never');
  await clock.advance(20000);
  assert.deepEqual(a.rec.of('failed').map((e) => e.clientSeq), [2]);
  assert.deepEqual(messageTexts(a.rec), ['again']);
});

test('SYNC is the heartbeat: every IdleTimeout/4 on a quiet link', async () => {
  const { clock, server, make } = setup({ idleTimeout: 2 });
  const a = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }), 10);
  const t0 = clock.now();
  await clock.advance(2600);
  const syncs = server.log.filter((l) => l.op === 'SYNC' && l.at > t0).map((l) => l.at - t0);
  assert.equal(syncs.length, 5, String(syncs));
  const gaps = syncs.slice(1).map((t, i) => t - syncs[i]);
  assert.ok(gaps.every((g) => g >= 500 && g <= 505), String(gaps));
});

test('the WebSocket drops: RESUME on a new one, SYNC re-pins, NACK recovers, exactly once', async () => {
  const { clock, server, make } = setup();
  const a = make();
  const b = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  await run(clock, b.session.join({ room: 'r', user: 'bob' }));
  a.session.send('before');
  await clock.advance(20);
  const bob = [...server.rooms.get('r').members.values()].find((m) => m.user === 'bob');
  const oldSocket = bob.session;
  // alice keeps talking while bob's socket is cut and the server does not answer RESUME yet
  server.answerResume = false;
  oldSocket.cut();
  for (let i = 1; i <= 4; i++) {
    a.session.send(`while away ${i}`);
    await clock.advance(5);
  }
  b.session.send('queued while offline');
  await clock.advance(30);
  server.answerResume = true;
  assert.equal(b.rec.of('reconnecting').length, 1);
  // the unanswered RESUME times out (10 s), then a retry on a new socket succeeds
  await clock.advance(12000);
  assert.notEqual(bob.session, oldSocket);
  assert.equal(bob.pinned, true);
  assert.deepEqual(b.rec.of('reconnected').map((e) => [e.recovered, e.rejoined]), [[4, false]]);
  assert.deepEqual(messageTexts(b.rec), ['before', 'while away 1', 'while away 2', 'while away 3', 'while away 4', 'queued while offline']);
  assert.deepEqual(messageTexts(a.rec), messageTexts(b.rec));
  // the RESUME carried the key chosen at JOIN; nobody saw bob leave or join again
  assert.equal(a.rec.of('left').length, 0);
  assert.equal(a.rec.of('joined').filter((e) => e.user === 'bob').length, 1);
  assert.deepEqual(a.rec.of('resumed').map((e) => e.user), ['bob']);
  assert.equal(b.rec.of('confirmed').length, 1);
});

test('RESUME refused (UNAUTHORIZED): JOIN again under the same name and recover', async () => {
  const { clock, server, make } = setup();
  const a = make();
  const b = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  await run(clock, b.session.join({ room: 'r', user: 'bob' }));
  const bob = [...server.rooms.get('r').members.values()].find((m) => m.user === 'bob');
  bob.session.cut();
  server.timeOut('r', 'bob'); // the server dropped him meanwhile: the token is void
  a.session.send('missed');
  await clock.advance(2000);
  assert.equal(b.rec.of('rejoining').length, 1);
  assert.deepEqual(b.rec.of('reconnected').map((e) => e.rejoined), [true]);
  assert.deepEqual(messageTexts(b.rec), ['missed']);
  const timedOut = b.rec.of('timedOut').map((e) => e.user);
  assert.deepEqual(timedOut, ['bob']); // his old membership's end, recovered, not news
  assert.equal(b.rec.of('rejoining').length, 1);
  b.session.send('back');
  await clock.advance(20);
  assert.deepEqual(messageTexts(a.rec), ['missed', 'back']);
});

test('TIMED_OUT for ourselves while connected: JOIN again', async () => {
  const { clock, server, make } = setup();
  const a = make();
  const b = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  await run(clock, b.session.join({ room: 'r', user: 'bob' }));
  server.timeOut('r', 'bob');
  await clock.advance(50);
  assert.equal(b.rec.of('rejoining').length, 1);
  assert.ok(b.session.inRoom);
  assert.equal([...server.rooms.get('r').members.values()].filter((m) => m.user === 'bob').length, 1);
  assert.deepEqual(a.rec.of('joined').map((e) => e.user), ['alice', 'bob', 'bob']);
});

test('the host leaves: LEAVE closes the room, the others see it closed', async () => {
  const { clock, server, make } = setup();
  const a = make();
  const b = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  await run(clock, b.session.join({ room: 'r', user: 'bob' }));
  b.session.send('pending forever');
  const left = await run(clock, a.session.leave());
  assert.deepEqual(left, { ok: true, status: Status.OK, error: undefined });
  assert.ok(!a.session.inRoom);
  assert.ok(!b.session.inRoom);
  assert.deepEqual(b.rec.of('left').map((e) => e.user), ['alice']);
  assert.deepEqual(b.rec.of('closed').map((e) => e.reason), ['host left']);
  assert.deepEqual(b.rec.of('ended').map((e) => e.reason), ['closed']);
  assert.equal(server.rooms.size, 0);
  // a reconnect after the room ended gives up: the socket is idle, no timers run
  await clock.advance(100);
  assert.equal(clock.pending(), 0);
});

test('a dead link (no SYNC answers) is noticed after three SYNCs and reconnected', async () => {
  const { clock, server, make } = setup({ idleTimeout: 4 });
  const a = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  const alice = [...server.rooms.get('r').members.values()][0];
  const first = alice.session;
  server.dropFilter = (m, bytes, kind) => m === alice && m.session === first;
  await clock.advance(5000);
  assert.equal(a.rec.of('reconnecting').length, 1);
  assert.notEqual(alice.session, first);
  assert.equal(a.rec.of('reconnected').length, 1);
});

test('hostile events: Seq far ahead and huge GONE stay bounded; Seq 0 room events ignored', async () => {
  const { clock, server, make } = setup();
  const a = make({ maxBuffered: 64 });
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  const sock = [...server.rooms.get('r').members.values()][0].session;
  for (let s = 10; s < 3000; s += 7) {
    sock.deliver(wrapUnit(Channel.DATAGRAM, encodeEvent({ kind: Kind.MESSAGE, seq: s, user: 'x', body: 'y' })));
  }
  sock.deliver(wrapUnit(Channel.DATAGRAM, encodeEvent({ kind: Kind.MESSAGE, seq: 0, user: 'x', body: 'zero' })));
  const gone = new Uint8Array([0, 0, 0, 2, 0xff, 0xff]);
  sock.deliver(wrapUnit(Channel.DATAGRAM, encodeEvent({ kind: Kind.GONE, seq: 0, body: gone })));
  await clock.advance(100);
  assert.ok(a.session.buffer.size <= 64, `buffer ${a.session.buffer.size}`);
  assert.ok(!messageTexts(a.rec).includes('zero'));
  // the NACKs one round sends are bounded too
  const perRound = server.log.filter((l) => l.op === 'NACK');
  assert.ok(perRound.every((l) => l.count <= 512));
  // a bad unit from the server closes the socket (and reconnects: the member stays)
  sock.deliver(new Uint8Array([7, 1, 2]));
  await clock.advance(100);
  assert.equal(a.rec.of('reconnecting').length, 1);
  assert.ok(a.session.inRoom);
});

test('one "pending" per message across reconnect and rejoin; a new message waits behind held ones', async () => {
  const { clock, server, make } = setup();
  const a = make();
  const b = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  await run(clock, b.session.join({ room: 'r', user: 'bob' }));
  const bobOf = () => [...server.rooms.get('r').members.values()].find((m) => m.user === 'bob');
  // bob's SENDs are lost, then his socket drops and his membership times out
  server.dropFromClient = (d) => d[0] === 0 && d[1] === 1;
  b.session.send('first');
  await clock.advance(5);
  bobOf().session.cut();
  server.timeOut('r', 'bob');
  b.session.send('second');
  server.dropFromClient = null;
  await clock.advance(3);
  b.session.send('third');
  await clock.advance(3000);
  assert.deepEqual(b.rec.of('pending').map((e) => e.text), ['first', 'second', 'third']);
  assert.deepEqual(messageTexts(a.rec), ['first', 'second', 'third']);
  assert.deepEqual(messageTexts(b.rec), ['first', 'second', 'third']);
  assert.equal(b.rec.of('confirmed').length, 3);
  assert.equal(b.rec.of('failed').length, 0);
});

test('connection failures and SERVER_FULL come back as statuses, never as throws', async () => {
  const { clock, server, make } = setup();
  const a = make();
  server.accepting = false;
  assert.deepEqual(await run(clock, a.session.join({ room: 'r', user: 'a' })), { ok: false, status: null, error: 'connection closed' });
  assert.equal((await run(clock, a.session.list())).ok, false);
  server.accepting = true;
  // a connection-limit answer: Operation 0, status 7 (§1.1)
  server.answerRequests = false;
  const p = a.session.list();
  await clock.advance(5);
  server.socket.deliver(wrapUnit(Channel.FRAME, new Uint8Array([0, 0, 1, ...new Uint8Array(28), 1, 7])));
  const reply = await run(clock, p);
  assert.equal(reply.status, Status.SERVER_FULL);
  // a request the server never answers times out and the socket is dropped
  const q = a.session.list();
  const s = server.socket;
  const late = await run(clock, q, 11000);
  assert.equal(late.status, null);
  assert.equal(s.closed, true);
  assert.equal(a.session.inRoom, false);
});

test('a tail notice above Delivered is a gap like any other', async () => {
  const { clock, server, make } = setup();
  const a = make();
  const b = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  await run(clock, b.session.join({ room: 'r', user: 'bob' }));
  const bob = [...server.rooms.get('r').members.values()].find((m) => m.user === 'bob');
  server.dropFilter = (m, bytes, kind) => m === bob && kind === Kind.MESSAGE;
  server.say('r', 'alice', 'last of a burst');
  await clock.advance(20);
  assert.deepEqual(messageTexts(b.rec), []);
  server.dropFilter = null;
  const tail = new Uint8Array([0, 0, 0, server.rooms.get('r').seq, 0, 0, 0, 0]);
  bob.session.deliver(wrapUnit(Channel.DATAGRAM, encodeEvent({ kind: Kind.SYNC, seq: 0, user: '', body: tail })));
  await clock.advance(20);
  assert.deepEqual(messageTexts(b.rec), ['last of a burst']);
});

test('history the room no longer holds: a quiet "earlier events" GONE, not a loss', async () => {
  const { clock, server, make } = setup({ history: 5 });
  const a = make();
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  for (let i = 1; i <= 10; i++) a.session.send(`m${i}`);
  await clock.advance(50);
  const b = make();
  await run(clock, b.session.join({ room: 'r', user: 'bob' }));
  // room: alice's JOINED 1, m1..m10 at 2..11, bob's JOINED 12; the ring of 5 holds 8..12
  assert.deepEqual(messageTexts(b.rec), ['m7', 'm8', 'm9', 'm10']);
  assert.deepEqual(b.rec.of('gone').map((e) => [e.count, e.history]), [[7, true]]);
});

test('send checks the message and bounds what waits unconfirmed', async () => {
  const { clock, server, make } = setup();
  const a = make({ maxPending: 3 });
  assert.deepEqual(a.session.send('x'), { ok: false, error: 'not in a room' });
  await run(clock, a.session.create({ room: 'r', user: 'alice' }));
  assert.equal(a.session.send('').ok, false);
  assert.equal(a.session.send('m'.repeat(3801)).ok, false);
  assert.equal(a.session.send('bell\u0007').ok, false);
  server.dropFromClient = (d) => d[0] === 0 && d[1] === 1;
  for (let i = 0; i < 3; i++) assert.equal(a.session.send(`q${i}`).ok, true);
  assert.match(a.session.send('one too many').error, /too many/);
  assert.equal(server.log.filter((l) => l.op === 'SEND').length, 0);
});
