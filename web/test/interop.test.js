// The JavaScript codec against the Rust server: two independent implementations of
// PROTOCOL.md must agree on real bytes over loopback TCP and UDP (the version 1 parts; the
// WebSocket tests come with the server's listener). Uses target/debug/ocm-server (or
// $OCM_SERVER) and skips when it has not been built.

import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { createSocket } from 'node:dgram';
import { fileURLToPath } from 'node:url';
import {
  Kind,
  Op,
  State,
  Status,
  decodeJoinComplete,
  decodeListComplete,
  decodeServerDatagram,
  decodeStatus,
  encodeChat,
  encodeCreate,
  encodeJoin,
  encodeLeave,
  encodeList,
  readFrame,
} from '../protocol.js';

const SERVER = process.env.OCM_SERVER ?? fileURLToPath(new URL('../../target/debug/ocm-server', import.meta.url));
const HAVE_SERVER = existsSync(SERVER);
/** Longest wait for any one reply on loopback before the test fails (not hangs). */
const REPLY_MS = 3000;

function startServer() {
  const child = spawn(SERVER, ['--port', '0', '--bind', '127.0.0.1', '--idle-timeout', '5'], { stdio: ['ignore', 'pipe', 'ignore'] });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('no listening line'));
    }, 10000);
    child.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n')[0];
      if (!out.includes('\n')) return;
      clearTimeout(timer);
      const tcp = /tcp=127\.0\.0\.1:(\d+)/.exec(line);
      const udp = /udp=127\.0\.0\.1:(\d+)/.exec(line);
      if (!tcp || !udp) {
        child.kill('SIGKILL');
        return reject(new Error(`bad listening line: ${line}`));
      }
      resolve({ child, tcp: Number(tcp[1]), udp: Number(udp[1]) });
    });
  });
}

