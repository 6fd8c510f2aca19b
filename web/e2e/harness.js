// What the end-to-end tests share: a real `ocm-server` on loopback, real `ocm-client --plain`
// processes, a TCP proxy that can cut a page's WebSocket, and the system's headless Chromium
// (never a downloaded browser) with a fresh profile per test. Not a test file itself: the
// runner picks up only `*.test.js` here.
//
// Binaries: `target/debug/ocm-server` and `target/debug/ocm-client` (what `cargo test` and
// `cargo build` leave), or `$OCM_SERVER_BIN` / `$OCM_CLIENT_BIN`. Browser: /usr/bin/chromium or
// `$OCM_CHROMIUM`. When one is missing the tests are skipped with the reason, unless
// `OCM_E2E_REQUIRED=1` (scripts/test.sh under CI), which turns the skip into a failure.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));

export const SERVER_BIN = process.env.OCM_SERVER_BIN || join(root, 'target/debug/ocm-server');
export const CLIENT_BIN = process.env.OCM_CLIENT_BIN || join(root, 'target/debug/ocm-client');
export const CHROMIUM = process.env.OCM_CHROMIUM || '/usr/bin/chromium';

/** Flags that keep the browser off the network and quiet (issue 12). */
export const CHROMIUM_ARGS = Object.freeze([
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]);

/** Longest wait for anything a test expects to see (a test has ~30 s in all). */
export const WAIT_MS = 8000;

/** Milliseconds per test before the runner gives up on it. */
export const TEST_TIMEOUT_MS = 30000;

let playwright = null;
try {
  playwright = await import('playwright-core');
} catch {
  // reported by skipReason()
}

/**
 * Why the end-to-end tests cannot run here, or null when they can. With
 * OCM_E2E_REQUIRED=1 a missing piece throws instead: CI must not pass by running less.
 */
export function skipReason() {
  const missing = [];
  if (!playwright) missing.push('playwright-core is not installed (run `npm ci`)');
  if (!existsSync(CHROMIUM)) missing.push(`no browser at ${CHROMIUM} (apt-get install chromium fonts-noto-cjk fonts-noto-color-emoji)`);
  if (!existsSync(SERVER_BIN)) missing.push(`no ${SERVER_BIN} (cargo build)`);
  if (!existsSync(CLIENT_BIN)) missing.push(`no ${CLIENT_BIN} (cargo build)`);
  if (missing.length === 0) return null;
  const reason = missing.join('; ');
  if (process.env.OCM_E2E_REQUIRED === '1') throw new Error(`end-to-end tests cannot run: ${reason}`);
  return reason;
}

/**
 * Every process a test started and has not seen exit: killed if this test file's process
 * ends first (a test that timed out, or the runner stopping), so no server outlives it.
 */
const children = new Set();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});
function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns a truthy value (returned) or `ms` pass (throws `what`). */
export async function until(what, check, ms = WAIT_MS) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}

// --- ocm-server ---------------------------------------------------------------------

/**
 * Starts `ocm-server --port 0` on 127.0.0.1 with `extra` flags and waits for its
 * `listening ... web=ADDR:PORT` line. Returns { tcp, web, log(), stop() }.
 */
export async function startServer(extra = []) {
  const args = ['--port', '0', '--bind', '127.0.0.1', ...extra];
  const child = track(spawn(SERVER_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  const lines = [];
  const keep = (stream) =>
    createInterface({ input: stream }).on('line', (l) => {
      if (lines.length < 2000) lines.push(l);
    });
  keep(child.stdout);
  keep(child.stderr);
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const server = {
    child,
    log: () => lines.join('\n'),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(t);
      }
    },
  };
  try {
    const line = await until('the listening line of ocm-server', () => {
      if (child.exitCode !== null) throw new Error(`ocm-server exited at start:\n${server.log()}`);
      return lines.find((l) => l.startsWith('listening '));
    });
    const field = (name) => {
      const m = line.match(new RegExp(` ${name}=(\\S+)`));
      if (!m) throw new Error(`no ${name}= in "${line}"`);
      return m[1];
    };
    server.tcp = field('tcp');
    server.web = field('web');
    server.url = `http://${server.web}/`;
  } catch (e) {
    await server.stop();
    throw e;
  }
  return server;
}

// --- ocm-client --plain ----------------------------------------------------------------

/**
 * Starts `ocm-client --plain` (args e.g. ['--name', 'carol', '--join', 'room']) against
 * `server`. Plain mode prints one line per event, `HH:MM:SS user: text` or
 * `HH:MM:SS * notice`. Returns { say(text), lines(), messages(), notices(), exited, end() }.
 */
