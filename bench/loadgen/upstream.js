// The bench's upstream: numbered, timestamped ~120-byte events at a set rate.
//
//   node upstream.js serve PORT      a WebSocket server (what relayhouse and the naive relay connect to);
//                                    every event goes to every connected client
//   node upstream.js publish         no server: `connect` opens a WebSocket publisher (nginx + nchan)
//
// Control is JSON lines on stdin, answers are JSON lines on stdout:
//   {"cmd":"connect","url":"ws://127.0.0.1:P/pub?ch=run3"}   (publish mode) -> {"connected":true}
//   {"cmd":"run","base":B,"rate":R,"duration_s":D,"per_frame":K,"topics":T}   (T symbols, default 20)
//        -> sends round(R*D) events numbered B.. at R events/s, K per frame (a JSON array when K > 1)
//        -> {"done":true,"sent":N,"frames":F,"elapsed_s":..,"max_lag_ms":..,"max_buffered":..}
//   {"cmd":"quit"}
//
// Each event: {"ev":"T","sym":"S07","n":B+i,"t":<monotonic ms>,"w":<wall-clock ms>,"p":..,"s":..,"x":"pad"}
// `t` is CLOCK_MONOTONIC (process.hrtime), which every process on the machine shares, so the
// subscriber's receive time minus `t` is the end-to-end latency with no clock skew; `w` is the wall
// clock, comparable with the relay's own receive stamp (`ts`, integer ms).
'use strict';
const { WebSocketServer, WebSocket } = require('ws');
const readline = require('readline');

const mode = process.argv[2];
const port = Number(process.argv[3] || 0);
const peers = new Set();
let publisher = null;
let running = false;

const { monoMs } = require('./clock'); // CLOCK_MONOTONIC in ms, the same clock in every process
const wallMs = () => performance.timeOrigin + performance.now();
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const SYMBOLS = Array.from({ length: 100 }, (_, i) => 'S' + String(i).padStart(2, '0'));
const PAD = 'x'.repeat(12);
let nTopics = 20; // a run's `topics`: event n has symbol S<n % topics> (topic T.S<..>)

function event(n) {
  // ~120 bytes with a 7-digit n; the same shape as a Polygon trade plus the bench fields
  return '{"ev":"T","sym":"' + SYMBOLS[n % nTopics] + '","n":' + n + ',"t":' + monoMs().toFixed(3) +
    ',"w":' + wallMs().toFixed(3) + ',"p":' + (100 + (n % 997) / 100).toFixed(2) + ',"s":' + (n % 500 + 1) +
    ',"x":"' + PAD + '"}';
}

function sendAll(text) {
  if (publisher) {
    publisher.send(text);
    return publisher.bufferedAmount;
  }
  let most = 0;
  for (const ws of peers) {
    ws.send(text);
    if (ws.bufferedAmount > most) most = ws.bufferedAmount;
  }
  return most;
}

function run({ base, rate, duration_s, per_frame, topics }) {
  nTopics = Math.min(SYMBOLS.length, topics || 20);
  const total = Math.round(rate * duration_s);
  const k = Math.max(1, per_frame || 1);
  let sent = 0, frames = 0, maxLag = 0, maxBuffered = 0;
  running = true;
  const t0 = monoMs();
  const tick = () => {
    const now = monoMs();
    const due = Math.min(total, Math.floor((now - t0) * rate / 1000) + 1);
    if (due > sent) {
      // how late the oldest due event is: the generator's own lag (must stay small)
      const lag = now - (t0 + (sent * 1000) / rate);
      if (lag > maxLag) maxLag = lag;
    }
    while (sent < due) {
      const m = Math.min(k, due - sent);
      let text;
      if (m === 1 && k === 1) {
        text = event(base + sent);
      } else {
        const parts = [];
        for (let i = 0; i < m; i++) parts.push(event(base + sent + i));
        text = '[' + parts.join(',') + ']';
      }
      const buffered = sendAll(text);
      if (buffered > maxBuffered) maxBuffered = buffered;
      sent += m;
      frames += 1;
    }
    if (sent < total) {
      setTimeout(tick, 1);
    } else {
      running = false;
      say({ done: true, sent, frames, elapsed_s: (monoMs() - t0) / 1000, max_lag_ms: maxLag,
            max_buffered: maxBuffered, peers: publisher ? 1 : peers.size });
    }
  };
  tick();
}

function connectPublisher(url) {
  if (publisher) publisher.terminate();
  publisher = new WebSocket(url, { perMessageDeflate: false });
  publisher.on('open', () => say({ connected: true }));
  publisher.on('message', () => {});
  publisher.on('error', (err) => say({ error: String(err) }));
  publisher.on('close', (code) => { if (!running) return; say({ publisher_closed: code }); });
}

if (mode === 'serve') {
  const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });
  wss.on('listening', () => say({ ready: true, port: wss.address().port }));
  wss.on('connection', (ws) => {
    peers.add(ws);
    say({ peers: peers.size });
    ws.on('close', () => { peers.delete(ws); say({ peers: peers.size }); });
    ws.on('error', () => {});
    ws.on('message', () => {});
  });
} else if (mode === 'publish') {
  say({ ready: true });
} else {
  process.stderr.write('usage: node upstream.js serve PORT | publish\n');
  process.exit(2);
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  const msg = JSON.parse(line);
  if (msg.cmd === 'run') run(msg);
  else if (msg.cmd === 'connect') connectPublisher(msg.url);
  else if (msg.cmd === 'peers') say({ peers: peers.size });
  else if (msg.cmd === 'quit') process.exit(0);
}).on('close', () => process.exit(0));
