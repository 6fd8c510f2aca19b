// The page: lobby (name, room, password, capacity, room list) and chat (messages, composer,
// Leave). All protocol work is in session.js; this file turns its events into DOM nodes.
//
// Everything a peer sends is put on the page with textContent (never innerHTML), so a
// message like `<img src=x onerror=alert(1)>` is shown as those characters.
// The pure helpers are exported for tests; the page starts only where there is a document.

import { MAX_MESSAGE, MAX_NAME, MAX_PASSWORD, Status, byteLength, checkText } from './protocol.js';
import { Session, defaultUrl } from './session.js';
import { MAX_PLAINTEXT, RoomCrypto } from './e2e.js';

/** A protocol status in words, for the room `room` and user `user` of the request. */
export function statusText(status, room = '', user = '') {
  switch (status) {
    case Status.ROOM_EXISTS:
      return `room '${room}' already exists`;
    case Status.ROOM_NOT_FOUND:
      return `room '${room}' does not exist`;
    case Status.ROOM_FULL:
      return `room '${room}' is full`;
    case Status.BAD_PASSWORD:
      return `wrong password for room '${room}'`;
    case Status.NAME_TAKEN:
      return `the name '${user}' is already taken in room '${room}'`;
    case Status.INVALID_REQUEST:
      return 'the server found the request invalid';
    case Status.SERVER_FULL:
      return 'the server is full right now; try again later';
    case Status.UNAUTHORIZED:
      return 'not allowed: this page is no longer a member of that room';
    case Status.TOO_MANY_REQUESTS:
      return 'too many failed attempts from this address; wait a minute and try again';
    case null:
    case undefined:
      return 'could not reach the server';
    default:
      return `the server answered status ${status}`;
  }
}

/** A stable hue (0..359) for a user name, so each name keeps its colour. */
export function nameHue(name) {
  // FNV-1a over the UTF-16 code units: cheap, stable across sessions and browsers.
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % 360;
}

/**
 * Checks the entry form. Returns { ok: true, room, user, password, capacity } or
 * { ok: false, field, error } naming the field and the problem in words.
 */
export function checkEntry({ name, room, password, capacity }, creating) {
  const user = checkText(name, 1, MAX_NAME);
  if (!user.ok) return { ok: false, field: 'name', error: `Your name ${user.error}.` };
  const r = checkText(room, 1, MAX_NAME);
  if (!r.ok) return { ok: false, field: 'room', error: `The room name ${r.error}.` };
  if (byteLength(password) > MAX_PASSWORD) {
    return { ok: false, field: 'password', error: `The password is ${byteLength(password)} bytes, at most ${MAX_PASSWORD} allowed.` };
  }
  let cap = 0;
  if (creating) {
    const text = String(capacity ?? '').trim();
    cap = text === '' ? 0 : Number(text);
    if (!Number.isInteger(cap) || cap < 0 || cap > 65535) {
      return { ok: false, field: 'capacity', error: 'Capacity is a whole number from 0 to 65535.' };
    }
  }
  return { ok: true, user: name, room, password, capacity: cap };
}

/** The message byte counter and whether the message may be sent. */
export function messageCheck(text) {
  const bytes = byteLength(text);
  if (text === '') return { ok: false, bytes, error: null };
  const c = checkText(text, 1, MAX_MESSAGE);
  return { ok: c.ok, bytes, error: c.ok ? null : `The message ${c.error}.` };
}

// --- the page ---------------------------------------------------------------------

/** Messages and notices kept on the page: a long-lived tab does not grow without end. */
const MAX_SHOWN = 5000;

