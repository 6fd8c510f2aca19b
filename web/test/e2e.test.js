// PROTOCOL.md §7 in WebCrypto against the vectors the Rust tests check too
// (web/test/vectors/e2e.json), and every failure §7 names: each gives its outcome, none throws.

import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  E2eError,
  MAX_ENVELOPE,
  MAX_PLAINTEXT,
  MAX_SENDERS,
  MIN_BINARY_LEN,
  PREFIX,
  Receiver,
  RoomCrypto,
  RoomKey,
  Sender,
  base64urlDecode,
  base64urlEncode,
  deriveRoomKey,
  isEnvelope,
} from '../e2e.js';

const VECTORS = JSON.parse(
  readFileSync(new URL('./vectors/e2e.json', import.meta.url), 'utf8'),
).vectors;

const fromHex = (h) => Uint8Array.from(h.match(/../g) ?? [], (b) => parseInt(b, 16));
const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
const text = (h) => new TextDecoder('utf-8', { fatal: true }).decode(fromHex(h));

const ID = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8);
/** docs/protocol.md's example key (lobby, "correct horse"), without 600 000 rounds each time. */
const lobbyKey = () => RoomKey.fromBytes(fromHex(VECTORS[0].room_key_hex));
const otherKey = () => RoomKey.fromBytes(new Uint8Array(32).fill(7));

const binary = (envelope) => base64urlDecode(envelope.slice(PREFIX.length));
const envelopeOf = (bytes) => PREFIX + base64urlEncode(bytes);

test('the shared vectors seal and open exactly', async () => {
  assert.equal(VECTORS.length, 3);
  const keys = new Map();
  for (const v of VECTORS) {
    const passphrase = text(v.passphrase_hex);
    const room = text(v.room_hex);
    const user = text(v.user_hex);
    const id = `${v.passphrase_hex}/${v.room_hex}`;
    if (!keys.has(id)) keys.set(id, await deriveRoomKey(passphrase, room));
    const key = keys.get(id);
    assert.equal(toHex(key.bytes), v.room_key_hex);
    const senderId = fromHex(v.sender_id_hex);
    assert.equal(toHex(await key.senderKey(senderId)), v.sender_key_hex);
    const keysOf = await key.senderKeys(senderId);
    assert.equal(toHex(keysOf.commitment), v.commitment_hex);
    const sender = await Sender.create(key, { senderId, counter: BigInt(v.counter) });
    const envelope = await sender.seal(text(v.plaintext_hex), room, user);
    assert.equal(envelope, v.envelope);
    assert.equal(sender.next, BigInt(v.counter) + 1n);
    const opened = await new Receiver(key).open(envelope, room, user);
    assert.equal(opened.ok, true, opened.message);
    assert.equal(opened.text, text(v.plaintext_hex));
    assert.equal(opened.counter, BigInt(v.counter));
    assert.equal(toHex(opened.senderId), v.sender_id_hex);
  }
});

test('NFC: the composed passphrase gives the decomposed vector key', async () => {
  const v = VECTORS[1];
  assert.equal(text(v.passphrase_hex), 'cafe\u0301');
  const key = await deriveRoomKey('caf\u00e9', text(v.room_hex));
  assert.equal(toHex(key.bytes), v.room_key_hex);
});

test('base64url: round trips, and refuses what the Rust decoder refuses', () => {
  for (let n = 0; n < 70; n++) {
    const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 37 + n) & 0xff);
    const encoded = base64urlEncode(bytes);
    assert.equal(encoded, Buffer.from(bytes).toString('base64url'));
    assert.deepEqual(base64urlDecode(encoded), bytes);
  }
  for (const bad of ['A', 'AAAAA', 'AB', 'AAB', 'AA==', 'A+AA', 'A/AA', 'AA A', 'AAé']) {
    assert.equal(base64urlDecode(bad), null, bad);
  }
});

