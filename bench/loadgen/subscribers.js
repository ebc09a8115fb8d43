// N WebSocket subscribers in one process: every frame is parsed, every event checked and timed.
//
//   node subscribers.js '{"url":"ws://127.0.0.1:P/ws?snapshot=0","clients":1000,"deflate":false,"slow":0}'
//   (optional: "memo": false parses byte-identical frames once per client instead of once per process;
//    "hist": true adds the latency histograms to the report, for merging several processes' reports;
//    "rated": true, "topics": T for max_hz clients: per-topic rates and newest values in the report)
//
// `deflate`: offer permessage-deflate as browsers do (ws's default) or not at all.
// `first_frame`: a client counts as connected once its first frame came (relayhouse's snapshot,
// sent once the client is subscribed) rather than at the handshake.
// `slow`: how many of the clients stop reading right after they connect (their TCP receive
// window fills and the server must cope); they are left out of the latency figures.
//
// Control is JSON lines on stdin, answers are JSON lines on stdout:
//   (on start)                          -> {"connected":n,"failed":k,"extensions":{...},"connect_s":..}
//   {"cmd":"arm","base":B,"count":C}    every client must now receive events B..B+C-1, each once, in order
//   {"cmd":"quiet","quiet_ms":Q,"max_ms":M} -> {"quiet":true|false,"complete":..,"waited_ms":..} once every
//                                       reading client has every event, or no frame came for Q ms, or after M ms
//   {"cmd":"report"}                    -> {"report":{...}}
//   {"cmd":"quit"}
//
// Frames understood: relayhouse's {"type":"events","events":[envelope...]} (and its snapshot),
// the naive relay's one envelope {"seq":..,"data":{...}} per frame, nchan's bare event.
// Latency = receive time (CLOCK_MONOTONIC) - the upstream's send stamp `t` (same clock).
'use strict';
const WebSocket = require('ws');
const readline = require('readline');

const cfg = JSON.parse(process.argv[2]);
const N = cfg.clients;
const SLOW = cfg.slow || 0;
const { monoMs } = require('./clock'); // CLOCK_MONOTONIC in ms, the same clock in every process
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// latency histogram: 0.1 ms buckets up to 120 s (the last bucket holds everything beyond)
const BUCKETS = 1200000;
let hist = new Uint32Array(BUCKETS);
let relayHist = new Uint32Array(BUCKETS); // upstream send (wall clock) -> relay receive stamp `ts`
let latMax = 0, relayMax = 0, latCount = 0, relayCount = 0;
let base = -1, count = 0;
let lastFrameAt = monoMs(), firstSendT = Infinity, lastRecvT = 0;
let uniqueFast = 0; // events received (once) by the clients that read
let frames = 0, foreign = 0, parseErrors = 0, snapshots = 0, otherFrames = 0;
const clients = [];

// `rated` (contract §12 max_hz clients): events are thinned by design, so what counts is, per
// client and topic, how many came within any 1 s and whether the newest value of each topic came.
const RATED = !!cfg.rated;
const TOPICS = cfg.topics || 20;
let slowFrames = { conflated: 0, live: 0 };

function record(c, ev, recvT) {
  const n = ev.n;
  if (typeof n !== 'number' || n < base || n >= base + count) { foreign += 1; return; }
  const i = n - base;
  if (RATED) {
    const r = n % TOPICS;
    (c.times[r] || (c.times[r] = [])).push(recvT);
    if (!(n < c.lastN[r])) c.lastN[r] = n;
  }
  if (c.seen[i]) c.dup += 1; else { c.seen[i] = 1; c.got += 1; if (!c.slow) uniqueFast += 1; }
  if (n < c.maxN) c.reorder += 1; else c.maxN = n;
  if (c.slow) return;
  const lat = recvT - ev.t;
  if (ev.t < firstSendT) firstSendT = ev.t;
  let b = Math.floor(lat * 10);
  if (b < 0) b = 0; else if (b >= BUCKETS) b = BUCKETS - 1;
  hist[b] += 1;
  latCount += 1;
  if (lat > latMax) latMax = lat;
}

// Every client's frame is parsed, but a frame byte-identical to one of the last few (a broadcast
// gives every client the same bytes) reuses that frame's JSON.parse: it is a pure function of
// the bytes, compared in full (memcmp) before reuse, so the checks below, made per client on
// the parsed value, are exactly those of a parse per frame. Without this the one subscriber
// process, not the system under test, would be the bottleneck (`"memo": false` turns it off).
const MEMO = cfg.memo !== false;
const RING = 16;
const ringBuf = new Array(RING).fill(null);
const ringVal = new Array(RING).fill(null);
let ringNext = 0;
function parse(buf) {
  if (!MEMO) return JSON.parse(buf.toString());
  for (let k = 1; k <= RING; k++) {
    const i = (ringNext - k + RING) % RING;
    const b = ringBuf[i];
    if (b !== null && b.length === buf.length && b.equals(buf)) return ringVal[i];
  }
  const value = JSON.parse(buf.toString());
  ringBuf[ringNext] = buf;
  ringVal[ringNext] = value;
  ringNext = (ringNext + 1) % RING;
  return value;
}

