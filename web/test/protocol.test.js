// The codec against every worked example of PROTOCOL.md §4 and §5.6, byte for byte (the
// hex is copied from the spec), the field limits, and hostile input.

import test from 'node:test';
import assert from 'node:assert/strict';
import {
  Channel,
  Kind,
  Op,
  State,
  Status,
  checkText,
  decodeFrame,
  decodeJoinComplete,
  decodeListComplete,
  decodeServerDatagram,
  decodeStatus,
  decodeText,
  encodeChat,
  encodeCreate,
  encodeEvent,
  encodeFrame,
  encodeJoin,
  encodeLeave,
  encodeList,
  encodeNack,
  encodeResume,
  encodeSend,
  encodeSync,
  fromHex,
  readFrame,
  readPayloadSize,
  seqAdd,
  seqDiff,
  toHex,
  unwrapUnit,
  wrapUnit,
  ProtocolError,
} from '../protocol.js';

const TOKEN = 'Q7fK2mZp9xLwR4tYb8nVc3hJd6gSa1eU';
const TOKEN_HEX = toHex(new TextEncoder().encode(TOKEN));
const ZEROS_28 = '00 '.repeat(28);

/** Spec hex ("00 × 28", "<32 token bytes>", "|" separators) to bytes. */
function spec(hex) {
  return fromHex(hex.replace(/\|/g, ' ').replace('<32 token bytes>', TOKEN_HEX));
}

function bytes(s) {
  return new TextEncoder().encode(s);
}

// --- §4 worked examples -----------------------------------------------------------

test('§4 CREATE request: alice creates lobby with password pw, capacity 10', () => {
  const expected = spec(`05 01 00 | ${ZEROS_28} 0b | 6c 6f 62 62 79 | 05 61 6c 69 63 65 02 70 77 00 0a`);
  const got = encodeCreate({ room: 'lobby', user: 'alice', password: 'pw', capacity: 10 });
  assert.equal(toHex(got), toHex(expected));
});

test('§4 RESPONSE OK decodes', () => {
  const wire = spec(`05 01 01 | ${ZEROS_28} 01 | 6c 6f 62 62 79 | 00`);
  const d = decodeFrame(wire);
  assert.ok(d.ok);
  assert.equal(d.frame.op, Op.CREATE);
  assert.equal(d.frame.state, State.RESPONSE);
  assert.deepEqual(d.frame.room, bytes('lobby'));
  assert.deepEqual(decodeStatus(d.frame.payload), { ok: true, status: Status.OK });
  // and our encoder writes the very same bytes for that frame
  assert.equal(toHex(encodeFrame(Op.CREATE, State.RESPONSE, bytes('lobby'), new Uint8Array([0]))), toHex(wire));
});

test('§4 COMPLETE decodes token, UdpPort 9001, IdleTimeout 60', () => {
  const wire = spec(`05 01 02 | ${ZEROS_28} 25 | 6c 6f 62 62 79 | 20 <32 token bytes> 23 29 00 3c`);
  const d = decodeFrame(wire);
  assert.ok(d.ok);
  assert.equal(d.frame.state, State.COMPLETE);
  const c = decodeJoinComplete(d.frame.payload);
  assert.ok(c.ok);
  assert.equal(new TextDecoder().decode(c.token), TOKEN);
  assert.equal(c.udpPort, 9001);
  assert.equal(c.idleTimeout, 60);
});

test('§4 chat datagram: alice sends "hi 👋"', () => {
  const expected = spec(`05 20 6c 6f 62 62 79 51 37 66 4b 32 6d 5a 70 39 78 4c 77 52 34 74 59 62 38 6e 56 63 33
    68 4a 64 36 67 53 61 31 65 55 68 69 20 f0 9f 91 8b`);
  assert.equal(toHex(encodeChat({ room: 'lobby', token: TOKEN, message: 'hi 👋' })), toHex(expected));
});