test('a room of two reads each other; the same text sealed twice is two messages', async () => {
  const key = await lobbyKey();
  const alice = await RoomCrypto.fromKey(key, 'lobby');
  const bob = await RoomCrypto.fromKey(key, 'lobby');
  assert.notDeepEqual(alice.sender.senderId, bob.sender.senderId);
  const first = await alice.seal('hello bob', 'alice');
  const again = await alice.seal('hello bob', 'alice');
  assert.notEqual(first, again);
  assert.ok(isEnvelope(first));
  assert.deepEqual(await bob.open(first, 'alice'), { shown: 'encrypted', text: 'hello bob' });
  assert.deepEqual(await bob.open(again, 'alice'), { shown: 'encrypted', text: 'hello bob' });
  assert.deepEqual(await alice.open(first, 'alice'), { shown: 'encrypted', text: 'hello bob' });
  const reply = await bob.seal('hi alice', 'bob');
  assert.deepEqual(await alice.open(reply, 'bob'), { shown: 'encrypted', text: 'hi alice' });
});

test('a replayed envelope is not shown, and counted; even two copies opened at once', async () => {
  const key = await lobbyKey();
  const alice = await RoomCrypto.fromKey(key, 'lobby');
  const bob = await RoomCrypto.fromKey(key, 'lobby');
  const envelope = await alice.seal('once', 'alice');
  const [a, b, c] = await Promise.all([
    bob.open(envelope, 'alice'),
    bob.open(envelope, 'alice'),
    bob.open(envelope, 'alice'),
  ]);
  assert.deepEqual(a, { shown: 'encrypted', text: 'once' });
  assert.deepEqual(b, { shown: 'replay' });
  assert.deepEqual(c, { shown: 'replay' });
  assert.equal(bob.replays, 2);
  assert.equal(bob.undecryptable, 0);
});

test('a wrong passphrase is caught by the commitment', async () => {
  const sender = await Sender.create(await otherKey(), { senderId: ID });
  const envelope = await sender.seal('secret', 'lobby', 'alice');
  const room = await RoomCrypto.fromKey(await lobbyKey(), 'lobby');
  assert.deepEqual(await room.open(envelope, 'alice'), {
    shown: 'undecryptable',
    error: 'wrong-key',
    message: 'could not be decrypted (different passphrase?)',
  });
  assert.equal(room.undecryptable, 1);
});

test('every flipped byte is refused and never moves the window', async () => {
  const key = await lobbyKey();
  const sender = await Sender.create(key, { senderId: ID, counter: 5n });
  const envelope = await sender.seal('tamper with me', 'lobby', 'alice');
  const good = binary(envelope);
  const receiver = new Receiver(key);
  for (let i = 0; i < good.length; i++) {
    for (const bit of [0x01, 0x80, 0xff]) {
      const bad = good.slice();
      bad[i] ^= bit;
      const got = await receiver.open(envelopeOf(bad), 'lobby', 'alice');
      const want = i < 8 || (i >= 16 && i < 24) ? 'wrong-key' : 'forged';
      assert.equal(got.ok, false);
      assert.equal(got.error, want, `byte ${i} ^ ${bit}`);
      assert.match(got.message, /^could not be decrypted/);
    }
  }
  assert.equal(receiver.senderCount, 0);
  const opened = await receiver.open(envelope, 'lobby', 'alice');
  assert.equal(opened.text, 'tamper with me');
});

test('an envelope relabelled to another user or room fails its tag', async () => {
  const key = await lobbyKey();
  const sender = await Sender.create(key, { senderId: ID });
  const envelope = await sender.seal('from alice', 'lobby', 'alice');
  const receiver = new Receiver(key);
  assert.equal((await receiver.open(envelope, 'lobby', 'mallory')).error, 'forged');
  assert.equal((await receiver.open(envelope, 'lobby2', 'alice')).error, 'forged');
  assert.equal((await receiver.open(envelope, 'lobb', 'y\0alice')).error, 'forged');
  assert.equal((await receiver.open(envelope, 'lobby', 'alice')).ok, true);
});

async function sealedAt(key, counter) {
  const sender = await Sender.create(key, { senderId: ID, counter });
  return sender.seal(`message ${counter}`, 'lobby', 'alice');
}