function onFrame(c, data) {
  const recvT = monoMs();
  lastFrameAt = recvT;
  frames += 1;
  c.frames += 1;
  let msg;
  try { msg = parse(data); } catch (e) { parseErrors += 1; return; }
  if (base < 0) return;
  if (msg.type === 'events') {
    for (const env of msg.events) {
      record(c, env.data, recvT);
      if (!c.slow && env.ts !== undefined && env.data.w !== undefined) relayStamp(env.ts - env.data.w);
    }
  } else if (msg.type === 'snapshot') {
    snapshots += 1;
    for (const env of msg.events) record(c, env.data, recvT);
  } else if (msg.type !== undefined) {
    otherFrames += 1;
    if (msg.type === 'slow') slowFrames[msg.mode] = (slowFrames[msg.mode] || 0) + 1;
  } else if (msg.data !== undefined && msg.seq !== undefined) {
    record(c, msg.data, recvT);
    if (!c.slow && msg.ts !== undefined) relayStamp(msg.ts - msg.data.w);
  } else {
    record(c, msg, recvT);
  }
  if (recvT > lastRecvT && !c.slow) lastRecvT = recvT;
}

function relayStamp(ms) {
  let b = Math.floor(ms * 10);
  if (b < 0) b = 0; else if (b >= BUCKETS) b = BUCKETS - 1;
  relayHist[b] += 1;
  relayCount += 1;
  if (ms > relayMax) relayMax = ms;
}

function percentiles(h, total, max, ps) {
  const out = {};
  if (!total) { for (const p of ps) out['p' + p] = null; out.max = null; return out; }
  const targets = ps.map((p) => Math.ceil((p / 100) * total));
  let acc = 0, j = 0;
  for (let b = 0; b < BUCKETS && j < targets.length; b++) {
    acc += h[b];
    while (j < targets.length && acc >= targets[j]) { out['p' + ps[j]] = (b + 1) / 10; j++; }
  }
  out.max = max;
  return out;
}

function connectAll() {
  const started = monoMs();
  let open = 0, failed = 0, pending = 0, next = 0;
  const extensions = {};
  const conc = cfg.concurrency || 200;
  const finish = () => {
    say({ connected: open, failed, extensions, connect_s: (monoMs() - started) / 1000 });
  };
  const launch = () => {
    while (pending < conc && next < N) {
      const idx = next++;
      pending += 1;
      const slow = idx < SLOW;
      const ws = new WebSocket(cfg.url, { perMessageDeflate: !!cfg.deflate, skipUTF8Validation: true });
      const c = { ws, slow, seen: null, got: 0, dup: 0, reorder: 0, maxN: -1, frames: 0,
                  closeCode: null, closedAt: null, opened: false };
      clients.push(c);
      let settled = false;
      const settle = (ok) => {
        if (settled) return;
        settled = true;
        pending -= 1;
        if (ok) open += 1; else failed += 1;
        if (open + failed === N) finish(); else launch();
      };
      ws.on('open', () => {
        c.opened = true;
        const ext = ws.extensions || '';
        extensions[ext] = (extensions[ext] || 0) + 1;
        if (!cfg.first_frame) opened();
      });
      const opened = () => {
        if (slow) ws._socket.pause(); // stops reading: the kernel buffers fill, then the server's
        settle(true);
      };
      ws.on('message', (data) => {
        if (cfg.first_frame && !settled) opened(); // relayhouse's snapshot: the client is in the hub
        onFrame(c, data);
      });
      ws.on('error', () => { if (!c.opened) settle(false); });
      ws.on('close', (code) => {
        c.closeCode = code;
        c.closedAt = monoMs();
        if (!c.opened) settle(false);
      });
    }
  };
  if (N === 0) finish(); else launch();
}

function arm(b, n) {
  base = b; count = n;
  hist = new Uint32Array(BUCKETS); relayHist = new Uint32Array(BUCKETS);
  latMax = relayMax = latCount = relayCount = 0;
  frames = foreign = parseErrors = snapshots = otherFrames = uniqueFast = 0;
  firstSendT = Infinity; lastRecvT = 0;
  for (const c of clients) {
    c.seen = new Uint8Array(n); c.got = c.dup = c.reorder = c.frames = 0; c.maxN = -1;
    c.times = []; c.lastN = [];
  }
  slowFrames = { conflated: 0, live: 0 };
  armedAt = monoMs();
}
let armedAt = 0;

