// Smoke test of the page in the system's headless Chromium (never a downloaded browser),
// against the in-page fake server (demo.html): the page renders, has no script errors,
// chats in Japanese and emoji, shows markup as text, recovers after its WebSocket is cut,
// and fits a phone-sized screen. Run: node web/test-support/smoke.mjs [screenshot-dir]
// (needs `npm ci` and /usr/bin/chromium). The end-to-end tests against ocm-server come later.

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
  const path = new URL(req.url, 'http://x').pathname; // the URL parser already removed any ..
  try {
    const file = join(webDir, path === '/' ? 'index.html' : decodeURIComponent(path));
    if (!file.startsWith(webDir)) throw new Error('outside web/');
    const body = await readFile(file);
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((r) => http.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${http.address().port}`;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  // Playwright gives every launch a fresh temporary profile (its own --user-data-dir).
});
const errors = [];
try {
  // The page as served, with nothing at /ws: it renders, says so, and throws nothing.
  {
    const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${base}/`);
    await page.getByText('Room list: could not reach the server.').waitFor();
    assert.equal(await page.getByTestId('name-input').evaluate((e) => e === document.activeElement), true);
    await page.getByTestId('join-button').click();
    await page.getByText('Your name is empty.').waitFor();
    await page.close();
  }
  for (const scheme of ['light', 'dark']) {
    const page = await browser.newPage({ viewport: { width: 1000, height: 700 }, colorScheme: scheme });
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
    page.on('dialog', (d) => {
      errors.push(`dialog: ${d.message()}`);
      d.dismiss();
    });
    await page.goto(`${base}/test-support/demo.html`);
    await page.waitForFunction(() => window.ocmDemo?.ready);
    await page.getByTestId('name-input').fill('アリス');
    await page.getByTestId('room-input').fill('ロビー');
    await page.getByTestId('create-button').click();
    await page.getByTestId('message-input').waitFor({ state: 'visible' });
    await page.evaluate(() => {
      const s = window.ocmDemo.server;
      s.addRemote('ロビー', 'bob');
      s.say('ロビー', 'bob', 'hello from the terminal 👋');
      s.say('ロビー', 'bob', '<img src=x onerror=alert(1)>');
    });
    await page.getByTestId('message-input').fill('こんにちは、世界 🌏');
    await page.getByTestId('message-input').press('Enter');
    await page.waitForSelector('li.msg.mine[data-seq]');
    // cut the page's WebSocket; bob talks meanwhile; the page reconnects with RESUME
    await page.evaluate(() => {
      const s = window.ocmDemo.server;
      s.socket.cut();
      for (let i = 1; i <= 4; i++) s.say('ロビー', 'bob', `while you were away ${i}`);
    });
    await page.getByText('reconnected, 4 messages recovered').first().waitFor();
    const rows = await page.$$eval('li.msg', (lis) => lis.map((li) => [li.dataset.seq, li.dataset.user, li.querySelector('.text').textContent]));
    assert.deepEqual(rows.map((r) => r[2]), [
      'hello from the terminal 👋',
      '<img src=x onerror=alert(1)>',
      'こんにちは、世界 🌏',
      'while you were away 1',
      'while you were away 2',
      'while you were away 3',
      'while you were away 4',
    ]);
    assert.equal(await page.locator('img').count(), 0);
    await page.screenshot({ path: join(shots, `web-${scheme}.png`) });
    await page.setViewportSize({ width: 375, height: 667 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
    assert.equal(overflow, false, 'page wider than a phone screen');
    await page.screenshot({ path: join(shots, `web-${scheme}-phone.png`) });
    await page.getByTestId('leave-button').click();
    await page.getByTestId('room-input').waitFor({ state: 'visible' });
    await page.close();
  }
  assert.deepEqual(errors, []);
  console.log(`smoke ok; screenshots in ${shots}`);
} finally {
  await browser.close();
  http.close();
}
