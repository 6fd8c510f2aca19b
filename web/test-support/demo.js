// The real page (../index.html, ../app.js) against the fake server of harness.js running in
// the browser itself, with real time: for looking at the page and smoke-testing it in
// headless Chromium before ocm-server serves it. Not part of what the server embeds.
// window.ocmDemo.server is the FakeServer (say, addRemote, timeOut, sockets[i].cut()).

import { FakeServer } from './harness.js';

const clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id),
};
const server = new FakeServer(clock);
const factory = server.socketFactory();
// The page calls `new WebSocket(url)`; a constructor that returns an object yields it.
window.WebSocket = function FakeWebSocket(url) {
  return factory(url);
};
window.ocmDemo = { server };

const html = await (await fetch('../index.html')).text();
const page = new DOMParser().parseFromString(html, 'text/html');
const style = document.createElement('link');
style.rel = 'stylesheet';
style.href = '../style.css';
document.head.append(style);
document.body.replaceWith(document.adoptNode(page.body));
await import('../app.js');
window.ocmDemo.ready = true;