function report() {
  let lost = 0, dup = 0, reorder = 0, clientsWithLoss = 0, maxLost = 0, delivered = 0;
  const closes = {};
  const slow = [];
  let fastClosed = 0;
  for (const c of clients) {
    if (!c.opened) continue;
    if (c.slow) {
      slow.push({ got: c.got, close_code: c.closeCode,
                  closed_after_s: c.closedAt ? (c.closedAt - armedAt) / 1000 : null });
      continue;
    }
    const l = count - c.got;
    delivered += c.got;
    lost += l; dup += c.dup; reorder += c.reorder;
    if (l > 0) clientsWithLoss += 1;
    if (l > maxLost) maxLost = l;
    if (c.closeCode !== null) { fastClosed += 1; closes[c.closeCode] = (closes[c.closeCode] || 0) + 1; }
  }
  const fast = clients.filter((c) => c.opened && !c.slow).length;
  const span = lastRecvT > 0 && firstSendT < Infinity ? (lastRecvT - firstSendT) / 1000 : null;
  return {
    clients: fast, slow_clients: slow, expected_per_client: count, delivered,
    lost, lost_pct: fast && count ? (100 * lost) / (fast * count) : 0, clients_with_loss: clientsWithLoss,
    max_lost_per_client: maxLost, duplicated: dup, out_of_order: reorder,
    frames, foreign, parse_errors: parseErrors, other_frames: otherFrames,
    closed: fastClosed, close_codes: closes, span_s: span,
    latency_ms: percentiles(hist, latCount, latMax, [50, 90, 99, 99.9]),
    relay_receive_ms: percentiles(relayHist, relayCount, relayMax, [50, 99, 99.9]),
    // the histograms themselves (0.1 ms buckets with a count, [bucket, count] pairs), so that the
    // reports of several subscriber processes can be merged into one set of percentiles
    latency_hist: cfg.hist ? sparse(hist) : undefined,
    relay_receive_hist: cfg.hist ? sparse(relayHist) : undefined,
    slow_frames: slowFrames,
    rated: RATED ? ratedReport() : undefined,
  };
}

function sparse(h) {
  const out = [];
  for (let b = 0; b < BUCKETS; b++) if (h[b]) out.push([b, h[b]]);
  return out;
}

function ratedReport() {
  // per client and topic: the most deliveries within any 1 s window; whether its last delivery
  // is the topic's last event sent
  let most = 0, topicsSeen = 0, newestMissed = 0, deliveries = 0, minGap = Infinity;
  for (const c of clients) {
    if (!c.opened || c.slow) continue;
    for (let r = 0; r < TOPICS; r++) {
      const t = c.times[r] || [];
      deliveries += t.length;
      let start = 0;
      for (let end = 0; end < t.length; end++) {
        if (end > 0 && t[end] - t[end - 1] < minGap) minGap = t[end] - t[end - 1];
        while (t[end] - t[start] >= 1000) start += 1;
        if (end - start + 1 > most) most = end - start + 1;
      }
      let last = base + count - 1;
      while (last >= base && last % TOPICS !== r) last -= 1;
      if (last < base) continue;
      topicsSeen += 1;
      if (c.lastN[r] !== last) newestMissed += 1;
    }
  }
  // receive times carry the subscriber's own jitter: min_gap_ms says how much it compressed the relay's spacing
  return { max_per_topic_in_1s: most, client_topics: topicsSeen, newest_missed: newestMissed,
           deliveries_per_topic: topicsSeen ? deliveries / topicsSeen : 0,
           min_gap_ms: minGap === Infinity ? null : Math.round(minGap) };
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  const msg = JSON.parse(line);
  if (msg.cmd === 'arm') { arm(msg.base, msg.count); say({ armed: true }); }
  else if (msg.cmd === 'quiet') {
    const t0 = monoMs();
    const expected = count * clients.filter((c) => c.opened && !c.slow && c.closeCode === null).length;
    const check = () => {
      const now = monoMs();
      if (uniqueFast >= expected) say({ quiet: true, complete: true, waited_ms: now - t0 });
      else if (now - lastFrameAt >= msg.quiet_ms) say({ quiet: true, complete: false, waited_ms: now - t0 });
      else if (now - t0 >= msg.max_ms) say({ quiet: false, waited_ms: now - t0 });
      else setTimeout(check, 50);
    };
    check();
  } else if (msg.cmd === 'report') say({ report: report() });
  else if (msg.cmd === 'missing') {
    // which events the clients with a loss lack (the first few of each): for diagnosis
    const out = [];
    clients.forEach((c, idx) => {
      if (!c.opened || c.slow || c.got === count) return;
      const miss = [];
      for (let i = 0; i < count && miss.length < 10; i++) if (!c.seen[i]) miss.push(base + i);
      out.push({ client: idx, got: c.got, frames: c.frames, close: c.closeCode, first_missing: miss });
    });
    say({ missing: out.slice(0, msg.limit || 20), clients_with_loss: out.length });
  }
  else if (msg.cmd === 'quit') process.exit(0);
}).on('close', () => process.exit(0));

connectAll();
