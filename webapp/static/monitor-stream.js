/* relayhouse monitor: the /ws connection that fills the live feed: snapshot, resume after a drop,
 * backoff, heartbeat, and the bar that says how the stream is doing. */

import { askToken, api, saveToken, tokens } from './monitor-api.js';
import { $, logActivity, setState, setText, toast } from './monitor-dom.js';
import { clearFeed, feed, feedEvents, feedMarker, feedRate, holding } from './monitor-feed.js';
import { clockNow, fmtInt, fmtRate } from './monitor-format.js';

const BACKOFF_MS = [250, 500, 1000, 2000, 3000];
const PING_EVERY_MS = 15000;
const SILENCE_LIMIT_MS = 45000;     // no frame at all for this long: the socket is dead
const SNAPSHOT = Number(document.body.dataset.snapshot) || 100;

/** The bar above the feed: the stream's state, its topics, rate and counts, and the pause button's text. */
export function renderStreamBar() {
  const stateEl = $('stream-state');
  let state, text;
  if (stream.status === 'live') {
    if (feed.paused) {
      state = 'paused';
      text = `Paused — ${fmtInt(feed.frozenNew)} new event${feed.frozenNew === 1 ? '' : 's'} since`;
    } else if (holding()) {
      state = 'paused';
      text = 'Holding while you read — scroll to the top to follow';
    } else if (stream.slowMode === 'conflated') {
      state = 'paused';
      text = 'Behind — the relay sends the newest value per topic until this page catches up';
    } else {
      state = 'live';
      text = stream.maxHz ? `Live · at most ${stream.maxHz} / s per topic` : 'Live';
    }
  } else if (stream.status === 'down') {
    state = 'down';
    text = stream.downText;
  } else {
    state = 'connecting';
    text = 'Connecting…';
  }
  setState(stateEl, state);
  setText(stateEl, text);
  setText('stream-topics', stream.topics.join(', '));
  setText('stream-rate', fmtRate(feedRate()));
  setText('stream-count', fmtInt(feed.received));
  $('stream-conflated').hidden = !stream.conflated;
  setText('stream-conflated-count', fmtInt(stream.conflated));
  setText('pause-text', feed.paused ? `Resume${feed.frozenNew ? ` (${fmtInt(feed.frozenNew)})` : ''}` : 'Pause');
}

// -- the /ws stream ----------------------------------------------------------

