// End to end: the room closes for everyone when its host leaves with the page's Leave
// button, and when the host's tab is simply closed and the host times out (§2.3).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as h from './harness.js';

const skip = h.skipReason() ?? false;
const opts = { skip, timeout: h.TEST_TIMEOUT_MS };

/** A host page, a guest page and a plain client in `room`, having said one line each. */
async function threeInRoom({ server, browser, plain }, room) {
  const host = await browser.newPage(server.url, 'ホスト');
  await h.enterRoom(host, { name: 'ホスト', room, create: true });
  const guest = await browser.newPage(server.url, 'guest');
  await h.enterRoom(guest, { name: 'guest', room });
  const carol = plain(['--name', 'carol', '--join', room]);
  await h.waitNotice(host, 'carol joined');
  await h.waitNotice(guest, 'carol joined');
  await h.say(host, 'そろそろ閉めます 🚪');
  await h.say(guest, 'はーい');
  carol.say('了解 👌');
  await Promise.all([h.waitMessages(host, 3), h.waitMessages(guest, 3), h.waitPlainMessages(carol, 3)]);
  return { host, guest, carol };
}

/** The guest page and the plain client saw the host go and the room close for `reason`. */
async function checkClosed(guest, carol, how, reason) {
  await h.waitNotice(guest, `room closed: ${reason}`);
  await h.waitPlainNotice(carol, `room closed: ${reason}`);
  const notices = await h.shownNotices(guest);
  assert.ok(notices.indexOf(`ホスト ${how}`) >= 0 && notices.indexOf(`ホスト ${how}`) < notices.indexOf(`room closed: ${reason}`), `guest: ${notices}`);
  const plainNotices = carol.notices();
  assert.ok(plainNotices.indexOf(`ホスト ${how}`) >= 0 && plainNotices.indexOf(`ホスト ${how}`) < plainNotices.indexOf(`room closed: ${reason}`), `carol: ${plainNotices}`);
  // The guest page can no longer send, and offers the way back.
  assert.equal(await guest.getByTestId('message-input').isDisabled(), true);
  assert.equal(await guest.getByTestId('leave-button').textContent(), 'Back to rooms');
  // The plain client ends once its room is gone.
  const exit = await Promise.race([carol.exited, new Promise((r) => setTimeout(() => r(null), h.WAIT_MS))]);
  assert.ok(exit, 'the plain client did not exit after its room closed');
  assert.notEqual(exit.code, 0, 'the plain client exited 0 after its room closed');
  // The room's name is free again: the guest, back in the lobby, may create it.
  await guest.getByTestId('leave-button').click();
  await guest.getByTestId('lobby').waitFor({ state: 'visible' });
}

test('the host leaves with the Leave button: the other page and the plain client see the room closed', opts, () =>
  h.scenario('host-leaves', [], async (ctx) => {
    const room = '閉じる部屋';
    const { host, guest, carol } = await threeInRoom(ctx, room);
    await host.getByTestId('leave-button').click();
    await host.getByTestId('lobby').waitFor({ state: 'visible' });
    await checkClosed(guest, carol, 'left', 'host left');
    await h.enterRoom(guest, { name: 'guest', room, create: true });
    assert.deepEqual(ctx.browser.errors, []);
  }));

test('a host whose tab is closed times out and the room closes the same way', opts, () =>
  h.scenario('host-times-out', ['--idle-timeout', '2'], async (ctx) => {
    const room = 'タイムアウト';
    const { host, guest, carol } = await threeInRoom(ctx, room);
    const closedAt = Date.now();
    await host.close(); // no LEAVE: the page just goes away
    await checkClosed(guest, carol, 'timed out', 'host timed out');
    // IdleTimeout is 2 s: not before it, and not long after it.
    const took = Date.now() - closedAt;
    assert.ok(took >= 1500 && took < 7000, `the room closed ${took} ms after the tab`);
    // The others kept themselves alive meanwhile (SYNC heartbeats every 500 ms).
    assert.ok(!(await h.shownNotices(guest)).includes('you timed out'));
    assert.ok(!carol.notices().includes('carol timed out'));
    await h.enterRoom(guest, { name: 'guest', room, create: true });
    assert.deepEqual(ctx.browser.errors, []);
  }));