function start() {
  const $ = (id) => document.getElementById(id);
  const el = {
    connection: $('connection'),
    lobby: $('lobby'),
    entry: $('entry'),
    name: $('name'),
    room: $('room'),
    password: $('password'),
    capacity: $('capacity'),
    join: $('join'),
    create: $('create'),
    refresh: $('refresh'),
    rooms: $('rooms'),
    roomsEmpty: $('rooms-empty'),
    chat: $('chat'),
    chatRoom: $('chat-room'),
    chatMe: $('chat-me'),
    leave: $('leave'),
    messages: $('messages'),
    composer: $('composer'),
    message: $('message'),
    send: $('send'),
    bytes: $('message-bytes'),
    status: $('status'),
    e2e: $('e2e'),
    passphrase: $('passphrase'),
    chatE2e: $('chat-e2e'),
  };

  let current = null; // { room, user, isHost } while in a room
  let busy = false;
  // End-to-end encryption (the functions are in their own block below): the room's
  // RoomCrypto while in an encrypted room, the chains that keep sealing and opening in
  // order, and own envelopes → their text, for the "sending…" line.
  let e2e = null;
  let e2eQueue = Promise.resolve();
  let e2eSendQueue = Promise.resolve();
  const e2eOwn = new Map();

  const session = new Session({ url: defaultUrl(window.location), onEvent: e2eRoute });

  try {
    el.name.value = window.localStorage.getItem('ocm.name') ?? '';
  } catch {
    // storage may be off; the name is simply not remembered
  }

  function setStatus(text, isError = false) {
    el.status.textContent = text;
    el.status.classList.toggle('error', isError);
  }

  function timeNow() {
    return new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function nearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }

  function scrollIfFollowing(following) {
    if (following) el.messages.scrollTop = el.messages.scrollHeight;
  }

  /** Inserts a node before the first pending own message, so those stay at the bottom. */
  function place(node) {
    const following = nearBottom();
    const firstPending = el.messages.querySelector('li.pending');
    el.messages.insertBefore(node, firstPending);
    while (el.messages.childElementCount > MAX_SHOWN && el.messages.firstElementChild !== firstPending) {
      el.messages.firstElementChild.remove();
    }
    scrollIfFollowing(following);
  }

  function messageNode({ seq = null, user, text, mine, history = false, e2eMark = null }) {
    const li = document.createElement('li');
    li.className = 'msg';
    li.dataset.testid = 'message';
    if (mine) li.classList.add('mine');
    if (history) li.classList.add('history');
    if (seq !== null) li.dataset.seq = String(seq);
    li.dataset.user = user;
    const time = document.createElement('time');
    time.className = 'time';
    time.textContent = timeNow();
    if (history) time.title = 'from the room history';
    const who = document.createElement('span');
    who.className = 'user';
    who.style.setProperty('--hue', String(nameHue(user)));
    who.textContent = mine ? `${user} (you)` : user;
    const body = document.createElement('span');
    body.className = 'text';
    body.dataset.testid = 'message-text';
    body.textContent = text;
    li.append(time, who, body);
    if (e2eMark) e2eDecorate(li, who, e2eMark);
    return li;
  }

  function notice(text, warn = false) {
    const li = document.createElement('li');
    li.className = warn ? 'notice warn' : 'notice';
    li.dataset.testid = 'notice';
    li.textContent = text;
    place(li);
    setStatus(text, warn);
  }

  function setConnection(state, text) {
    el.connection.dataset.state = state;
    el.connection.textContent = text;
  }

  function showChat(room, user, isHost) {
    current = { room, user, isHost };
    el.chatE2e.hidden = e2e === null;
    el.messages.replaceChildren();
    el.chatRoom.textContent = room;
    el.chatMe.textContent = isHost ? `you are ${user} (host)` : `you are ${user}`;
    el.leave.title = isHost ? 'Leave and close the room' : 'Leave the room';
    el.lobby.hidden = true;
    el.chat.hidden = false;
    el.message.value = '';
    updateBytes();
    el.message.focus();
  }

  function showLobby() {
    current = null;
    e2eLeave();
    el.chat.hidden = true;
    el.lobby.hidden = false;
    el.room.focus();
    refreshRooms();
  }

  function onEvent(e) {
    switch (e.type) {
      case 'connection':
        if (e.open) setConnection('online', 'online');
        else setConnection(session.inRoom ? 'reconnecting' : 'offline', session.inRoom ? 'reconnecting…' : 'offline');
        return;
      case 'entered':
        showChat(e.room, e.user, e.isHost);
        notice(e.isHost ? `You created room '${e.room}' as ${e.user}.` : `You joined room '${e.room}' as ${e.user}.`);
        return;
      case 'message':
        if (e.clientSeq !== null) {
          el.messages.querySelector(`li.pending[data-client-seq="${e.clientSeq}"]`)?.remove();
        }
        place(messageNode(e));
        return;
      case 'pending': {
        const li = messageNode({ user: current?.user ?? '', text: e.text, mine: true });
        li.classList.add('pending');
        li.dataset.clientSeq = String(e.clientSeq);
        const state = document.createElement('span');
        state.className = 'state';
        state.textContent = 'sending…';
        li.append(state);
        const following = nearBottom();
        el.messages.append(li);
        scrollIfFollowing(following);
        return;
      }
      case 'failed': {
        const li = el.messages.querySelector(`li.pending[data-client-seq="${e.clientSeq}"]`);
        if (!li) return;
        li.classList.replace('pending', 'failed');
        li.querySelector('.state').textContent = 'not sent';
        return;
      }
      case 'joined':
        if (!e.mine || e.history) notice(`${e.user} joined`);
        return;
      case 'left':
        notice(`${e.user} left`);
        return;
      case 'timedOut':
        notice(e.mine && !e.history ? 'you timed out' : `${e.user} timed out`, e.mine && !e.history);
        return;
      case 'closed':
        notice(`room closed: ${e.reason}`, !e.history);
        return;
      case 'gone':
        notice(
          e.history
            ? `${e.count} earlier ${e.count === 1 ? 'event is' : 'events are'} no longer held by the server`
            : `${e.count} ${e.count === 1 ? 'message' : 'messages'} could not be recovered`,
          !e.history,
        );
        return;
      case 'rateLimited':
        notice(`slow down: the server dropped a message (${e.text})`, true);
        return;
      case 'reconnecting':
        setConnection('reconnecting', 'reconnecting…');
        notice('connection lost, reconnecting…', true);
        return;
      case 'rejoining':
        notice(`rejoining the room (${e.reason})…`, true);
        return;
      case 'reconnected': {
        const n = e.recovered;
        const what = `${n} ${n === 1 ? 'message' : 'messages'} recovered`;
        notice(e.rejoined ? `rejoined, ${what}` : `reconnected, ${what}`);
        return;
      }
      case 'ended':
        if (e.reason === 'left') {
          setStatus(`You left room '${current?.room ?? ''}'.`);
        } else if (e.reason === 'closed') {
          el.message.disabled = true;
          el.send.disabled = true;
          el.leave.textContent = 'Back to rooms';
        } else {
          notice(`could not get back into the room: ${statusText(e.status, current?.room, current?.user)}`, true);
          el.message.disabled = true;
          el.send.disabled = true;
          el.leave.textContent = 'Back to rooms';
        }
        return;
      default:
    }
  }

  function fieldError(field, error) {
    for (const f of ['name', 'room', 'password', 'capacity']) el[f].removeAttribute('aria-invalid');
    if (field) {
      el[field].setAttribute('aria-invalid', 'true');
      el[field].focus();
    }
    setStatus(error, true);
  }

  async function enter(creating) {
    if (busy) return;
    const checked = checkEntry(
      { name: el.name.value, room: el.room.value, password: el.password.value, capacity: el.capacity.value },
      creating,
    );
    if (!checked.ok) return fieldError(checked.field, checked.error);
    fieldError(null, '');
    busy = true;
    el.join.disabled = el.create.disabled = true;
    if (!(await e2eEnter(checked.room))) {
      busy = false;
      el.join.disabled = el.create.disabled = false;
      return;
    }
    setStatus(creating ? 'Creating…' : 'Joining…');
    try {
      window.localStorage.setItem('ocm.name', checked.user);
    } catch {
      // not remembered
    }
    el.message.disabled = false;
    el.send.disabled = false;
    el.leave.textContent = 'Leave';
    const fields = { room: checked.room, user: checked.user, password: checked.password };
    const result = creating
      ? await session.create({ ...fields, capacity: checked.capacity })
      : await session.join(fields);
    busy = false;
    el.join.disabled = el.create.disabled = false;
    if (!result.ok) {
      e2eLeave();
      const field = { [Status.ROOM_EXISTS]: 'room', [Status.ROOM_NOT_FOUND]: 'room', [Status.BAD_PASSWORD]: 'password', [Status.NAME_TAKEN]: 'name' }[result.status] ?? null;
      const text = statusText(result.status, checked.room, checked.user);
      fieldError(field, text.charAt(0).toUpperCase() + text.slice(1) + '.');
      if (result.status === Status.ROOM_NOT_FOUND || result.status === Status.ROOM_EXISTS) refreshRooms();
    }
  }

  async function refreshRooms() {
    el.refresh.disabled = true;
    const result = await session.list();
    el.refresh.disabled = false;
    if (!result.ok) {
      if (!current) setStatus(`Room list: ${statusText(result.status)}.`, true);
      return;
    }
    el.rooms.replaceChildren(
      ...result.rooms.map((r) => {
        const li = document.createElement('li');
        const b = document.createElement('button');
        b.type = 'button';
        b.dataset.room = r.name;
        b.dataset.testid = 'room';
        const name = document.createElement('span');
        name.className = 'room-name';
        name.textContent = r.name;
        const meta = document.createElement('span');
        meta.className = 'room-meta';
        meta.textContent = `${r.members}/${r.capacity}${r.hasPassword ? ' · password' : ''}`;
        b.append(name, meta);
        b.setAttribute('aria-label', `${r.name}, ${r.members} of ${r.capacity} members${r.hasPassword ? ', password protected' : ''}`);
        b.addEventListener('click', () => {
          el.room.value = r.name;
          (r.hasPassword ? el.password : el.name.value ? el.join : el.name).focus();
        });
        li.append(b);
        return li;
      }),
    );
    el.roomsEmpty.hidden = result.rooms.length > 0;
  }

  function updateBytes() {
    const c = messageCheck(el.message.value);
    const limit = e2e ? MAX_PLAINTEXT : MAX_MESSAGE;
    el.bytes.textContent = `${c.bytes} / ${limit} bytes`;
    el.bytes.classList.toggle('over', c.bytes > limit);
    el.message.setAttribute('aria-invalid', c.error ? 'true' : 'false');
    return c;
  }

  // --- end-to-end encrypted rooms (PROTOCOL.md §7, e2e.js) ------------------------
  // While in an encrypted room, `e2e` is its RoomCrypto: own messages are sealed before
  // session.send (once: a retransmission resends the same envelope), and every event goes
  // through one promise chain so that opening envelopes (async WebCrypto) keeps their order.

  el.e2e.addEventListener('change', () => {
    el.passphrase.disabled = !el.e2e.checked;
    if (el.e2e.checked) el.passphrase.focus();
  });
  el.passphrase.addEventListener('input', () => el.passphrase.removeAttribute('aria-invalid'));

  /** Derives the room key when the box is ticked. False (with the reason shown) to stop. */
  async function e2eEnter(room) {
    e2eLeave();
    if (!el.e2e.checked) return true;
    const passphrase = el.passphrase.value;
    if (passphrase === '') {
      el.passphrase.setAttribute('aria-invalid', 'true');
      el.passphrase.focus();
      setStatus('An encrypted room needs a passphrase.', true);
      return false;
    }
    el.passphrase.removeAttribute('aria-invalid');
    if (!globalThis.crypto?.subtle) {
      setStatus('Encrypted rooms need HTTPS (or localhost): this page has no WebCrypto here.', true);
      return false;
    }
    setStatus('deriving key…');
    try {
      e2e = await RoomCrypto.fromPassphrase(passphrase, room);
    } catch (err) {
      setStatus(`Could not derive the room key: ${err?.message ?? err}.`, true);
      return false;
    }
    return true;
  }

  function e2eLeave() {
    e2e = null;
    e2eOwn.clear();
  }

  function e2eSend(text) {
    if (byteLength(text) > MAX_PLAINTEXT) {
      setStatus(`An encrypted message holds at most ${MAX_PLAINTEXT} bytes.`, true);
      return;
    }
    const crypto = e2e;
    const user = current?.user ?? '';
    el.message.value = '';
    updateBytes();
    el.message.focus();
    e2eSendQueue = e2eSendQueue.then(async () => {
      let envelope;
      try {
        envelope = await crypto.seal(text, user);
      } catch (err) {
        setStatus(err?.message ?? String(err), true);
        return;
      }
      if (crypto !== e2e) return; // left the room meanwhile
      e2eOwn.set(envelope, text);
      const sent = session.send(envelope);
      if (!sent.ok) {
        e2eOwn.delete(envelope);
        setStatus(sent.error, true);
      }
    });
  }

  function e2eRoute(e) {
    if (!e2e) return onEvent(e);
    const crypto = e2e;
    e2eQueue = e2eQueue
      .then(() => e2eShow(crypto, e))
      .catch((err) => console.error('e2e', err));
  }

  async function e2eShow(crypto, e) {
    if (e.type === 'pending') return onEvent({ ...e, text: e2eOwn.get(e.text) ?? e.text });
    if (e.type !== 'message') return onEvent(e);
    const shown = await crypto.open(e.text, e.user);
    if (crypto !== e2e) return; // left the room meanwhile
    if (e.mine) e2eOwn.delete(e.text);
    switch (shown.shown) {
      case 'encrypted':
        return onEvent({ ...e, text: shown.text, e2eMark: 'encrypted' });
      case 'not-encrypted':
        return onEvent({ ...e, e2eMark: 'plain' });
      case 'replay':
        return undefined; // dropped, counted in crypto.replays
      default: {
        if (e.clientSeq !== null) {
          el.messages.querySelector(`li.pending[data-client-seq="${e.clientSeq}"]`)?.remove();
        }
        const li = document.createElement('li');
        li.className = 'notice warn';
        li.dataset.testid = 'undecryptable';
        li.dataset.user = e.user;
        li.textContent = `${e.user}: ${shown.message}`;
        place(li);
        return undefined;
      }
    }
  }

  /** The lock on an encrypted message, or the "not encrypted" mark on a plain one. */
  function e2eDecorate(li, who, mark) {
    li.dataset.e2e = mark;
    const span = document.createElement('span');
    if (mark === 'encrypted') {
      span.className = 'e2e-lock';
      span.textContent = ' 🔒';
      span.title = 'end-to-end encrypted';
      span.setAttribute('aria-label', 'encrypted');
      who.append(span);
    } else {
      span.className = 'state e2e-plain';
      span.dataset.testid = 'not-encrypted';
      span.textContent = 'not encrypted';
      li.append(span);
    }
  }

  el.entry.addEventListener('submit', (ev) => {
    ev.preventDefault();
    enter(false);
  });
  el.create.addEventListener('click', () => enter(true));
  el.refresh.addEventListener('click', () => refreshRooms());
  el.message.addEventListener('input', updateBytes);
  // A reader at the bottom stays at the bottom when the pane changes size (phone rotated,
  // keyboard shown); one who scrolled up to read stays where they are.
  let following = true;
  el.messages.addEventListener('scroll', () => {
    following = nearBottom();
  });
  if (typeof ResizeObserver === 'function') {
    new ResizeObserver(() => scrollIfFollowing(following)).observe(el.messages);
  }
  el.message.addEventListener('keydown', (ev) => {
    // Enter that confirms an IME conversion (Japanese input) is not "send".
    if (ev.key === 'Enter' && (ev.isComposing || ev.keyCode === 229)) ev.preventDefault();
  });
  el.composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const c = updateBytes();
    if (!c.ok) {
      if (c.error) setStatus(c.error, true);
      return;
    }
    if (e2e) {
      e2eSend(el.message.value);
      return;
    }
    const sent = session.send(el.message.value);
    if (!sent.ok) {
      setStatus(sent.error, true);
      return;
    }
    el.message.value = '';
    updateBytes();
    el.message.focus();
  });
  el.leave.addEventListener('click', async () => {
    if (session.inRoom) {
      el.leave.disabled = true;
      const r = await session.leave();
      el.leave.disabled = false;
      if (r.status === null) setStatus('Left (the server could not be told; the room lets you go after its idle timeout).');
    }
    showLobby();
  });

  setConnection('offline', 'offline');
  refreshRooms();
  (el.name.value ? el.room : el.name).focus();
}

if (typeof document !== 'undefined') start();