test("the replay window is docs/protocol.md §12.4's example", async () => {
  const key = await lobbyKey();
  const receiver = new Receiver(key);
  const open = async (counter) => {
    const got = await receiver.open(await sealedAt(key, counter), 'lobby', 'alice');
    return got.ok ? got.counter : got.error;
  };
  assert.equal(await open(2000n), 2000n);
  assert.equal(await open(976n), 'replayed');
  assert.equal(await open(1n), 'replayed');
  assert.equal(await open(977n), 977n);
  assert.equal(await open(977n), 'replayed');
  assert.equal(await open(1999n), 1999n);
  assert.equal(await open(2000n), 'replayed');
  assert.equal(await open(2001n), 2001n);
  assert.equal(await open(977n), 'replayed');
  assert.equal(await open(978n), 978n);
  assert.equal(await open(1000000n), 1000000n);
  assert.equal(await open(2001n), 'replayed');
  assert.equal(await open(998977n), 998977n);
  assert.equal(await open(998976n), 'replayed');
});

test('a failed check never moves the window', async () => {
  const key = await lobbyKey();
  const receiver = new Receiver(key);
  assert.equal((await receiver.open(await sealedAt(key, 1n), 'lobby', 'alice')).ok, true);
  const forged = binary(await sealedAt(key, 1000000n));
  forged[forged.length - 1] ^= 1;
  assert.equal((await receiver.open(envelopeOf(forged), 'lobby', 'alice')).error, 'forged');
  assert.equal((await receiver.open(await sealedAt(key, 2n), 'lobby', 'alice')).ok, true);
  assert.equal((await receiver.open(await sealedAt(key, 1000000n), 'lobby', 'alice')).ok, true);
});

test('size limits on both sides', async () => {
  const key = await lobbyKey();
  const sender = await Sender.create(key, { senderId: ID });
  const receiver = new Receiver(key);
  const largest = 'é'.repeat(MAX_PLAINTEXT / 2);
  const envelope = await sender.seal(largest, 'lobby', 'alice');
  assert.equal(envelope.length, 3798);
  assert.equal((await receiver.open(envelope, 'lobby', 'alice')).text, largest);
  await assert.rejects(sender.seal('a'.repeat(MAX_PLAINTEXT + 1), 'lobby', 'alice'), (e) => {
    assert.ok(e instanceof E2eError);
    assert.equal(e.kind, 'plaintext-too-long');
    return true;
  });
  const bytes = (n, c) => new TextEncoder().encode(c.repeat(n));
  const bigger = await sender.sealBytes(bytes(2801, 'b'), 'lobby', 'alice');
  assert.equal(bigger.length, 3799);
  assert.equal((await receiver.open(bigger, 'lobby', 'alice')).text.length, 2801);
  const over = await sender.sealBytes(bytes(2802, 'd'), 'lobby', 'alice');
  assert.equal(over.length, MAX_ENVELOPE + 1);
  assert.equal((await receiver.open(over, 'lobby', 'alice')).error, 'too-long');
  const limit = PREFIX + 'A'.repeat(MAX_ENVELOPE - PREFIX.length);
  assert.equal((await receiver.open(limit, 'lobby', 'alice')).error, 'not-base64');
  // Length counts UTF-8 bytes, as the Rust side does: 3790 characters, 3800+ bytes.
  const wide = PREFIX + 'é'.repeat(1895);
  assert.equal((await receiver.open(wide, 'lobby', 'alice')).error, 'too-long');
  const huge = PREFIX + 'A'.repeat(1 << 20);
  assert.equal((await receiver.open(huge, 'lobby', 'alice')).error, 'too-long');
});

test('base64 errors and short envelopes', async () => {
  const key = await lobbyKey();
  const receiver = new Receiver(key);
  const good = await (await Sender.create(key, { senderId: ID })).seal('hi', 'lobby', 'alice');
  const body = good.slice(PREFIX.length);
  assert.equal(body.length % 4, 0);
  const cases = [
    `${good}=`,
    `${good}==`,
    `${PREFIX}${body.slice(1)}+`,
    `${PREFIX}${body.slice(1)}/`,
    `${PREFIX}${body.slice(1)} `,
    `${PREFIX}${body.slice(2)}é`,
    `${good}A`,
    `${PREFIX}!!!!`,
    `${PREFIX}AB`,
  ];
  for (const bad of cases) {
    assert.equal((await receiver.open(bad, 'lobby', 'alice')).error, 'not-base64', bad);
  }
  assert.equal((await receiver.open(PREFIX, 'lobby', 'alice')).error, 'too-short');
  const short = envelopeOf(binary(good).subarray(0, MIN_BINARY_LEN - 1));
  assert.equal((await receiver.open(short, 'lobby', 'alice')).error, 'too-short');
  const noise = envelopeOf(new Uint8Array(MIN_BINARY_LEN).fill(0x5a));
  assert.equal((await receiver.open(noise, 'lobby', 'alice')).error, 'wrong-key');
  assert.equal((await receiver.open(good, 'lobby', 'alice')).ok, true);
});

