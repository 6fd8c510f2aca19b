// The page's pure helpers: statuses in words, stable name colours, input checks in bytes.
// (app.js starts the page only where there is a document, so Node can import it.)

import test from 'node:test';
import assert from 'node:assert/strict';
import { checkEntry, messageCheck, nameHue, statusText } from '../app.js';
import { Status } from '../protocol.js';

test('every status has words, naming the room and user', () => {
  assert.equal(statusText(Status.ROOM_EXISTS, 'x', 'u'), "room 'x' already exists");
  assert.equal(statusText(Status.ROOM_NOT_FOUND, 'x'), "room 'x' does not exist");
  assert.equal(statusText(Status.ROOM_FULL, 'x'), "room 'x' is full");
  assert.match(statusText(Status.BAD_PASSWORD, 'x'), /wrong password/);
  assert.equal(statusText(Status.NAME_TAKEN, 'x', 'bob'), "the name 'bob' is already taken in room 'x'");
  assert.match(statusText(Status.INVALID_REQUEST), /invalid/);
  assert.match(statusText(Status.SERVER_FULL), /server is full/);
  assert.match(statusText(Status.UNAUTHORIZED), /not allowed/);
  assert.match(statusText(Status.TOO_MANY_REQUESTS), /too many failed attempts/);
  assert.match(statusText(null), /could not reach the server/);
  assert.match(statusText(42), /status 42/);
});

test('name colours are stable and spread', () => {
  assert.equal(nameHue('alice'), nameHue('alice'));
  const hues = new Set(['alice', 'bob', 'carol', 'dave', 'アリス', '😀', 'eve', 'mallory'].map(nameHue));
  assert.ok(hues.size >= 6, String([...hues]));
  for (const h of hues) assert.ok(h >= 0 && h < 360);
});

test('the entry form is checked in bytes before anything is sent', () => {
  const ok = checkEntry({ name: 'アリス', room: 'ロビー', password: '', capacity: '' }, true);
  assert.deepEqual(ok, { ok: true, user: 'アリス', room: 'ロビー', password: '', capacity: 0 });
  assert.equal(checkEntry({ name: '', room: 'r', password: '' }, false).field, 'name');
  assert.equal(checkEntry({ name: 'a', room: '', password: '' }, false).field, 'room');
  // 85 × 3 bytes = 255 fits; 86 × 3 = 258 does not, though it is only 86 characters
  assert.equal(checkEntry({ name: 'あ'.repeat(85), room: 'r', password: '' }, false).ok, true);
  const long = checkEntry({ name: 'あ'.repeat(86), room: 'r', password: '' }, false);
  assert.equal(long.field, 'name');
  assert.match(long.error, /258 bytes, at most 255/);
  assert.equal(checkEntry({ name: 'a\tb', room: 'r', password: '' }, false).field, 'name');
  assert.equal(checkEntry({ name: 'a', room: 'r', password: 'p'.repeat(256) }, false).field, 'password');
  assert.equal(checkEntry({ name: 'a', room: 'r', password: '', capacity: '65536' }, true).field, 'capacity');
  assert.equal(checkEntry({ name: 'a', room: 'r', password: '', capacity: '1.5' }, true).field, 'capacity');
  assert.equal(checkEntry({ name: 'a', room: 'r', password: '', capacity: '65535' }, true).capacity, 65535);
  // capacity is ignored on JOIN
  assert.equal(checkEntry({ name: 'a', room: 'r', password: '', capacity: 'zz' }, false).ok, true);
});

test('messages: 1..=3800 bytes, no control characters', () => {
  assert.deepEqual(messageCheck(''), { ok: false, bytes: 0, error: null });
  assert.equal(messageCheck('👋').bytes, 4);
  assert.equal(messageCheck('m'.repeat(3800)).ok, true);
  assert.equal(messageCheck('m'.repeat(3801)).ok, false);
  assert.equal(messageCheck('語'.repeat(1267)).ok, false);
  assert.equal(messageCheck('a\u001bb').ok, false);
  assert.equal(messageCheck('<img src=x onerror=alert(1)>').ok, true);
});