/** A TCRP connection that reads whole frames with readFrame (bytes may come split). */
async function tcrp(port) {
  const sock = connect(port, '127.0.0.1');
  await new Promise((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  let buf = new Uint8Array(0);
  const waiters = [];
  const frames = [];
  const pump = () => {
    for (;;) {
      const r = readFrame(buf);
      if (!r.ok) {
        if (!r.incomplete) throw new Error(r.error);
        return;
      }
      buf = buf.slice(r.used);
      frames.push(r.frame);
    }
  };
  sock.on('data', (d) => {
    buf = new Uint8Array([...buf, ...d]);
    pump();
    while (frames.length && waiters.length) waiters.shift()(frames.shift());
  });
  const next = () =>
    new Promise((resolve, reject) => {
      if (frames.length) return resolve(frames.shift());
      const t = setTimeout(() => reject(new Error('no frame')), REPLY_MS);
      waiters.push((f) => {
        clearTimeout(t);
        resolve(f);
      });
    });
  return {
    async ask(frame) {
      sock.write(frame);
      const response = await next();
      assert.equal(response.state, State.RESPONSE);
      const { status } = decodeStatus(response.payload);
      const completes = status === Status.OK && [Op.CREATE, Op.JOIN, Op.LIST].includes(response.op);
      return { response, status, complete: completes ? await next() : null };
    },
    close: () => sock.destroy(),
  };
}

async function udp(port) {
  const sock = createSocket('udp4');
  await new Promise((resolve) => sock.bind(0, '127.0.0.1', resolve));
  sock.connect(port, '127.0.0.1');
  await new Promise((resolve) => sock.once('connect', resolve));
  const events = [];
  const waiters = [];
  sock.on('message', (m) => {
    const d = decodeServerDatagram(new Uint8Array(m));
    assert.equal(d.error, null);
    events.push(...d.events);
    for (const w of waiters.splice(0)) w();
  });
  return {
    send: (bytes) => sock.send(bytes),
    /** Waits until an event matching `pred` has arrived; returns it. */
    async until(pred) {
      const deadline = Date.now() + REPLY_MS;
      for (;;) {
        const found = events.find(pred);
        if (found) return found;
        if (Date.now() > deadline) throw new Error(`no such event; have ${JSON.stringify(events.map((e) => [e.kind, e.seq, e.user]))}`);
        await new Promise((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 50);
        });
      }
    },
    events,
    close: () => sock.close(),
  };
}

test('the JS codec and ocm-server agree over loopback (v1 exchange)', { skip: !HAVE_SERVER && `no server binary at ${SERVER}` }, async () => {
  const server = await startServer();
  try {
    const host = await tcrp(server.tcp);
    const created = await host.ask(encodeCreate({ room: 'ロビー', user: 'アリス', password: 'pw', capacity: 3 }));
    assert.equal(created.status, Status.OK);
    const hostJoin = decodeJoinComplete(created.complete.payload);
    assert.ok(hostJoin.ok);
    assert.equal(hostJoin.udpPort, server.udp);
    assert.equal(hostJoin.idleTimeout, 5);
    for (const b of hostJoin.token) assert.ok(b >= 0x21 && b <= 0x7e);

    assert.equal((await host.ask(encodeCreate({ room: 'ロビー', user: 'x' }))).status, Status.ROOM_EXISTS);
    assert.equal((await host.ask(encodeJoin({ room: 'ロビー', user: 'bob', password: 'no' }))).status, Status.BAD_PASSWORD);
    assert.equal((await host.ask(encodeJoin({ room: 'ロビー', user: 'アリス', password: 'pw' }))).status, Status.NAME_TAKEN);
    assert.equal((await host.ask(encodeJoin({ room: 'nope', user: 'bob' }))).status, Status.ROOM_NOT_FOUND);

    const joined = await host.ask(encodeJoin({ room: 'ロビー', user: 'bob', password: 'pw' }));
    assert.equal(joined.status, Status.OK);
    const bobJoin = decodeJoinComplete(joined.complete.payload);

    const list = await host.ask(encodeList());
    assert.equal(list.status, Status.OK);
    assert.deepEqual(decodeListComplete(list.complete.payload), {
      ok: true,
      rooms: [{ name: 'ロビー', nameValid: true, members: 2, capacity: 3, hasPassword: true }],
    });

    const a = await udp(server.udp);
    const b = await udp(server.udp);
    a.send(encodeChat({ room: 'ロビー', token: hostJoin.token }));
    await a.until((e) => e.kind === Kind.JOINED && e.user === 'アリス');
    b.send(encodeChat({ room: 'ロビー', token: bobJoin.token }));
    const bobJoined = await a.until((e) => e.kind === Kind.JOINED && e.user === 'bob');
    a.send(encodeChat({ room: 'ロビー', token: hostJoin.token, message: 'こんにちは 👋 <img src=x onerror=alert(1)>' }));
    const msg = await b.until((e) => e.kind === Kind.MESSAGE);
    assert.equal(msg.user, 'アリス');
    assert.equal(msg.text, 'こんにちは 👋 <img src=x onerror=alert(1)>');
    assert.equal(msg.seq, bobJoined.seq + 1);

    // the host leaves: bob sees LEFT then ROOM_CLOSED "host left"
    assert.equal((await host.ask(encodeLeave({ room: 'ロビー', token: hostJoin.token }))).status, Status.OK);
    const closed = await b.until((e) => e.kind === Kind.ROOM_CLOSED);
    assert.equal(closed.text, 'host left');
    assert.equal(closed.user, '');
    const left = b.events.find((e) => e.kind === Kind.LEFT);
    assert.deepEqual([left.user, left.seq + 1], ['アリス', closed.seq]);

    // a malformed header (State 1 on a request) is answered 6 with an empty room, then closed
    const bad = encodeList();
    bad[2] = State.RESPONSE;
    assert.equal((await host.ask(bad)).status, Status.INVALID_REQUEST);
    host.close();
    a.close();
    b.close();
  } finally {
    server.child.kill('SIGTERM');
  }
});