test('§4 server datagram: bob JOINED (Seq 7) and alice\'s message (Seq 8)', () => {
  const wire = spec('02 00 00 00 07 03 62 6f 62 00 00  01 00 00 00 08 05 61 6c 69 63 65 00 07 68 69 20 f0 9f 91 8b');
  const { events, error } = decodeServerDatagram(wire);
  assert.equal(error, null);
  assert.equal(events.length, 2);
  assert.equal(events[0].kind, Kind.JOINED);
  assert.equal(events[0].seq, 7);
  assert.equal(events[0].user, 'bob');
  assert.equal(events[0].body.length, 0);
  assert.equal(events[1].kind, Kind.MESSAGE);
  assert.equal(events[1].seq, 8);
  assert.equal(events[1].user, 'alice');
  assert.equal(events[1].text, 'hi 👋');
  assert.equal(events[1].textValid, true);
  // re-encoding the events gives the same bytes
  const again = [...encodeEvent({ kind: 2, seq: 7, user: 'bob' }), ...encodeEvent({ kind: 1, seq: 8, user: 'alice', body: 'hi 👋' })];
  assert.equal(toHex(new Uint8Array(again)), toHex(wire));
});

// --- §5.6 worked examples ---------------------------------------------------------

test('§5.6 SEND ClientSeq 1 "hi", NACK 5-7, SYNC', () => {
  const send = spec('00 01 05 20 6c 6f 62 62 79 <32 token bytes> 00 00 00 01 68 69');
  const nack = spec('00 02 05 20 6c 6f 62 62 79 <32 token bytes> 00 00 00 05 00 03');
  const sync = spec('00 03 05 20 6c 6f 62 62 79 <32 token bytes>');
  assert.equal(toHex(encodeSend({ room: 'lobby', token: TOKEN, clientSeq: 1, message: 'hi' })), toHex(send));
  assert.equal(toHex(encodeNack({ room: 'lobby', token: TOKEN, fromSeq: 5, count: 3 })), toHex(nack));
  assert.equal(toHex(encodeSync({ room: 'lobby', token: TOKEN })), toHex(sync));
});

test('§5.6 SYNC answer, tail notice and GONE decode', () => {
  const answer = decodeServerDatagram(spec('08 00 00 00 00 05 61 6c 69 63 65 00 08 00 00 00 09 00 00 00 01'));
  assert.equal(answer.error, null);
  assert.deepEqual(
    { kind: answer.events[0].kind, seq: answer.events[0].seq, user: answer.events[0].user, lastSeq: answer.events[0].lastSeq, lastClientSeq: answer.events[0].lastClientSeq },
    { kind: Kind.SYNC, seq: 0, user: 'alice', lastSeq: 9, lastClientSeq: 1 },
  );
  const tail = decodeServerDatagram(spec('08 00 00 00 00 00 00 08 00 00 00 09 00 00 00 00'));
  assert.equal(tail.error, null);
  assert.equal(tail.events[0].user, '');
  assert.equal(tail.events[0].lastSeq, 9);
  assert.equal(tail.events[0].lastClientSeq, 0);
  const gone = decodeServerDatagram(spec('07 00 00 00 00 00 00 06 00 00 00 01 00 04'));
  assert.equal(gone.error, null);
  assert.equal(gone.events[0].kind, Kind.GONE);
  assert.equal(gone.events[0].fromSeq, 1);
  assert.equal(gone.events[0].count, 4);
});

// --- other requests ---------------------------------------------------------------

test('JOIN with and without a resume key', () => {
  const plain = encodeJoin({ room: 'lobby', user: 'bob', password: '' });
  assert.equal(toHex(plain), toHex(spec(`05 02 00 ${ZEROS_28} 05 6c 6f 62 62 79 03 62 6f 62 00`)));
  const key = new Uint8Array(32).fill(0xaa);
  const withKey = encodeJoin({ room: 'lobby', user: 'bob', password: 'pw', resumeKey: key });
  const d = decodeFrame(withKey);
  assert.ok(d.ok);
  assert.equal(d.frame.payload.length, 1 + 3 + 1 + 2 + 1 + 32);
  assert.equal(d.frame.payload[7], 32);
  assert.deepEqual(d.frame.payload.subarray(8), key);
  // CREATE with a key: the key follows Capacity
  const c = decodeFrame(encodeCreate({ room: 'r', user: 'a', capacity: 0, resumeKey: key })).frame.payload;
  assert.equal(toHex(c.subarray(0, 6)), '01 61 00 00 00 20');
});

