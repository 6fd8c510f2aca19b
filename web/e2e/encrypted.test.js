// End to end, encrypted rooms (PROTOCOL.md §7): a page with "Encrypted room" and an
// `ocm-client --plain --e2e` in one room read each other's messages; a page with another
// passphrase reads neither, and each side shows it "could not be decrypted".

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as h from './harness.js';

const skip = h.skipReason() ?? false;
const opts = { skip, timeout: h.TEST_TIMEOUT_MS * 2 };

const PASSPHRASE = 'über den Wolken — 雲の上';
const UNDECRYPTABLE = 'could not be decrypted (different passphrase?)';

/** Fills the lobby with "Encrypted room" ticked and enters the room. */
async function enterEncrypted(page, { name, room, create = false, passphrase }) {
  await page.getByTestId('e2e-checkbox').check();
  await page.getByTestId('passphrase-input').fill(passphrase);
  await h.enterRoom(page, { name, room, create });
  await page.getByTestId('chat-e2e').waitFor({ state: 'visible', timeout: h.WAIT_MS });
}

/** The page's messages with their §7 mark: [user, text, mark]. */
function marked(page) {
  return page.$$eval('#messages li.msg:not(.pending)', (lis) =>
    lis.map((li) => [li.dataset.user, li.querySelector('.text').textContent, li.dataset.e2e ?? null]),
  );
}

function undecryptable(page) {
  return page.$$eval('#messages li[data-testid="undecryptable"]', (lis) => lis.map((li) => li.textContent));
}

test('a page and the terminal client read each other in an encrypted room; another passphrase reads nothing', opts, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ocm-e2e-pass-'));
  const file = join(dir, 'passphrase');
  await writeFile(file, `${PASSPHRASE}\n`);
  try {
    await h.scenario('encrypted', [], async ({ server, browser, plain }) => {
      const room = 'secret garden';
      const alice = await browser.newPage(server.url, 'alice');
      await enterEncrypted(alice, { name: 'alice', room, create: true, passphrase: PASSPHRASE });
      const bob = plain(['--name', 'bob', '--join', room, '--e2e', '--e2e-passphrase-file', file]);
      await h.waitPlainNotice(bob, 'bob joined');
      await h.waitNotice(alice, 'bob joined');

      await h.say(alice, 'from the page: 秘密 🌱');
      await h.until('the page message on the terminal', () => bob.lines().includes('alice: 🔒 from the page: 秘密 🌱'));
      bob.say('from the terminal: 🔑 ok');
      await h.until('the terminal message on the page', async () =>
        (await marked(alice)).some(([u, t, m]) => u === 'bob' && t === 'from the terminal: 🔑 ok' && m === 'encrypted'),
      );
      assert.deepEqual(await marked(alice), [
        ['alice', 'from the page: 秘密 🌱', 'encrypted'],
        ['bob', 'from the terminal: 🔑 ok', 'encrypted'],
      ]);
      await h.until('bob sees its own message with the lock', () => bob.lines().includes('bob: 🔒 from the terminal: 🔑 ok'));

      // Another passphrase: the page and the terminal show a notice, never the text.
      const eve = await browser.newPage(server.url, 'eve');
      await enterEncrypted(eve, { name: 'eve', room, passphrase: 'not the passphrase' });
      await h.waitPlainNotice(bob, 'eve joined');
      await h.say(eve, 'let me in');
      await h.waitPlainNotice(bob, `eve: ${UNDECRYPTABLE}`);
      await h.until('the undecryptable notice on the page', async () =>
        (await undecryptable(alice)).includes(`eve: ${UNDECRYPTABLE}`),
      );
      bob.say('eve cannot read this');
      await h.until('the notice on eve\'s page', async () => (await undecryptable(eve)).includes(`bob: ${UNDECRYPTABLE}`));
      const eveSees = JSON.stringify(await marked(eve));
      assert.ok(!eveSees.includes('eve cannot read this'), eveSees);
      assert.ok(bob.lines().every((l) => !l.includes('let me in')), bob.lines().join('\n'));
      assert.match(bob.stderr(), /deriving key…/);
      assert.deepEqual(browser.errors, []);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
