// End to end: pages in headless Chromium and `ocm-client --plain` chatting through a real
// ocm-server (PROTOCOL.md §6: the page's members are ordinary members of the room).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as h from './harness.js';

const skip = h.skipReason() ?? false;
const opts = { skip, timeout: h.TEST_TIMEOUT_MS };

/** Asserts a page's messages: all delivered, Seq strictly rising, own ones marked. */
function checkPage(shown, me, want) {
  assert.deepEqual(shown.filter((m) => m.pending), [], 'messages still pending or failed');
  assert.deepEqual(shown.map((m) => [m.user, m.text]), want);
  for (let i = 1; i < shown.length; i++) assert.ok(shown[i].seq > shown[i - 1].seq, `Seq not rising at ${i}`);
  assert.deepEqual(shown.map((m) => m.mine), want.map(([u]) => u === me), 'own messages not marked');
}

test('two pages and a plain client chat in one room, Japanese and emoji, each sees every message once, in order', opts, () =>
  h.scenario('chat', [], async ({ server, browser, plain }) => {
    const room = 'ロビー';
    const alice = await browser.newPage(server.url, 'アリス');
    await h.enterRoom(alice, { name: 'アリス', room, create: true });
    const bob = await browser.newPage(server.url, 'bob');
    await h.enterRoom(bob, { name: 'bob', room });
    await h.waitNotice(alice, 'bob joined');
    const carol = plain(['--name', 'carol', '--join', room]);
    await h.waitPlainNotice(carol, 'carol joined');
    await h.waitNotice(alice, 'carol joined');
    await h.waitNotice(bob, 'carol joined');

    const want = [];
    const speak = async (who, text) => {
      if (who === carol) carol.say(text);
      else await h.say(who, text);
      want.push([who === carol ? 'carol' : who.label, text]);
    };
    // A conversation, each line after everyone saw the previous one: a known order.
    const lines = [
      [alice, 'こんにちは、みなさん 👋'],
      [bob, 'hi アリス! 🍣🍜'],
      [carol, 'ターミナルから: 日本語もOK 🇯🇵'],
      [alice, '家族 👨‍👩‍👧 と 🌏、絵文字も'],
      [bob, 'ok 👍🏽 「かぎかっこ」'],
      [carol, 'さようなら 🙇'],
    ];
    for (const [who, text] of lines) {
      await speak(who, text);
      await Promise.all([h.waitMessages(alice, want.length), h.waitMessages(bob, want.length), h.waitPlainMessages(carol, want.length)]);
    }
    // Then everyone at once: the server's order, the same for all three.
    const burst = [];
    for (let i = 1; i <= 3; i++) {
      for (const [who, name] of [[alice, 'アリス'], [bob, 'bob'], [carol, 'carol']]) {
        const text = `${name} の ${i} 番目 ✨`;
        burst.push([name, text]);
        if (who === carol) carol.say(text);
        else await h.say(who, text);
      }
    }
    const total = want.length + burst.length;
    const [a, b, c] = await Promise.all([h.waitMessages(alice, total), h.waitMessages(bob, total), h.waitPlainMessages(carol, total)]);
    await new Promise((r) => setTimeout(r, 300)); // a late duplicate would show up now
    const seen = await Promise.all([h.shownMessages(alice), h.shownMessages(bob)]);
    assert.equal(seen[0].length, total, 'alice: a message shown twice');
    assert.equal(seen[1].length, total, 'bob: a message shown twice');
    assert.equal(carol.messages().length, total, 'carol: a message printed twice');

    const order = c.map(([u, t]) => [u, t]);
    assert.deepEqual(order.slice(0, want.length), want);
    // The burst: every message once, each sender's in the order it sent them.
    const tail = order.slice(want.length);
    assert.deepEqual([...tail].sort(), [...burst].sort());
    for (const name of ['アリス', 'bob', 'carol']) {
      assert.deepEqual(tail.filter(([u]) => u === name), burst.filter(([u]) => u === name), `${name}'s order`);
    }
    checkPage(a, 'アリス', order);
    checkPage(b, 'bob', order);
    // Both pages numbered the same events the same way.
    assert.deepEqual(a.map((m) => m.seq), b.map((m) => m.seq));
    assert.deepEqual(browser.errors, []);
  }));

test('markup in a message is shown as text: no element is created and no script runs', opts, () =>
  h.scenario('markup', [], async ({ server, browser, plain }) => {
    const room = 'xss';
    const alice = await browser.newPage(server.url, 'alice');
    await h.enterRoom(alice, { name: 'alice', room, create: true });
    const bob = await browser.newPage(server.url, 'bob');
    await h.enterRoom(bob, { name: 'bob', room });
    const carol = plain(['--name', 'carol', '--join', room]);
    await h.waitNotice(alice, 'carol joined');
    await h.waitNotice(bob, 'carol joined');

    const hostile = [
      ['carol', '<img src=x onerror=alert(1)>'],
      ['alice', '<script>alert(2)</script><b>bold</b>'],
      ['bob', '<svg onload=alert(3)></svg> &lt;img&gt; <a href="javascript:alert(4)">x</a>'],
    ];
    carol.say(hostile[0][1]);
    await h.waitMessages(alice, 1);
    await h.say(alice, hostile[1][1]);
    await h.waitMessages(bob, 2);
    await h.say(bob, hostile[2][1]);
    await Promise.all([h.waitMessages(alice, 3), h.waitMessages(bob, 3), h.waitPlainMessages(carol, 3)]);
    await new Promise((r) => setTimeout(r, 500)); // time for an onerror/onload to fire, were there one
    for (const page of [alice, bob]) {
      assert.deepEqual((await h.shownMessages(page)).map((m) => [m.user, m.text]), hostile);
      const made = await page.evaluate(() => document.images.length + document.querySelectorAll('#messages :is(script, svg, b, a)').length);
      assert.equal(made, 0, `${page.label}: markup became elements`);
    }
    assert.deepEqual(carol.messages(), hostile);
    assert.deepEqual(browser.errors, [], 'a dialog opened or a script failed');
  }));