test('a plaintext that is not a text field is refused both ways', async () => {
  const key = await lobbyKey();
  const sender = await Sender.create(key, { senderId: ID });
  for (const bad of ['clear\x1b[2J', 'two\nlines', 'nul\0', 'c1\u009b31m', 'lone \ud800']) {
    await assert.rejects(sender.seal(bad, 'lobby', 'alice'), { kind: 'plaintext-not-text' });
  }
  const room = await RoomCrypto.fromKey(key, 'lobby');
  const enc = new TextEncoder();
  for (const bad of [
    enc.encode('clear\x1b[2J'),
    enc.encode('two\nlines'),
    Uint8Array.of(0xff, 0xfe, 0x20, 0x6e),
  ]) {
    const envelope = await sender.sealBytes(bad, 'lobby', 'alice');
    assert.deepEqual(await room.open(envelope, 'alice'), {
      shown: 'undecryptable',
      error: 'not-text',
      message: 'could not be decrypted (not a text field)',
    });
  }
  assert.equal(sender.next, 4n, 'refused plaintexts use no counter');
});

test('a plain message in an encrypted room is shown marked not encrypted', async () => {
  const room = await RoomCrypto.fromKey(await lobbyKey(), 'lobby');
  assert.equal(isEnvelope('hello'), false);
  assert.equal(isEnvelope('ocm-e2e-v1'), false);
  assert.equal(isEnvelope('OCM-E2E-V1:AAAA'), false);
  assert.deepEqual(await room.open('hello', 'alice'), { shown: 'not-encrypted', text: 'hello' });
  assert.equal(room.replays + room.undecryptable, 0);
});

test('the last counter is used once, then the sender refuses', async () => {
  const key = await lobbyKey();
  const sender = await Sender.create(key, { senderId: ID, counter: (1n << 64n) - 1n });
  const last = await sender.seal('last', 'lobby', 'alice');
  assert.equal((await new Receiver(key).open(last, 'lobby', 'alice')).counter, (1n << 64n) - 1n);
  await assert.rejects(sender.seal('one more', 'lobby', 'alice'), { kind: 'counter-exhausted' });
});

test('sender state is bounded and the sender verified longest ago is forgotten', async () => {
  const key = await lobbyKey();
  const receiver = new Receiver(key);
  const first = await (await Sender.create(key, { senderId: new Uint8Array(8).fill(0xee) })).seal(
    'first',
    'lobby',
    'alice',
  );
  assert.equal((await receiver.open(first, 'lobby', 'alice')).ok, true);
  for (let n = 0; n < MAX_SENDERS; n++) {
    const id = new Uint8Array(8);
    new DataView(id.buffer).setUint32(4, n);
    const envelope = await (await Sender.create(key, { senderId: id })).seal('hi', 'lobby', 'bob');
    assert.equal((await receiver.open(envelope, 'lobby', 'bob')).ok, true);
  }
  assert.equal(receiver.senderCount, MAX_SENDERS);
  assert.equal((await receiver.open(first, 'lobby', 'alice')).ok, true);
  assert.equal(receiver.senderCount, MAX_SENDERS);
});

test('random bytes after the prefix never throw and never open', async () => {
  const key = await lobbyKey();
  const receiver = new Receiver(key);
  let seed = 12345;
  const next = () => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
  for (let round = 0; round < 300; round++) {
    const bytes = Uint8Array.from({ length: next() * 16 }, next);
    const asText = PREFIX + new TextDecoder().decode(bytes);
    for (const envelope of [asText, envelopeOf(bytes)]) {
      const got = await receiver.open(envelope, 'lobby', 'alice');
      assert.equal(got.ok, false);
      assert.notEqual(got.error, 'not-envelope');
      assert.equal(typeof got.message, 'string');
    }
  }
  assert.equal(receiver.senderCount, 0);
});