export function startPlain(server, args) {
  const child = track(
    spawn(CLIENT_BIN, ['--server', server.tcp, '--plain', ...args], { stdio: ['pipe', 'pipe', 'pipe'] }),
  );
  // Writing to a client that has already exited (its room closed) must not crash the run.
  child.stdin.on('error', () => {});
  const out = [];
  const err = [];
  createInterface({ input: child.stdout }).on('line', (l) => out.push(l));
  createInterface({ input: child.stderr }).on('line', (l) => err.push(l));
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const body = (l) => l.replace(/^\d\d:\d\d:\d\d /, '');
  return {
    child,
    exited,
    lines: () => out.map(body),
    rawLines: () => out.slice(),
    stderr: () => err.join('\n'),
    /** Chat lines as [user, text]. */
    messages: () =>
      out
        .map(body)
        .filter((l) => !l.startsWith('* '))
        .map((l) => {
          const i = l.indexOf(': ');
          return [l.slice(0, i), l.slice(i + 2)];
        }),
    /** Notice lines without the leading `* `. */
    notices: () => out.map(body).filter((l) => l.startsWith('* ')).map((l) => l.slice(2)),
    say(text) {
      child.stdin.write(`${text}\n`);
    },
    /** Ends standard input (the client leaves) and makes sure the process is gone. */
    async end() {
      if (child.exitCode === null && child.signalCode === null) {
        child.stdin.end();
        const t = setTimeout(() => child.kill('SIGKILL'), 2000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

// --- a TCP proxy that can cut connections -----------------------------------------------

/**
 * A TCP proxy on 127.0.0.1 in front of `target` ("HOST:PORT"). The page is loaded through it,
 * so its WebSocket goes through it too. `cut()` destroys every open connection (the browser
 * sees the WebSocket drop without a close frame) and, while `refusing`, new connections are
 * closed at once, as a network that is down. Returns { url, cut(), refusing, connections,
 * webSockets, close() }.
 */
export async function startProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const open = new Set();
  const proxy = {
    refusing: false,
    connections: 0,
    /** Connections that opened with a WebSocket upgrade request (`GET /ws`). */
    webSockets: 0,
    cut() {
      for (const s of open) s.destroy();
      open.clear();
    },
    close: () =>
      new Promise((r) => {
        proxy.cut();
        server.close(() => r());
      }),
  };
  const server = createServer((down) => {
    if (proxy.refusing) return down.destroy();
    proxy.connections++;
    const up = connect(port, host);
    open.add(down);
    open.add(up);
    const drop = () => {
      down.destroy();
      up.destroy();
      open.delete(down);
      open.delete(up);
    };
    down.once('data', (first) => {
      if (first.subarray(0, 8).toString('latin1') === 'GET /ws ') proxy.webSockets++;
    });
    down.on('error', drop).on('close', drop);
    up.on('error', drop).on('close', drop);
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  proxy.url = `http://127.0.0.1:${server.address().port}/`;
  return proxy;
}

// --- the browser -----------------------------------------------------------------------

/**
 * Launches the system Chromium with a fresh profile (a new temporary --user-data-dir) and
 * returns { context, newPage(url), pages, errors, close() }. Every page's script errors,
 * console errors and dialogs are recorded in `errors` (a dialog is dismissed).
 */
export async function launchBrowser({ viewport = { width: 900, height: 640 }, colorScheme = 'light' } = {}) {
  const profile = await mkdtemp(join(tmpdir(), 'ocm-e2e-profile-'));
  let context;
  try {
    context = await playwright.chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      args: [...CHROMIUM_ARGS],
      headless: true,
      viewport,
      colorScheme,
      timezoneId: 'UTC',
    });
  } catch (e) {
    await rm(profile, { recursive: true, force: true });
    throw e;
  }
  // Every wait and action of Playwright is bounded, so a stuck test still ends and cleans up.
  context.setDefaultTimeout(WAIT_MS);
  const errors = [];
  const pages = [];
  const watch = (page, label) => {
    page.on('pageerror', (e) => errors.push(`${label}: page error: ${e}`));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(`${label}: console error: ${m.text()}`);
    });
    page.on('dialog', (d) => {
      errors.push(`${label}: dialog: ${d.message()}`);
      d.dismiss().catch(() => {});
    });
  };
  // A persistent context opens with one blank page: use it as the first page.
  let spare = context.pages()[0] ?? null;
  return {
    context,
    pages,
    errors,
    async newPage(url, label = `page ${pages.length + 1}`) {
      const page = spare ?? (await context.newPage());
      spare = null;
      page.label = label;
      watch(page, label);
      pages.push(page);
      await page.goto(url);
      return page;
    },
    async close() {
      await context.close().catch(() => {});
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/**
 * One end-to-end test: starts an `ocm-server` (with `serverArgs`) and a browser, runs
 * `body({ server, browser, plain(args), proxy() })`, and always stops what it started. If
 * `body` throws, a screenshot of every open page, the server's log and each plain client's
 * output are saved under a fresh temporary directory, whose path is printed.
 */
export async function scenario(name, serverArgs, body) {
  const server = await startServer(serverArgs);
  const plains = [];
  const proxies = [];
  let browser = null;
  try {
    browser = await launchBrowser();
    const ctx = {
      server,
      browser,
      plain(args) {
        const p = startPlain(server, args);
        plains.push([args, p]);
        return p;
      },
      async proxy() {
        const p = await startProxy(server.web);
        proxies.push(p);
        return p;
      },
    };
    try {
      await body(ctx);
    } catch (e) {
      await saveEvidence(name, browser, server, plains);
      throw e;
    }
  } finally {
    for (const [, p] of plains) await p.end().catch(() => {});
    for (const p of proxies) await p.close().catch(() => {});
    await browser?.close();
    await server.stop();
  }
}

async function saveEvidence(name, browser, server, plains) {
  const dir = await mkdtemp(join(tmpdir(), `ocm-e2e-${name.replace(/[^a-z0-9]+/gi, '-')}-`));
  for (const [i, page] of browser.pages.entries()) {
    if (page.isClosed()) continue;
    const file = join(dir, `${i + 1}-${page.label.replace(/[^a-z0-9]+/gi, '-')}.png`);
    await page.screenshot({ path: file, fullPage: true }).catch(() => {});
  }
  await writeFile(join(dir, 'ocm-server.log'), server.log()).catch(() => {});
  for (const [i, [args, p]] of plains.entries()) {
    const text = `# ocm-client --plain ${args.join(' ')}\n${p.rawLines().join('\n')}\n# stderr\n${p.stderr()}\n`;
    await writeFile(join(dir, `plain-${i + 1}.log`), text).catch(() => {});
  }
  if (browser.errors.length) await writeFile(join(dir, 'browser-errors.txt'), browser.errors.join('\n')).catch(() => {});
  console.error(`# ${name} failed: screenshots and logs are in ${dir}`);
}

// --- the page --------------------------------------------------------------------------

/** Fills the lobby and creates (or joins) `room` as `name`, then waits for the chat view. */
export async function enterRoom(page, { name, room, create = false, password = '' }) {
  await page.getByTestId('name-input').fill(name);
  await page.getByTestId('room-input').fill(room);
  if (password) await page.getByTestId('password-input').fill(password);
  await page.getByTestId(create ? 'create-button' : 'join-button').click();
  await page.getByTestId('message-input').waitFor({ state: 'visible', timeout: WAIT_MS });
  await page.locator('#connection[data-state="online"]').waitFor({ timeout: WAIT_MS });
}

/** Types `text` into the composer and presses Enter. */
export async function say(page, text) {
  const input = page.getByTestId('message-input');
  await input.fill(text);
  await input.press('Enter');
}

/** The page's delivered messages, in page order: [{ seq, user, text, mine }]. */
export function shownMessages(page) {
  return page.$$eval('#messages li.msg', (lis) =>
    lis.map((li) => ({
      seq: li.dataset.seq === undefined ? null : Number(li.dataset.seq),
      user: li.dataset.user,
      text: li.querySelector('.text').textContent,
      mine: li.classList.contains('mine'),
      pending: li.classList.contains('pending') || li.classList.contains('failed'),
    })),
  );
}

/** The page's notices, in page order. */
export function shownNotices(page) {
  return page.$$eval('#messages li.notice', (lis) => lis.map((li) => li.textContent));
}

/** Waits until the page shows a notice equal to `text` (or matching it, for a RegExp). */
export function waitNotice(page, text, ms = WAIT_MS) {
  return until(`notice ${text} on ${page.label}`, async () =>
    (await shownNotices(page)).some((n) => (text instanceof RegExp ? text.test(n) : n === text)),
  ms);
}

/** Waits until the page has delivered (not pending) `n` messages; returns them. */
export function waitMessages(page, n, ms = WAIT_MS) {
  return until(`${n} messages on ${page.label}`, async () => {
    const shown = await shownMessages(page);
    return shown.filter((m) => !m.pending).length >= n && shown;
  }, ms);
}

/** Waits until the plain client has printed `n` chat lines; returns them. */
export function waitPlainMessages(plain, n, ms = WAIT_MS) {
  return until(`${n} messages on the plain client`, () => {
    const got = plain.messages();
    return got.length >= n && got;
  }, ms);
}

/** Waits until the plain client printed the notice `text` (without `* `). */
export function waitPlainNotice(plain, text, ms = WAIT_MS) {
  return until(`"* ${text}" on the plain client`, () => plain.notices().includes(text), ms);
}
