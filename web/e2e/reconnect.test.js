// End to end: a page's WebSocket is cut mid-conversation (a TCP proxy between the page and
// ocm-server drops the connection, and refuses new ones for a while, as a network that went
// down); the page comes back with RESUME (§5.5) and recovers what it missed with NACK (§5.4).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as h from './harness.js';

const skip = h.skipReason() ?? false;

test('a page whose WebSocket is cut reconnects and shows every message exactly once, in order', { skip, timeout: h.TEST_TIMEOUT_MS }, () =>
  h.scenario('reconnect', [], async ({ server, browser, plain, proxy }) => {
    const room = '再接続';
    const cutter = await proxy();
    const alice = await browser.newPage(cutter.url, 'アリス'); // its WebSocket goes through the proxy
    await h.enterRoom(alice, { name: 'アリス', room, create: true });
    const bob = await browser.newPage(server.url, 'bob');
    await h.enterRoom(bob, { name: 'bob', room });
    const carol = plain(['--name', 'carol', '--join', room]);
    await h.waitNotice(alice, 'carol joined');
    await h.waitNotice(bob, 'carol joined');

    let n = 0;
    const all = () => Promise.all([h.waitMessages(bob, n), h.waitPlainMessages(carol, n)]);
    await h.say(alice, 'まだつながってる 📶');
    await h.say(bob, 'bob: 1 🐟');
    carol.say('carol: 1 🐙');
    n = 3;
    await Promise.all([all(), h.waitMessages(alice, n)]);

    // The network goes down under the page.
    assert.equal(cutter.webSockets, 1, 'the page has no WebSocket through the proxy');
    cutter.refusing = true;
    cutter.cut();
    await h.waitNotice(alice, 'connection lost, reconnecting…');
    await h.say(bob, 'いない間に 1 🌧');
    carol.say('いない間に 2 ☔');
    await h.say(bob, 'いない間に 3 ⛈');
    carol.say('いない間に 4 🌈');
    n += 4;
    await all();
    assert.equal((await h.shownMessages(alice)).length, 3, 'the page saw messages while cut off');

    // It comes back: RESUME on a new WebSocket, then NACK for the 4 it missed.
    cutter.refusing = false;
    await h.waitNotice(alice, 'reconnected, 4 messages recovered', 12000);
    await alice.locator('#connection[data-state="online"]').waitFor({ timeout: h.WAIT_MS });
    await h.say(alice, 'ただいま 🏠');
    await h.say(bob, 'おかえり 🎉');
    n += 2;
    await Promise.all([all(), h.waitMessages(alice, n)]);
    await new Promise((r) => setTimeout(r, 300)); // a late duplicate would show up now

    const order = carol.messages();
    assert.equal(order.length, n);
    for (const page of [alice, bob]) {
      const shown = await h.shownMessages(page);
      assert.deepEqual(shown.map((m) => [m.user, m.text]), order, `${page.label}: not every message once, in order`);
      for (let i = 1; i < shown.length; i++) assert.equal(shown[i].seq, shown[i - 1].seq + 1, `${page.label}: Seq gap at ${i}`);
    }
    const notices = await h.shownNotices(alice);
    assert.equal(notices.filter((t) => t === 'connection lost, reconnecting…').length, 1);
    assert.equal(notices.filter((t) => t.startsWith('reconnected')).length, 1);
    assert.deepEqual(notices.filter((t) => t.startsWith('rejoin') || t.includes('could not')), []);
    // RESUME moved the member: nobody saw it leave, time out or join again.
    const bobNotices = await h.shownNotices(bob);
    for (const t of ['アリス left', 'アリス timed out']) {
      assert.ok(!bobNotices.includes(t) && !carol.notices().includes(t), `others saw "${t}"`);
    }
    assert.equal(bobNotices.filter((t) => t === 'アリス joined').length, 1); // from the history, once
    assert.equal(carol.notices().filter((t) => t === 'アリス joined').length, 1); // from its history at join, once
    assert.equal(cutter.webSockets >= 2, true, `the page's WebSocket did not come back through the proxy (${cutter.webSockets} opened)`);
    // The browser logs each WebSocket that failed to open while the network was down; any
    // other error is a bug.
    const outage = /^アリス: console error: WebSocket connection to 'ws:\/\/[^']+\/ws' failed: /;
    assert.deepEqual(browser.errors.filter((e) => !outage.test(e)), []);
  }));