test('LEAVE, LIST, RESUME frames', () => {
  assert.equal(toHex(encodeList()), toHex(spec(`00 04 00 ${ZEROS_28} 00`)));
  const leave = decodeFrame(encodeLeave({ room: 'lobby', token: TOKEN })).frame;
  assert.equal(leave.op, Op.LEAVE);
  assert.equal(new TextDecoder().decode(leave.payload), TOKEN);
  const key = new Uint8Array(16).fill(7);
  const resume = decodeFrame(encodeResume({ room: 'lobby', token: TOKEN, resumeKey: key })).frame;
  assert.equal(resume.op, Op.RESUME);
  assert.equal(toHex(resume.payload), `20 ${TOKEN_HEX} 10 ${toHex(key)}`);
});

test('LIST COMPLETE decodes rooms; cut and trailing bytes are errors', () => {
  // Count 2; "a": 1 member of 10, open; "日" (3 bytes): 3 of 256, password
  const payload = fromHex('00 02  01 61 00 01 00 0a 00  03 e6 97 a5 00 03 01 00 01');
  const d = decodeListComplete(payload);
  assert.ok(d.ok, d.error);
  assert.deepEqual(d.rooms, [
    { name: 'a', nameValid: true, members: 1, capacity: 10, hasPassword: false },
    { name: '日', nameValid: true, members: 3, capacity: 256, hasPassword: true },
  ]);
  for (let cut = 0; cut < payload.length; cut++) {
    const r = decodeListComplete(payload.subarray(0, cut));
    assert.equal(r.ok, false);
  }
  assert.equal(decodeListComplete(new Uint8Array([...payload, 0])).ok, false);
  assert.deepEqual(decodeListComplete(fromHex('00 00')), { ok: true, rooms: [] });
});

// --- limits -----------------------------------------------------------------------

test('room and user names: 1..=255 bytes, text fields', () => {
  assert.throws(() => encodeJoin({ room: '', user: 'a' }), ProtocolError);
  assert.throws(() => encodeJoin({ room: 'r', user: '' }), ProtocolError);
  encodeJoin({ room: 'r'.repeat(255), user: 'u'.repeat(255) });
  assert.throws(() => encodeJoin({ room: 'r'.repeat(256), user: 'a' }), /RoomName/);
  assert.throws(() => encodeJoin({ room: 'r', user: 'u'.repeat(256) }), /UserName/);
  // 85 × 3-byte characters = 255 bytes; 86 = 258
  encodeJoin({ room: 'あ'.repeat(85), user: 'a' });
  assert.throws(() => encodeJoin({ room: 'あ'.repeat(86), user: 'a' }), /RoomName/);
  for (const bad of ['a\u0000', 'a\nb', '\u001f', '\u007f', 'x\u0085', '\u009f', '\ud800', 'a\udc00b']) {
    assert.throws(() => encodeJoin({ room: bad, user: 'a' }), ProtocolError, JSON.stringify(bad));
    assert.equal(checkText(bad, 1, 255).ok, false);
  }
  assert.equal(checkText('\u00a0日本語👋', 1, 255).ok, true);
  assert.throws(() => encodeCreate({ room: 'r', user: 'a', capacity: 65536 }), /Capacity/);
  assert.throws(() => encodeJoin({ room: 'r', user: 'a', password: 'p'.repeat(256) }), /Password/);
  assert.throws(() => encodeJoin({ room: 'r', user: 'a', resumeKey: new Uint8Array(15) }), /ResumeKey/);
  assert.throws(() => encodeJoin({ room: 'r', user: 'a', resumeKey: new Uint8Array(65) }), /ResumeKey/);
  encodeJoin({ room: 'r', user: 'a', resumeKey: new Uint8Array(64) });
});