export const stream = {
  ws: null,
  topics: ['*'],
  epoch: null,
  lastSeq: null,       // resume point: everything up to it that matches is in the feed
  status: 'connecting',
  downText: '',
  attempt: 0,
  retryAt: 0,
  retryTimer: null,
  resuming: false,
  dropped: false,      // a live connection was lost: say so when it comes back
  closingReason: null,
  lastFrameAt: 0,
  lastPingAt: 0,
  maxHz: null,         // the feed's rate per topic (max_hz), null = every event
  conflated: 0,        // events the relay replaced by newer ones of their topic, this connection
  slowMode: 'live',    // on_slow=conflate: 'conflated' while this page is behind

  url() {
    const url = new URL('/ws', window.location.href);
    url.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    const params = url.searchParams;
    params.set('topics', this.topics.join(','));
    if (this.maxHz) params.set('max_hz', String(this.maxHz));
    params.set('on_slow', 'conflate'); // a page that falls behind keeps the newest values instead of a reconnect
    this.resuming = this.lastSeq !== null && this.epoch !== null;
    if (this.resuming) {
      params.set('since', String(this.lastSeq));
      params.set('epoch', this.epoch);
    } else {
      params.set('snapshot', String(SNAPSHOT));
    }
    if (tokens.api) params.set('token', tokens.api);
    return url.href;
  },

  connect() {
    window.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    $('retry-now').hidden = true;
    this.status = 'connecting';
    delete $('streambar').dataset.liveTopics;
    setLink('connecting', this.attempt ? `Reconnecting (attempt ${this.attempt + 1})…` : 'Connecting to the stream…');
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (err) {
      this.scheduleRetry(String((err && err.message) || err));
      return;
    }
    this.ws = ws;
    ws.opened = false;
    ws.onopen = () => {
      ws.opened = true;
      this.lastFrameAt = Date.now();
    };
    ws.onmessage = (e) => {
      if (ws !== this.ws) return;
      this.lastFrameAt = Date.now();
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      this.handle(msg);
    };
    ws.onclose = (e) => {
      if (ws !== this.ws) return; // replaced on purpose
      this.ws = null;
      this.closed(ws, e);
    };
  },

  handle(msg) {
    switch (msg.type) {
      case 'snapshot': this.snapshot(msg); break;
      case 'events':
        if (msg.conflated) this.conflated += msg.conflated;
        this.events(msg.events || []);
        break;
      case 'subscribed':
        this.maxHz = msg.max_hz === undefined ? this.maxHz : msg.max_hz;
        renderStreamBar();
        break;
      case 'slow':
        this.slowMode = msg.mode;
        if (msg.mode === 'conflated') {
          feedMarker(`This page fell behind at ${clockNow()}: the relay now sends only the newest value of each topic.`, 'warn');
          logActivity('Stream conflated: this page fell behind', 'warn');
        } else {
          feedMarker(`Caught up at ${clockNow()}: every event again.`, 'info');
        }
        renderStreamBar();
        break;
      case 'closing': this.closingReason = msg.reason || 'closing'; break;
      case 'error': toast(`The relay refused a message: ${msg.message}`, 'bad'); break;
      default: break; // pong: nothing to show
    }
  },

  /** A new rate for the feed: changed on the open connection (subscribe with max_hz), kept for reconnects. */
  setRate(maxHz) {
    this.maxHz = maxHz;
    feedMarker(maxHz ? `From ${clockNow()}: at most ${maxHz} event${maxHz === 1 ? '' : 's'} per second per topic, the newest winning.`
      : `From ${clockNow()}: every event.`, 'info');
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ action: 'subscribe', max_hz: maxHz }));
    renderStreamBar();
  },

  snapshot(msg) {
    const oldEpoch = this.epoch;
    const since = this.lastSeq;
    if (msg.recovered === false) {
      if (oldEpoch && msg.epoch !== oldEpoch) {
        const text = `The relay restarted with a new seq space (epoch ${oldEpoch} → ${msg.epoch}): events it did not keep are gone; showing what it still has.`;
        feedMarker(text, 'warn');
        logActivity('Stream resumed in a new epoch: events from before the restart may be missing', 'warn');
        toast('Relay restarted with a new epoch — some events may be missing.', 'warn', 9000);
      }
      if (Array.isArray(msg.missing)) {
        const [from, to] = msg.missing;
        feedMarker(`Events ${fmtInt(from)}–${fmtInt(to)} could not be recovered: no longer in the cache or the store.`, 'warn');
        logActivity(`Stream gap: events ${fmtInt(from)}–${fmtInt(to)} could not be recovered`, 'warn');
        toast(`Missed events ${fmtInt(from)}–${fmtInt(to)}: they could not be recovered.`, 'warn', 9000);
      } else if (!(oldEpoch && msg.epoch !== oldEpoch)) {
        feedMarker('The resume was incomplete: some events may be missing.', 'warn');
      }
    } else if (this.resuming && this.dropped) {
      feedMarker(`Reconnected at ${clockNow()} — resumed after seq ${fmtInt(since)}, nothing missed.`, 'info');
      logActivity(`Stream reconnected, resumed after seq ${fmtInt(since)} with no gap`, 'ok');
    }
    this.epoch = msg.epoch;
    this.lastSeq = msg.last_seq;
    this.conflated = 0;
    this.slowMode = 'live';
    this.attempt = 0;
    this.dropped = false;
    this.status = 'live';
    this.events(msg.events || []);
    $('streambar').dataset.liveTopics = this.topics.join(',');
    setLink('live', `Live · epoch ${msg.epoch}`);
    renderStreamBar();
  },

  events(events) {
    for (const ev of events) if (this.lastSeq === null || ev.seq > this.lastSeq) this.lastSeq = ev.seq;
    feedEvents(events);
  },

  async closed(ws, e) {
    const reason = this.closingReason;
    this.closingReason = null;
    const wasLive = this.status === 'live';
    delete $('streambar').dataset.liveTopics;
    let why;
    if (reason === 'shutdown') why = 'the relay is shutting down';
    else if (reason === 'slow_consumer') why = 'this page fell behind';
    else if (reason) why = reason;
    else if (!ws.opened) why = 'could not connect';
    else why = e.code === 1006 ? 'connection lost' : `closed (${e.code})`;
    if (wasLive) {
      this.dropped = true;
      feedMarker(`Disconnected at ${clockNow()}: ${why}.`, 'warn');
      logActivity(`Stream disconnected: ${why}`, 'bad');
    }
    if (!ws.opened) {
      // A refused upgrade looks like any failure to a browser: ask REST why.
      const probe = await api('GET', '/cache/config', { prompt: false, timeoutMs: 3000 });
      if (probe.status === 401) {
        this.status = 'down';
        this.downText = 'The stream needs an API token';
        setLink('down', 'Stream needs an API token');
        $('retry-now').hidden = false;
        renderStreamBar();
        if (tokens.api) saveToken('api', null);
        const token = await askToken('api', (probe.data && probe.data.error) || 'The relay wants an API token for /ws.');
        if (token) { this.connect(); return; }
        return; // wait for "Retry now" or the Tokens dialog
      }
    }
    this.scheduleRetry(why);
  },

  scheduleRetry(why) {
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt += 1;
    this.status = 'down';
    this.retryAt = Date.now() + delay;
    this.downText = 'Disconnected — reconnecting…';
    setLink('down', `Disconnected — reconnecting (${why})`);
    $('retry-now').hidden = false;
    renderStreamBar();
    window.clearTimeout(this.retryTimer);
    this.retryTimer = window.setTimeout(() => this.connect(), delay);
  },

  /** Close on purpose and connect again at once (new topics, new token). */
  restart() {
    const old = this.ws;
    this.ws = null;
    if (old) old.close(1000, 'restart');
    this.attempt = 0;
    this.connect();
  },

  subscribe(patterns) {
    this.topics = patterns;
    this.lastSeq = null; // a new subscription starts from a fresh snapshot of it
    clearFeed();
    feedMarker(`Showing ${patterns.join(', ')} from ${clockNow()} (recent matches first)`, 'info');
    this.status = 'connecting';
    this.restart();
  },

  /** Ping now and then; a socket silent for too long is dead even if TCP does not know yet. */
  heartbeat() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const now = Date.now();
    if (now - this.lastFrameAt > SILENCE_LIMIT_MS) {
      ws.close(4000, 'silent');
      return;
    }
    if (now - this.lastPingAt > PING_EVERY_MS) {
      this.lastPingAt = now;
      ws.send('{"action":"ping"}');
    }
  },
};

function setLink(state, text) {
  setState($('link'), state);
  setText('link-text', text);
}
