// The page's encrypted rooms (PROTOCOL.md §7) in the system's headless Chromium, against the
// in-page fake server (demo.html): the lobby's switch and passphrase, "deriving key…", a
// 2800-byte limit, own messages sealed and shown with a lock, bob's envelope opened, its
// replay dropped, another passphrase's envelope shown as a notice (never as text), and a
// plain message marked "not encrypted". Run: node web/test-support/e2e-smoke.mjs [dir]
// (needs `npm ci` and /usr/bin/chromium; 127.0.0.1 is a secure context, so WebCrypto works).

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const webDir = fileURLToPath(new URL('..', import.meta.url));
const shots = process.argv[2] ?? tmpdir();
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };
const http = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  try {
    const file = join(webDir, path === '/' ? 'index.html' : decodeURIComponent(path));
    if (!file.startsWith(webDir)) throw new Error('outside web/');
    const body = await readFile(file);
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' });
    res.end(body);
  } catch { res.writeHead(404); res.end(); }
});
await new Promise((r) => http.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${http.address().port}`;
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu'] });
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  await page.goto(`${base}/test-support/demo.html`);
  await page.waitForFunction(() => window.ocmDemo?.ready);
  await page.getByTestId('name-input').fill('alice');
  await page.getByTestId('room-input').fill('lobby');
  assert.equal(await page.getByTestId('passphrase-input').isDisabled(), true);
  await page.getByTestId('e2e-checkbox').check();
  await page.getByTestId('create-button').click();
  await page.getByText('An encrypted room needs a passphrase.').waitFor();
  await page.getByTestId('passphrase-input').fill('correct horse');
  await page.getByTestId('create-button').click();
  await page.getByText('deriving key…').waitFor();
  await page.getByTestId('message-input').waitFor({ state: 'visible' });
  assert.equal(await page.getByTestId('chat-e2e').isVisible(), true);
  assert.equal(await page.getByTestId('message-bytes').textContent(), '0 / 2800 bytes');
  await page.evaluate(async () => {
    const m = await import('/e2e.js');
    const s = window.ocmDemo.server;
    s.addRemote('lobby', 'bob');
    const good = await m.Sender.create(await m.deriveRoomKey('correct horse', 'lobby'));
    const bad = await m.Sender.create(await m.deriveRoomKey('wrong horse', 'lobby'));
    const env = await good.seal('secret from bob', 'lobby', 'bob');
    s.say('lobby', 'bob', env);
    s.say('lobby', 'bob', env); // a replay: dropped
    s.say('lobby', 'bob', await bad.seal('other key', 'lobby', 'bob'));
    s.say('lobby', 'bob', 'plain hello');
  });
  await page.getByTestId('message-input').fill('hi bob 🔐');
  await page.getByTestId('message-input').press('Enter');
  await page.waitForSelector('li.msg.mine[data-seq]');
  await page.getByTestId('undecryptable').waitFor();
  const rows = await page.$$eval('li.msg, li[data-testid=undecryptable]', (lis) => lis.map((li) => [li.dataset.user, li.dataset.e2e ?? '', li.querySelector('.text')?.textContent ?? li.textContent]));
  assert.deepEqual(rows, [
    ['bob', 'encrypted', 'secret from bob'],
    ['bob', '', 'bob: could not be decrypted (different passphrase?)'],
    ['bob', 'plain', 'plain hello'],
    ['alice', 'encrypted', 'hi bob 🔐'],
  ]);
  await page.screenshot({ path: join(shots, 'web-e2e.png') });
  assert.deepEqual(errors, []);
  console.log(`e2e page ok; screenshot in ${shots}`);
} finally { await browser.close(); http.close(); }