test('messages: 0..=3800 bytes in v1, 1..=3800 in SEND; datagrams at most 4096', () => {
  encodeChat({ room: 'r', token: 't', message: '' });
  encodeChat({ room: 'r', token: 't', message: 'm'.repeat(3800) });
  assert.throws(() => encodeChat({ room: 'r', token: 't', message: 'm'.repeat(3801) }), /Message/);
  assert.throws(() => encodeSend({ room: 'r', token: 't', clientSeq: 1, message: '' }), /Message/);
  assert.equal(encodeSend({ room: 'r', token: 't', clientSeq: 1, message: 'm'.repeat(3800) }).length, 4 + 1 + 1 + 4 + 3800);
  // 1266 × 3 bytes = 3798 fits; 1267 × 3 = 3801 does not
  encodeSend({ room: 'r', token: 't', clientSeq: 1, message: '語'.repeat(1266) });
  assert.throws(() => encodeSend({ room: 'r', token: 't', clientSeq: 1, message: '語'.repeat(1267) }), /Message/);
  assert.throws(() => encodeSend({ room: 'r', token: 't', clientSeq: 1, message: 'a\tb' }), /Message/);
  // both limits: 255-byte room and token + 3800 bytes is over 4096
  assert.throws(
    () => encodeSend({ room: 'r'.repeat(255), token: 't'.repeat(255), clientSeq: 1, message: 'm'.repeat(3800) }),
    /datagram/,
  );
  // exactly 4096 is allowed: 2 + 255 + 39 + 3800
  assert.equal(encodeChat({ room: 'r'.repeat(255), token: 't'.repeat(39), message: 'm'.repeat(3800) }).length, 4096);
  assert.throws(() => encodeChat({ room: 'r'.repeat(255), token: 't'.repeat(40), message: 'm'.repeat(3800) }), /datagram/);
  assert.throws(() => encodeNack({ room: 'r', token: 't', fromSeq: 0, count: 1 }), /FromSeq/);
  assert.throws(() => encodeNack({ room: 'r', token: 't', fromSeq: 1, count: 0 }), /Count/);
  assert.throws(() => encodeNack({ room: 'r', token: 't', fromSeq: 1, count: 513 }), /Count/);
  encodeNack({ room: 'r', token: 't', fromSeq: 0xffffffff, count: 512 });
  assert.throws(() => encodeSync({ room: 'r', token: '' }), /Token/);
  assert.throws(() => encodeSync({ room: 'r', token: 't'.repeat(256) }), /Token/);
});

test('the 29-byte payload size: only values up to 4096 are frames', () => {
  const head = new Uint8Array(32);
  head[1] = Op.LIST;
  head[2] = State.RESPONSE;
  head[30] = 0x10; // 4096
  assert.equal(readPayloadSize(head, 3), 4096);
  head[31] = 1; // 4097
  assert.equal(readPayloadSize(head, 3), -1);
  assert.equal(readFrame(head).ok, false);
  assert.ok(readFrame(head).error);
  const huge = new Uint8Array(32).fill(0xff);
  assert.equal(readPayloadSize(huge, 3), -1);
  const top = new Uint8Array(32);
  top[3] = 1; // 2^224: does not fit in 64 bits
  assert.equal(readFrame(top).ok, false);
  assert.throws(() => encodeFrame(Op.LIST, State.REQUEST, new Uint8Array(0), new Uint8Array(4097)), ProtocolError);
});

test('readFrame: a frame arriving a byte at a time is incomplete until whole', () => {
  const frame = encodeCreate({ room: 'lobby', user: 'alice', password: 'pw', capacity: 10 });
  for (let n = 0; n < frame.length; n++) {
    assert.deepEqual(readFrame(frame.subarray(0, n)), { ok: false, incomplete: true });
  }
  const whole = readFrame(new Uint8Array([...frame, 9, 9]));
  assert.equal(whole.ok, true);
  assert.equal(whole.used, frame.length);
  assert.equal(decodeFrame(new Uint8Array([...frame, 9])).ok, false);
});

test('COMPLETE of JOIN: bad token sizes and lengths are errors', () => {
  assert.equal(decodeJoinComplete(new Uint8Array(0)).ok, false);
  assert.equal(decodeJoinComplete(fromHex('00 23 29 00 3c')).ok, false);
  assert.equal(decodeJoinComplete(fromHex('02 41 42 23 29 00')).ok, false);
  assert.equal(decodeJoinComplete(fromHex('02 41 42 23 29 00 3c 00')).ok, false);
  const ok = decodeJoinComplete(fromHex('01 41 00 01 ff ff'));
  assert.deepEqual([ok.ok, ok.udpPort, ok.idleTimeout], [true, 1, 65535]);
  assert.equal(decodeStatus(new Uint8Array(0)).ok, false);
  assert.equal(decodeStatus(new Uint8Array(2)).ok, false);
});

// --- hostile server datagrams -------------------------------------------------------

