// The README's picture of the page: a real ocm-server, two pages and a terminal user
// (`ocm-client --plain`) mid-conversation in Japanese and emoji, as the page of one of them
// shows it in the system's headless Chromium. Run: `npm run screenshot` (writes docs/web.png)
// or `node web/e2e/screenshot.js OUT.png [dark]`. Needs what the end-to-end tests need.

import { fileURLToPath } from 'node:url';
import * as h from './harness.js';

const out = process.argv[2] ?? fileURLToPath(new URL('../../docs/web.png', import.meta.url));
const colorScheme = process.argv[3] === 'dark' ? 'dark' : 'light';

const why = h.skipReason();
if (why) {
  console.error(`cannot take the screenshot: ${why}`);
  process.exit(1);
}

const server = await h.startServer();
const browser = await h.launchBrowser({ viewport: { width: 760, height: 560 }, colorScheme });
let carol = null;
try {
  const room = 'ロビー';
  const alice = await browser.newPage(server.url, 'アリス');
  await h.enterRoom(alice, { name: 'アリス', room, create: true });
  const bob = await browser.newPage(server.url, 'bob');
  await h.enterRoom(bob, { name: 'bob', room });
  carol = h.startPlain(server, ['--name', 'carol', '--join', room]);
  await h.waitNotice(alice, 'carol joined');
  const lines = [
    [alice, 'こんにちは、みなさん 👋'],
    [bob, 'hi アリス! from the browser 🍣'],
    [carol, 'ターミナルからこんにちは 🖥️'],
    [alice, '今日の予定は？ 📅'],
    [bob, 'ラーメン 🍜 at 7?'],
    [carol, 'いいね 👍 <b>markup stays text</b>'],
  ];
  let n = 0;
  for (const [who, text] of lines) {
    if (who === carol) carol.say(text);
    else await h.say(who, text);
    n++;
    await h.waitMessages(alice, n);
  }
  await alice.getByTestId('message-input').fill('行きます！🎉');
  await alice.getByTestId('message-input').blur();
  await alice.screenshot({ path: out });
  console.log(`screenshot saved as ${out}`);
} finally {
  await carol?.end();
  await browser.close();
  await server.stop();
}