test('a datagram cut anywhere keeps the whole events before the cut and reports an error', () => {
  const wire = spec('02 00 00 00 07 03 62 6f 62 00 00  01 00 00 00 08 05 61 6c 69 63 65 00 07 68 69 20 f0 9f 91 8b');
  for (let n = 0; n < wire.length; n++) {
    const { events, error } = decodeServerDatagram(wire.subarray(0, n));
    // at 11 the cut falls between the events: a whole datagram of one event
    if (n === 11) assert.equal(error, null);
    else assert.ok(error, `cut at ${n}`);
    assert.equal(events.length, n >= 11 ? 1 : 0, `cut at ${n}`);
  }
});

test('random bytes never make the decoders throw', () => {
  let seed = 12345;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed;
  };
  for (let i = 0; i < 3000; i++) {
    const len = rand() % 80;
    const b = new Uint8Array(len);
    for (let j = 0; j < len; j++) b[j] = i % 3 === 0 ? rand() % 4 : rand() & 0xff;
    const d = decodeServerDatagram(b);
    assert.ok(Array.isArray(d.events));
    decodeFrame(b);
    decodeListComplete(b);
    decodeJoinComplete(b);
    unwrapUnit(b);
    decodeText(b);
  }
  assert.equal(decodeServerDatagram(new Uint8Array(4097)).events.length, 0);
  assert.ok(decodeServerDatagram(new Uint8Array(0)).error);
  assert.ok(decodeServerDatagram('not bytes').error);
});

test('events with invalid text are shown safely, GONE/SYNC of the wrong length are malformed', () => {
  const badUtf8 = decodeServerDatagram(fromHex('01 00 00 00 01 01 ff 00 03 61 1b 62'));
  const ev = badUtf8.events[0];
  assert.equal(ev.userValid, false);
  assert.equal(ev.user, '\ufffd');
  assert.equal(ev.textValid, false);
  assert.equal(ev.text, 'a\ufffdb'); // ESC never reaches the page
  const gone = decodeServerDatagram(fromHex('07 00 00 00 00 00 00 05 00 00 00 01 00'));
  assert.equal(gone.events[0].malformed, true);
  const sync = decodeServerDatagram(fromHex('08 00 00 00 00 00 00 09 00 00 00 01 00 00 00 00 00'));
  assert.equal(sync.events[0].malformed, true);
  const unknown = decodeServerDatagram(fromHex('63 00 00 00 05 00 00 01 7a'));
  assert.equal(unknown.events[0].kind, 0x63);
  // a leading BOM is data, kept
  assert.equal(decodeText(fromHex('ef bb bf 61')).text, '\ufeffa');
});

// --- §6 units and Seq arithmetic ----------------------------------------------------

test('WebSocket units: channel byte, limits', () => {
  const sync = encodeSync({ room: 'lobby', token: TOKEN });
  const unit = wrapUnit(Channel.DATAGRAM, sync);
  assert.equal(unit[0], 2);
  assert.deepEqual(unwrapUnit(unit), { ok: true, channel: 2, bytes: sync });
  assert.equal(wrapUnit(Channel.FRAME, encodeList())[0], 1);
  assert.equal(unwrapUnit(new Uint8Array(0)).ok, false);
  assert.equal(unwrapUnit(new Uint8Array([3, 0])).ok, false);
  assert.equal(unwrapUnit(new Uint8Array([0])).ok, false);
  assert.equal(unwrapUnit(new Uint8Array(8193).fill(1)).ok, false);
  assert.equal(unwrapUnit(new Uint8Array(8192).fill(1)).ok, true);
  assert.equal(unwrapUnit('text').ok, false);
  assert.equal(unwrapUnit(new Uint8Array([2, 9]).buffer).ok, true);
  assert.throws(() => wrapUnit(2, new Uint8Array(8192)), ProtocolError);
});

test('Seq arithmetic: after 0xFFFFFFFF comes 1', () => {
  assert.equal(seqAdd(0xffffffff, 1), 1);
  assert.equal(seqAdd(1, -1), 0xffffffff);
  assert.equal(seqAdd(5, 3), 8);
  assert.equal(seqAdd(0xfffffffe, 3), 2);
  assert.equal(seqDiff(1, 0xffffffff), 1);
  assert.equal(seqDiff(0xffffffff, 1), -1);
  assert.equal(seqDiff(8, 5), 3);
  assert.equal(seqDiff(5, 8), -3);
  assert.equal(seqDiff(5, 5), 0);
});
