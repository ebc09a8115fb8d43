/* relayhouse monitor: status, live feed, charts and tools for one relay.
 * Vanilla JS, no build step, no network access beyond the relay itself.
 * Event data is only ever written with textContent, never as HTML. */
(() => {
  'use strict';

  // -- settings ----------------------------------------------------------------

  const FEED_MAX_ROWS = 200;          // DOM cap for the live feed
  const RENDER_INTERVAL_MS = 250;     // the feed is drawn at most 4 times a second
  const HEALTH_INTERVAL_MS = 1000;
  const HEALTH_TIMEOUT_MS = 3000;
  const CHART_WINDOW_MS = 5 * 60 * 1000;
  const CHART_MIN_SPAN_MS = 20 * 1000;  // a young chart spans what it has, so it never looks empty
  const BACKOFF_MS = [250, 500, 1000, 2000, 3000];
  const PING_EVERY_MS = 15000;
  const SILENCE_LIMIT_MS = 45000;     // no frame at all for this long: the socket is dead
  const SQL_MAX_ROWS_SHOWN = 1000;
  const SNAPSHOT = Number(document.body.dataset.snapshot) || 100;
  // the fields that make up the topic: the feed shows the topic, so the data column skips them
  const TOPIC_FIELDS = new Set((document.body.dataset.topicFields || '').split(',').filter(Boolean));
  const PAGE_VERSION = (document.querySelector('.brand-version') || {}).textContent || '';
  const TOKEN_KEYS = { api: 'relayhouse.apiToken', admin: 'relayhouse.adminToken' };

  // -- small helpers -------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(id, text) {
    const node = typeof id === 'string' ? $(id) : id;
    if (node && node.textContent !== text) node.textContent = text;
  }

  function setState(node, state) {
    if (node && node.dataset.state !== state) node.dataset.state = state;
  }

  const storage = {
    get(key) { try { return window.localStorage.getItem(key); } catch { return null; } },
    set(key, value) { try { window.localStorage.setItem(key, value); } catch { /* private mode: keep it in memory only */ } },
    remove(key) { try { window.localStorage.removeItem(key); } catch { /* same */ } },
  };

  const intFormat = new Intl.NumberFormat('en-US');
  const fmtInt = (n) => (typeof n === 'number' && Number.isFinite(n) ? intFormat.format(n) : '–');

  function fmtRate(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return '–';
    if (v >= 10000) return `${(v / 1000).toFixed(0)}k`;
    if (v >= 1000) return `${(v / 1000).toFixed(1)}k`;
    if (v >= 10) return String(Math.round(v));
    return v.toFixed(1);
  }

  function fmtBytes(n) {
    if (typeof n !== 'number') return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
  }

  function fmtDuration(s) {
    if (typeof s !== 'number' || !Number.isFinite(s)) return '–';
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (d) return `${d} d ${h} h`;
    if (h) return `${h} h ${m} min`;
    if (m) return `${m} min ${sec} s`;
    return `${sec} s`;
  }

  function fmtAge(s) {
    if (s < 10) return `${s.toFixed(1)} s ago`;
    if (s < 60) return `${Math.round(s)} s ago`;
    return `${fmtDuration(s)} ago`;
  }

  const pad = (n, w = 2) => String(n).padStart(w, '0');
  function fmtTime(ms) {
    const d = new Date(ms);
    if (Number.isNaN(d.getTime())) return '–';
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function clockNow() { return fmtTime(Date.now()).slice(0, 8); }

  /** Topic patterns as the relay accepts them: exact, prefix ending in '*', or '*'. */
  function parsePatterns(text) {
    const items = text.split(',').map((p) => p.trim());
    if (items.length === 1 && items[0] === '') return { patterns: ['*'] };
    const patterns = [];
    for (const p of items) {
      if (!p) return { error: 'Empty pattern: remove the extra comma.' };
      if (p.length > 256) return { error: 'A pattern may be at most 256 characters.' };
      if (p.slice(0, -1).includes('*')) return { error: `'*' may only end a pattern: ${p}` };
      if (!patterns.includes(p)) patterns.push(p);
    }
    return { patterns };
  }

  // -- toasts ------------------------------------------------------------------

  function toast(text, kind = 'info', ms = 6000) {
    const box = $('toasts');
    const node = el('div', `toast ${kind}`, text);
    box.append(node);
    while (box.childElementCount > 4) box.firstElementChild.remove();
    window.setTimeout(() => node.remove(), ms);
  }

  // -- activity log --------------------------------------------------------------

  function logActivity(text, kind = 'info') {
    const list = $('activity');
    const item = el('li', kind);
    const time = el('time', '', clockNow());
    time.dateTime = new Date().toISOString();
    item.append(time, el('span', '', text));
    list.prepend(item);
    while (list.childElementCount > 100) list.lastElementChild.remove();
  }

  // -- tokens ------------------------------------------------------------------

  const tokens = { api: storage.get(TOKEN_KEYS.api), admin: storage.get(TOKEN_KEYS.admin) };

  function saveToken(kind, value) {
    tokens[kind] = value || null;
    if (value) storage.set(TOKEN_KEYS[kind], value);
    else storage.remove(TOKEN_KEYS[kind]);
  }

  let tokenQuestion = null; // one prompt at a time

  /** Ask for the API or admin token; resolves to the token, or null when cancelled. */
  function askToken(kind, why) {
    if (tokenQuestion) {
      return tokenQuestion.kind === kind ? tokenQuestion.promise : tokenQuestion.promise.then(() => askToken(kind, why));
    }
    const dialog = $('token-dialog');
    const input = $('token-input');
    setText('token-title', kind === 'admin' ? 'Admin token required' : 'API token required');
    setText('token-label', kind === 'admin' ? 'Admin token (ADMIN_TOKEN)' : 'API token (one of API_TOKENS)');
    setText('token-why', why || '');
    input.value = '';
    const promise = new Promise((resolve) => {
      dialog.addEventListener('close', () => {
        const value = dialog.returnValue === 'save' ? input.value.trim() : '';
        input.value = '';
        tokenQuestion = null;
        if (value) saveToken(kind, value);
        resolve(value || null);
      }, { once: true });
    });
    tokenQuestion = { kind, promise };
    dialog.returnValue = '';
    dialog.showModal();
    input.focus();
    return promise;
  }

  function setupDialogs() {
    for (const button of document.querySelectorAll('dialog [data-close]')) {
      button.addEventListener('click', () => button.closest('dialog').close('cancel'));
    }
    const manage = $('tokens-dialog');
    $('tokens-button').addEventListener('click', () => {
      $('tokens-api').value = tokens.api || '';
      $('tokens-admin').value = tokens.admin || '';
      setText('tokens-api-state', tokens.api ? '(saved)' : '(none)');
      setText('tokens-admin-state', tokens.admin ? '(saved)' : '(none)');
      manage.returnValue = '';
      manage.showModal();
    });
    manage.addEventListener('close', () => {
      if (manage.returnValue !== 'save') return;
      const api = $('tokens-api').value.trim();
      const apiChanged = api !== (tokens.api || '');
      saveToken('api', api);
      saveToken('admin', $('tokens-admin').value.trim());
      toast('Tokens saved in this browser.', 'ok', 3000);
      if (apiChanged) stream.restart();
    });
  }

  // -- REST --------------------------------------------------------------------

  /** fetch with the right token; a 401 asks for one and tries again. Never throws. */
  async function api(method, path, { body, admin = false, prompt = true, timeoutMs = 15000 } = {}) {
    for (;;) {
      const kind = admin ? 'admin' : 'api';
      const token = tokens[kind];
      const headers = { Accept: 'application/json' };
      if (token) headers.Authorization = `Bearer ${token}`;
      const init = { method, headers, cache: 'no-store' };
      if (body !== undefined) {
        headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(body);
      }
      const controller = new AbortController();
      const timer = window.setTimeout(() => controller.abort(), timeoutMs);
      init.signal = controller.signal;
      let response, text;
      try {
        response = await fetch(path, init);
        text = await response.text();
      } catch (err) {
        const timedOut = err && err.name === 'AbortError';
        return { ok: false, status: 0, statusText: timedOut ? 'no answer in time' : 'network error',
                 data: null, text: timedOut ? `no answer within ${timeoutMs / 1000} s` : String((err && err.message) || err) };
      } finally {
        window.clearTimeout(timer);
      }
      let data = null;
      try { data = text ? JSON.parse(text) : null; } catch { data = null; }
      if (response.status === 401 && prompt) {
        if (token) saveToken(kind, null); // refused: never send it again
        const reason = (data && data.error) || 'The relay answered 401 Unauthorized.';
        const got = await askToken(kind, (token ? 'The saved token was refused. ' : '') + reason);
        if (got) continue;
      }
      return { ok: response.ok, status: response.status, statusText: response.statusText, data, text };
    }
  }

  /** "HTTP 404 NOT FOUND" and the body as the relay sent it (pretty when JSON). */
  function describeFailure(res) {
    const head = res.status ? `HTTP ${res.status} ${res.statusText || ''}`.trim() : `Relay unreachable (${res.statusText})`;
    const body = res.data !== null ? JSON.stringify(res.data, null, 2) : (res.text || '(empty body)').slice(0, 4000);
    const message = (res.data && typeof res.data.error === 'string') ? res.data.error : (res.text || '').slice(0, 200);
    return { head, body, message };
  }

  // -- charts ------------------------------------------------------------------

  function niceCeil(v) {
    if (v <= 0) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  /** How much time a chart spans: what it has seen, between 20 s and 5 minutes. */
  function chartSpan(samples, now) {
    const first = samples.length ? samples[0].t : now;
    return Math.min(CHART_WINDOW_MS, Math.max(CHART_MIN_SPAN_MS, now - first));
  }

  class Chart {
    constructor(canvas, valueEl, { label, unit, format, minTop }) {
      this.canvas = canvas;
      this.valueEl = valueEl;
      this.label = label;
      this.unit = unit;
      this.format = format;
      this.minTop = minTop;
      this.samples = [];
      this.ctx = canvas.getContext('2d');
      if ('ResizeObserver' in window) new ResizeObserver(() => this.draw()).observe(canvas);
    }

    push(t, v) {
      this.samples.push({ t, v });
      const cutoff = t - CHART_WINDOW_MS - 5000;
      while (this.samples.length && this.samples[0].t < cutoff) this.samples.shift();
      this.canvas.dataset.samples = String(this.samples.length);
      let peak = null;
      for (const s of this.samples) if (s.v !== null && (peak === null || s.v > peak)) peak = s.v;
      setText(this.valueEl, v === null ? '–' : this.format(v));
      const label = v === null
        ? `${this.label}: no current value`
        : `${this.label}: now ${this.format(v)}${this.unit}, peak ${this.format(peak)}${this.unit} over the last 5 minutes`;
      if (this.canvas.getAttribute('aria-label') !== label) this.canvas.setAttribute('aria-label', label);
      this.draw();
    }

    draw() {
      const canvas = this.canvas;
      const w = canvas.clientWidth, h = canvas.clientHeight;
      if (!w || !h) return;
      const dpr = window.devicePixelRatio || 1;
      if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
        canvas.width = Math.round(w * dpr);
        canvas.height = Math.round(h * dpr);
      }
      const ctx = this.ctx;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);
      const css = getComputedStyle(canvas);
      const line = css.getPropertyValue('--line').trim() || '#4cc2ff';
      const grid = css.getPropertyValue('--chart-grid').trim() || 'rgba(128,128,128,0.2)';
      const muted = css.getPropertyValue('--muted').trim() || '#888';
      const now = Date.now();
      const span = chartSpan(this.samples, now);
      const t0 = now - span;
      const points = this.samples.filter((s) => s.t >= t0 - 2000);
      let max = 0;
      for (const s of points) if (s.v !== null && s.v > max) max = s.v;
      const top = niceCeil(Math.max(max, this.minTop));
      const padTop = 16, padBottom = 3;
      const plotH = h - padTop - padBottom;
      const x = (t) => ((t - t0) / span) * w;
      const y = (v) => padTop + plotH - (v / top) * plotH;

      // grid: vertical lines every `step` back from now, and at 0, half and top
      const step = [5000, 10000, 30000, 60000].find((ms) => span / ms <= 6) || 60000;
      ctx.lineWidth = 1;
      ctx.strokeStyle = grid;
      ctx.beginPath();
      for (let back = step; back < span; back += step) {
        const gx = Math.round(x(now - back)) + 0.5;
        ctx.moveTo(gx, padTop); ctx.lineTo(gx, h - padBottom);
      }
      for (const f of [0, 0.5, 1]) {
        const gy = Math.round(y(top * f)) + 0.5;
        ctx.moveTo(0, gy); ctx.lineTo(w, gy);
      }
      ctx.stroke();
      ctx.fillStyle = muted;
      ctx.font = '10.5px system-ui, sans-serif';
      ctx.textBaseline = 'alphabetic';
      ctx.fillText(`${this.format(top)}${this.unit}`, 4, 11);
      ctx.textAlign = 'right';
      ctx.fillText('now', w - 4, 11);
      if (step < span) ctx.fillText(`−${step >= 60000 ? `${step / 60000} min` : `${step / 1000} s`}`, x(now - step) - 3, 11);
      ctx.textAlign = 'left';

      // segments: a null value or a missing sample breaks the line
      const segments = [];
      let current = [];
      let prevT = null;
      for (const s of points) {
        if (s.v === null || (prevT !== null && s.t - prevT > 5 * HEALTH_INTERVAL_MS)) {
          if (current.length) segments.push(current);
          current = [];
        }
        if (s.v !== null) current.push(s);
        prevT = s.t;
      }
      if (current.length) segments.push(current);
      if (!segments.length) {
        ctx.fillText('waiting for data…', 4, padTop + plotH / 2 + 4);
        return;
      }
      for (const seg of segments) {
        ctx.beginPath();
        seg.forEach((s, i) => (i ? ctx.lineTo(x(s.t), y(s.v)) : ctx.moveTo(x(s.t), y(s.v))));
        ctx.lineTo(x(seg[seg.length - 1].t), y(0));
        ctx.lineTo(x(seg[0].t), y(0));
        ctx.closePath();
        ctx.globalAlpha = 0.16;
        ctx.fillStyle = line;
        ctx.fill();
        ctx.globalAlpha = 1;
        ctx.beginPath();
        seg.forEach((s, i) => (i ? ctx.lineTo(x(s.t), y(s.v)) : ctx.moveTo(x(s.t), y(s.v))));
        ctx.strokeStyle = line;
        ctx.lineWidth = 1.6;
        ctx.lineJoin = 'round';
        ctx.stroke();
      }
      const last = segments[segments.length - 1].at(-1);
      ctx.beginPath();
      ctx.arc(x(last.t), y(last.v), 2.6, 0, 2 * Math.PI);
      ctx.fillStyle = line;
      ctx.fill();
    }
  }

  const charts = {
    in: new Chart($('chart-in'), $('chart-in-value'), { label: 'Events in per second', unit: '/s', format: fmtRate, minTop: 5 }),
    out: new Chart($('chart-out'), $('chart-out-value'), { label: 'Deliveries out per second', unit: '/s', format: fmtRate, minTop: 5 }),
    clients: new Chart($('chart-clients'), $('chart-clients-value'), { label: 'Connected clients', unit: '', format: (v) => fmtInt(Math.round(v)), minTop: 4 }),
  };

  // -- status ------------------------------------------------------------------

  let lastHealth = null; // { t, h } of the previous answer, for rates
  let seen = null;       // what the activity log last knew about the relay

  function noteChanges(h) {
    const up = h.upstream || {}, store = h.store || {};
    const now = { reachable: true, status: h.status, connected: Boolean(up.connected), reconnects: up.reconnects,
                  storeOk: store.ok !== false, spooling: store.spooled > 0, epoch: h.epoch };
    const was = seen;
    seen = now;
    if (!was) {
      logActivity(`Watching relay ${h.version || ''} (up ${fmtDuration(h.uptime_s)}, ${h.status})`, h.status === 'ok' ? 'ok' : 'bad');
      return;
    }
    if (!was.reachable) logActivity('Relay answers again', 'ok');
    if (was.epoch && was.epoch !== now.epoch) logActivity(`Relay restarted: new epoch ${now.epoch}`, 'warn');
    if (was.connected && !now.connected) logActivity('Upstream disconnected', 'bad');
    if (!was.connected && now.connected) logActivity(`Upstream connected${now.reconnects ? ` (reconnect #${now.reconnects})` : ''}`, 'ok');
    if (was.storeOk && !now.storeOk) logActivity('Store writes failing', 'bad');
    if (!was.storeOk && now.storeOk) logActivity('Store writes OK again', 'ok');
    if (!was.spooling && now.spooling) logActivity('Store spooling to disk', 'warn');
    if (was.spooling && !now.spooling) logActivity('Spool drained', 'ok');
    if (was.status !== now.status) logActivity(`Relay status: ${now.status}`, now.status === 'ok' ? 'ok' : 'bad');
  }

  function healthProblems(h) {
    const up = h.upstream || {}, store = h.store || {};
    const problems = [];
    if (!up.connected) problems.push('upstream disconnected');
    if (store.ok === false) problems.push('store failing');
    if (store.spooled > 0) problems.push(`${fmtInt(store.spooled)} events spooled`);
    if (!problems.length) problems.push('the relay reports degraded');
    return problems;
  }

  // UPSTREAM_SUBSCRIBE: each pattern subscribed upstream with its clients ("T.AAPL ×3"); text only
  function renderSubscriptions(up) {
    const managed = !!up.managed_subscriptions;
    $('upstream-subs-label').hidden = !managed;
    $('upstream-subs').hidden = !managed;
    if (!managed) return;
    const counts = up.subscription_clients || {};
    const subs = Array.isArray(up.subscriptions) ? up.subscriptions : [];
    const shown = subs.slice(0, 200).map((p) => `${p} ×${fmtInt(counts[p] || 0)}`);
    const more = subs.length > shown.length ? ` … ${fmtInt(subs.length - shown.length)} more` : '';
    setText('upstream-subs', subs.length ? shown.join(', ') + more : 'nothing yet: no client has asked');
  }

  function renderHealth(h) {
    const up = h.upstream || {}, store = h.store || {};
    let state, text;
    if (h.status !== 'ok') {
      state = 'bad';
      text = `Degraded — ${healthProblems(h).join(', ')}`;
    } else if (!up.connected) {
      state = 'warn';
      text = 'Starting — upstream not connected yet';
    } else {
      state = 'ok';
      text = 'Healthy';
    }
    const bodyClass = `state-${state}`;
    if (document.body.className !== bodyClass) document.body.className = bodyClass;
    setText('overall-text', text);
    const title = `${state === 'ok' ? '' : state === 'bad' ? '⚠ ' : '… '}relayhouse monitor`;
    if (document.title !== title) document.title = title;

    // upstream
    setState($('group-upstream'), up.connected ? 'ok' : (h.status === 'ok' ? 'warn' : 'bad'));
    setState($('upstream-badge'), up.connected ? 'ok' : (h.status === 'ok' ? 'warn' : 'bad'));
    setText('upstream-badge', up.connected ? 'Connected' : 'Disconnected');
    setText('upstream-url', up.url || '–');
    $('upstream-demo').hidden = !up.demo;
    const connectedEl = $('upstream-connected');
    setText(connectedEl, up.connected ? 'Yes' : 'No');
    connectedEl.className = up.connected ? 'is-ok' : 'is-bad';
    setText('upstream-reconnects', fmtInt(up.reconnects));
    const ageEl = $('upstream-age');
    if (typeof up.last_message_at === 'number') {
      const age = Math.max(0, Date.now() / 1000 - up.last_message_at);
      setText(ageEl, fmtAge(age));
      ageEl.className = `num ${age > 30 ? 'is-warn' : ''}`;
    } else {
      setText(ageEl, 'never');
      ageEl.className = 'num is-muted';
    }
    const parseErrors = up.parse_errors ? ` · ${fmtInt(up.parse_errors)} unparsed` : '';
    setText('upstream-events', `${fmtInt(up.events)}${parseErrors}`);
    setText('upstream-error', up.last_error || '–');
    if ($('upstream-error').title !== (up.last_error || '')) $('upstream-error').title = up.last_error || '';
    renderSubscriptions(up);

    // store
    const storeGroup = $('group-store');
    if (store.backend === 'none' || !store.backend) {
      setState(storeGroup, 'off');
      setState($('store-badge'), 'off');
      setText('store-badge', 'Off');
      setText('store-backend', 'none');
      setText('store-ok', 'persistence off');
      $('store-ok').className = 'is-muted';
    } else {
      const storeState = store.ok === false ? 'bad' : store.spooled > 0 ? 'warn' : 'ok';
      setState(storeGroup, storeState);
      setState($('store-badge'), storeState);
      setText('store-badge', storeState === 'ok' ? 'OK' : storeState === 'warn' ? 'Spooling' : 'Failing');
      setText('store-backend', store.backend);
      setText('store-ok', store.ok === false ? `Failing${store.last_error ? `: ${store.last_error}` : ''}` : 'OK');
      $('store-ok').className = store.ok === false ? 'is-bad' : 'is-ok';
      $('store-ok').title = store.last_error || '';
    }
    setText('store-written', fmtInt(store.written));
    setText('store-pending', fmtInt(store.pending));
    const spooledBytes = store.spooled_bytes ? ` (${fmtBytes(store.spooled_bytes)})` : '';
    setText('store-spooled', `${fmtInt(store.spooled)}${spooledBytes}`);
    $('store-spooled').className = `num ${store.spooled > 0 ? 'is-warn' : ''}`;

    // relay
    setState($('group-relay'), h.status === 'ok' ? 'ok' : 'bad');
    const kinds = h.clients_by_transport
      ? Object.entries(h.clients_by_transport).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(' · ')
      : '';
    // delivery modes (contract §12): live = every event, rate = max_hz, conflated = slow, newest values only
    const modes = h.clients_by_mode
      ? ['live', 'rate', 'conflated'].filter((m) => h.clients_by_mode[m]).map((m) => `${m} ${h.clients_by_mode[m]}`).join(' · ')
      : '';
    setText('relay-clients', `${fmtInt(h.clients)}${kinds ? `  (${kinds})` : ''}${modes ? ` — ${modes}` : ''}`);
    $('relay-clients').title = 'by transport, then by delivery mode: live (every event), rate (max_hz), conflated (a slow client on newest values)';
    setText('relay-last-seq', fmtInt(h.last_seq));
    setText('relay-epoch', h.epoch || '–');
    setText('relay-cache', h.cache ? `${fmtInt(h.cache.items)} events` : '–');
    setText('relay-delivered', fmtInt(h.delivered));
    const pageVersion = PAGE_VERSION.replace(/^v/, '');
    setText('relay-version', h.version && pageVersion && h.version !== pageVersion
      ? `${h.version} (this page is ${pageVersion}: reload)` : (h.version || '–'));
    setText('relay-uptime', fmtDuration(h.uptime_s));
  }

  function renderUnreachable(reason) {
    if (document.body.className !== 'state-bad') document.body.className = 'state-bad';
    setText('overall-text', `Relay unreachable — ${reason}`);
    if (document.title !== '⚠ relayhouse monitor') document.title = '⚠ relayhouse monitor';
    for (const id of ['group-upstream', 'group-store', 'group-relay']) setState($(id), 'unknown');
    setState($('upstream-badge'), 'unknown');
    setText('upstream-badge', 'Unknown');
  }

  function sampleCharts(h) {
    const t = Date.now();
    const prev = lastHealth;
    let rateIn = null, rateOut = null;
    if (prev && prev.h.epoch === h.epoch && h.uptime_s > prev.h.uptime_s) {
      const dt = h.uptime_s - prev.h.uptime_s; // the relay's own clock: no network jitter
      if (h.last_seq >= prev.h.last_seq) rateIn = (h.last_seq - prev.h.last_seq) / dt;
      if (typeof h.delivered === 'number' && h.delivered >= prev.h.delivered) rateOut = (h.delivered - prev.h.delivered) / dt;
    }
    charts.in.push(t, rateIn);
    charts.out.push(t, rateOut);
    charts.clients.push(t, typeof h.clients === 'number' ? h.clients : null);
    lastHealth = { t, h };
    setChartSpanText(t);
  }

  function setChartSpanText(now) {
    const span = chartSpan(charts.in.samples, now);
    setText('charts-span', span >= CHART_WINDOW_MS ? 'last 5 minutes'
      : span <= CHART_MIN_SPAN_MS ? 'last 20 seconds' : `since ${fmtTime(now - span).slice(0, 8)}`);
  }

  async function pollHealth() {
    const controller = new AbortController();
    const timer = window.setTimeout(() => controller.abort(), HEALTH_TIMEOUT_MS);
    try {
      const response = await fetch('/health', { cache: 'no-store', signal: controller.signal, headers: { Accept: 'application/json' } });
      const h = await response.json();
      renderHealth(h);
      noteChanges(h);
      sampleCharts(h);
    } catch (err) {
      renderUnreachable(err && err.name === 'AbortError' ? '/health did not answer in time' : '/health did not answer');
      if (!seen || seen.reachable) logActivity('Relay unreachable', 'bad');
      seen = { ...(seen || {}), reachable: false };
      const t = Date.now();
      charts.in.push(t, null);
      charts.out.push(t, null);
      charts.clients.push(t, null);
      lastHealth = null;
    } finally {
      window.clearTimeout(timer);
      window.setTimeout(pollHealth, HEALTH_INTERVAL_MS);
    }
  }

  // -- event rows (feed and search results) ---------------------------------

  const rowEvents = new WeakMap(); // <li> -> event, for the full JSON on demand

  function compactData(target, ev) {
    const data = ev.data;
    if (ev.raw) target.append(el('span', 'raw-tag', 'raw'));
    if (data && typeof data === 'object' && !Array.isArray(data)) {
      let length = 0;
      for (const [key, value] of Object.entries(data)) {
        if (TOPIC_FIELDS.has(key) && typeof value !== 'object') continue;
        if (length > 300) { target.append('…'); break; }
        let text = typeof value === 'string' ? value : JSON.stringify(value);
        if (text.length > 80) text = `${text.slice(0, 79)}…`;
        target.append(el('span', 'k', `${key}=`), `${text}  `);
        length += key.length + text.length + 3;
      }
      if (ev.enrichment) target.append(el('span', 'k', '+enrichment'));
    } else {
      let text = typeof data === 'string' ? data : JSON.stringify(data);
      if (text && text.length > 400) text = `${text.slice(0, 399)}…`;
      target.append(text === undefined ? '' : text);
    }
  }

  function eventItem(ev, fresh) {
    const li = el('li', fresh ? 'ev fresh' : 'ev');
    li.dataset.seq = String(ev.seq);
    li.dataset.topic = String(ev.topic);
    const row = el('button', 'ev-row');
    row.type = 'button';
    row.tabIndex = -1;
    row.setAttribute('aria-expanded', 'false');
    const seq = el('span', 'c-seq', String(ev.seq));
    const time = el('span', 'c-time', fmtTime(ev.ts));
    const topic = el('span', 'c-topic', String(ev.topic));
    const data = el('span', 'c-data');
    compactData(data, ev);
    row.append(seq, time, topic, data);
    li.append(row);
    rowEvents.set(li, ev);
    return li;
  }

  function markerItem(text, kind) {
    const li = el('li', `marker ${kind || ''}`.trim());
    li.append(el('span', '', text));
    return li;
  }

  function toggleRow(row) {
    const li = row.parentElement;
    const open = row.getAttribute('aria-expanded') === 'true';
    let pre = li.querySelector('.ev-json');
    if (open) {
      row.setAttribute('aria-expanded', 'false');
      if (pre) pre.hidden = true;
      return;
    }
    if (!pre) {
      pre = el('pre', 'ev-json', JSON.stringify(rowEvents.get(li), null, 2));
      pre.tabIndex = -1;
      li.append(pre);
    }
    pre.hidden = false;
    row.setAttribute('aria-expanded', 'true');
  }

  /** Click or Enter expands; arrow keys, Home and End move (one tab stop per list). */
  function setupEventList(list) {
    const state = { active: null };
    const rows = () => list.querySelectorAll('.ev-row');
    const activate = (row, focus) => {
      if (state.active && state.active !== row) state.active.tabIndex = -1;
      state.active = row;
      if (row) {
        row.tabIndex = 0;
        if (focus) row.focus();
      }
    };
    list.addEventListener('click', (e) => {
      const row = e.target.closest('.ev-row');
      if (!row) return;
      activate(row, false);
      toggleRow(row);
    });
    list.addEventListener('focusin', (e) => {
      const row = e.target.closest('.ev-row');
      if (row && row !== state.active) activate(row, false);
    });
    list.addEventListener('keydown', (e) => {
      const row = e.target.closest('.ev-row');
      if (!row) return;
      const all = Array.from(rows());
      const i = all.indexOf(row);
      let next = null;
      if (e.key === 'ArrowDown') next = all[i + 1];
      else if (e.key === 'ArrowUp') next = all[i - 1];
      else if (e.key === 'Home') next = all[0];
      else if (e.key === 'End') next = all[all.length - 1];
      else if (e.key === 'PageDown') next = all[Math.min(all.length - 1, i + 10)];
      else if (e.key === 'PageUp') next = all[Math.max(0, i - 10)];
      else return;
      e.preventDefault();
      if (next) activate(next, true);
    });
    return {
      /** After rows were added or removed: keep exactly one row reachable with Tab. */
      settle() {
        if (!state.active || !state.active.isConnected) activate(list.querySelector('.ev-row'), false);
      },
    };
  }

  // -- live feed ---------------------------------------------------------------

  const feed = {
    list: $('feed-list'),
    pending: [],        // events and markers not drawn yet, oldest first
    skipped: 0,         // events dropped from `pending` while the view was held
    frozenNew: 0,       // events that arrived since the view was paused or held
    paused: false,
    received: 0,
    arrivals: [],       // [ms, count] of the last seconds, for the ev/s figure
    nav: null,
  };
  feed.nav = setupEventList(feed.list);

  const holding = () => feed.list.scrollTop > 2;
  const frozen = () => feed.paused || holding();

  function feedPush(item) {
    feed.pending.push(item);
    const excess = feed.pending.length - FEED_MAX_ROWS;
    if (excess > 0) {
      feed.skipped += feed.pending.slice(0, excess).filter((i) => i.ev).length;
      feed.pending.splice(0, excess);
    }
  }

  function feedEvents(events) {
    if (!events.length) return;
    for (const ev of events) feedPush({ ev });
    feed.received += events.length;
    if (frozen()) feed.frozenNew += events.length;
    feed.arrivals.push([Date.now(), events.length]);
  }

  function feedMarker(text, kind) {
    feedPush({ marker: text, kind });
  }

  function clearFeed() {
    feed.pending = [];
    feed.skipped = 0;
    feed.frozenNew = 0;
    feed.list.replaceChildren();
    feed.nav.settle();
    $('feed-empty').hidden = false;
    $('feed-newer').hidden = true;
  }

  function renderFeed() {
    renderStreamBar();
    if (!feed.pending.length) return;
    if (frozen()) {
      const newer = $('feed-newer');
      if (!feed.paused && feed.frozenNew) {
        newer.hidden = false;
        setText(newer, `↑ ${fmtInt(feed.frozenNew)} newer event${feed.frozenNew === 1 ? '' : 's'}`);
      }
      return;
    }
    const items = feed.pending;
    feed.pending = [];
    const fragment = document.createDocumentFragment();
    const flash = items.length <= 30; // a flood is not highlighted row by row
    for (let i = items.length - 1; i >= 0; i -= 1) {
      const item = items[i];
      fragment.append(item.ev ? eventItem(item.ev, flash) : markerItem(item.marker, item.kind));
    }
    if (feed.skipped) {
      fragment.append(markerItem(`${fmtInt(feed.skipped)} events not shown while the view was held — search the cache to see them`, 'info'));
      feed.skipped = 0;
    }
    const list = feed.list;
    // An open row is being read: keep it where it is (the view then holds).
    const keepPlace = list.querySelector('.ev-row[aria-expanded="true"]') !== null;
    const before = list.scrollHeight;
    for (const old of list.querySelectorAll('.ev.fresh')) old.classList.remove('fresh');
    list.prepend(fragment);
    if (keepPlace) list.scrollTop += list.scrollHeight - before;
    while (list.childElementCount > FEED_MAX_ROWS) list.lastElementChild.remove();
    feed.frozenNew = 0;
    feed.nav.settle();
    $('feed-empty').hidden = list.childElementCount > 0;
    $('feed-newer').hidden = true;
  }

  function feedRate() {
    const now = Date.now();
    while (feed.arrivals.length && feed.arrivals[0][0] < now - 5000) feed.arrivals.shift();
    let n = 0;
    for (const [, count] of feed.arrivals) n += count;
    return n / 5;
  }

  function renderStreamBar() {
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

  function setPaused(paused) {
    feed.paused = paused;
    if (paused) feed.frozenNew = 0;
    $('pause').setAttribute('aria-pressed', String(paused));
    renderFeed();
  }

  function setupFeedControls() {
    $('pause').addEventListener('click', () => setPaused(!feed.paused));
    $('feed-rate').addEventListener('change', (e) => {
      const value = e.target.value;
      const url = new URL(window.location.href);
      if (value) url.searchParams.set('max_hz', value); else url.searchParams.delete('max_hz');
      window.history.replaceState(null, '', url);
      stream.setRate(value ? Number(value) : null);
    });
    $('feed-newer').addEventListener('click', () => {
      feed.list.scrollTop = 0;
      renderFeed();
    });
    feed.list.addEventListener('scroll', () => {
      if (!holding() && !feed.paused && feed.pending.length) renderFeed();
    }, { passive: true });
    $('filter-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const input = $('filter-topics');
      const parsed = parsePatterns(input.value);
      if (parsed.error) {
        input.setAttribute('aria-invalid', 'true');
        setText('filter-error', parsed.error);
        input.focus();
        return;
      }
      input.removeAttribute('aria-invalid');
      setText('filter-error', '');
      input.value = parsed.patterns.join(', ');
      const url = new URL(window.location.href);
      if (parsed.patterns.length === 1 && parsed.patterns[0] === '*') url.searchParams.delete('topics');
      else url.searchParams.set('topics', parsed.patterns.join(','));
      window.history.replaceState(null, '', url);
      stream.subscribe(parsed.patterns);
    });
    window.setInterval(renderFeed, RENDER_INTERVAL_MS);
  }

  // -- the /ws stream ----------------------------------------------------------

  const stream = {
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

  // -- tools: tabs -------------------------------------------------------------

  const tabHooks = {};

  function setupTabs() {
    const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
    const select = (tab, focus) => {
      for (const t of tabs) {
        const on = t === tab;
        t.setAttribute('aria-selected', String(on));
        t.tabIndex = on ? 0 : -1;
        $(t.getAttribute('aria-controls')).hidden = !on;
      }
      if (focus) tab.focus();
      const hook = tabHooks[tab.id];
      if (hook) hook();
    };
    tabs.forEach((tab, i) => {
      tab.addEventListener('click', () => select(tab, false));
      tab.addEventListener('keydown', (e) => {
        let next = null;
        if (e.key === 'ArrowRight') next = tabs[(i + 1) % tabs.length];
        else if (e.key === 'ArrowLeft') next = tabs[(i - 1 + tabs.length) % tabs.length];
        else if (e.key === 'Home') next = tabs[0];
        else if (e.key === 'End') next = tabs[tabs.length - 1];
        if (next) {
          e.preventDefault();
          select(next, true);
        }
      });
    });
  }

  function showResult(id, text, bad) {
    const node = $(id);
    setText(node, text);
    node.classList.toggle('is-bad', Boolean(bad));
  }

  // -- tools: search -----------------------------------------------------------

  function setupSearch() {
    const results = $('search-results');
    const nav = setupEventList(results);
    $('search-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const params = new URLSearchParams();
      const q = $('search-q').value.trim();
      const field = $('search-field').value.trim();
      const value = $('search-value').value;
      const topics = $('search-topics').value.trim();
      const limit = $('search-limit').value.trim() || '50';
      if (field && !value) return showResult('search-summary', 'Give a value for the field (or clear the field).', true);
      if (!field && value) return showResult('search-summary', 'Give the field whose value must match.', true);
      if (!/^\d+$/.test(limit) || Number(limit) < 1 || Number(limit) > 1000) {
        return showResult('search-summary', 'Limit must be a whole number from 1 to 1000.', true);
      }
      if (topics) {
        const parsed = parsePatterns(topics);
        if (parsed.error) return showResult('search-summary', `Topics: ${parsed.error}`, true);
        params.set('topics', parsed.patterns.join(','));
      }
      if (q) params.set('q', q);
      if (field) { params.set('field', field); params.set('value', value); }
      params.set('limit', limit);
      showResult('search-summary', 'Searching…');
      const res = await api('GET', `/cache/search?${params}`);
      if (!res.ok || !res.data || !Array.isArray(res.data.events)) {
        const failure = describeFailure(res);
        showResult('search-summary', `Search failed: ${failure.head} — ${failure.message}`, true);
        return;
      }
      const events = res.data.events;
      results.replaceChildren(...events.slice().reverse().map((ev) => eventItem(ev, false)));
      nav.settle();
      $('search-frame').hidden = events.length === 0;
      const limited = events.length >= Number(limit) ? ` (the most recent ${limit})` : '';
      showResult('search-summary', events.length
        ? `${fmtInt(events.length)} matching event${events.length === 1 ? '' : 's'} in the cache${limited}, newest first.`
        : 'No cached event matches.');
    });
  }

  // -- tools: cache ------------------------------------------------------------

  async function loadCacheStats() {
    const res = await api('GET', '/cache/stats');
    if (!res.ok || !res.data) return;
    const s = res.data;
    setText('cache-items', `${fmtInt(s.items)} of at most ${fmtInt(s.max_items)}`);
    setText('cache-valid', fmtInt(s.valid_items));
    setText('cache-ttl', `${fmtInt(s.ttl_seconds)} s (${fmtDuration(s.ttl_seconds)})`);
    setText('cache-range', s.oldest_seq === null || s.oldest_seq === undefined ? 'empty' : `${fmtInt(s.oldest_seq)} – ${fmtInt(s.newest_seq)}`);
    setText('cache-bytes', fmtBytes(s.bytes));
    setText('cache-flow', `${fmtInt(s.added)} / ${fmtInt(s.evicted)} / ${fmtInt(s.expired)}`);
    setText('cache-hits', `${fmtInt(s.hits)} / ${fmtInt(s.misses)}`);
    const items = $('cache-items');
    items.dataset.items = String(s.items);
  }

  async function loadCacheConfig() {
    const res = await api('GET', '/cache/config');
    if (!res.ok || !res.data) return;
    for (const [id, key] of [['config-ttl', 'ttl_seconds'], ['config-max', 'max_items']]) {
      const input = $(id);
      if (document.activeElement !== input && input.dataset.dirty !== 'true') input.value = String(res.data[key]);
    }
  }

  function adminFailureText(res) {
    const failure = describeFailure(res);
    if (res.status === 403) return `${failure.head}: ${failure.message}. Open the monitor from the relay's own host, or set ADMIN_TOKEN.`;
    if (res.status === 401) return `${failure.head}: no admin token given.`;
    return `${failure.head}: ${failure.message}`;
  }

  function setupCache() {
    let statsTimer = null;
    tabHooks['tab-cache'] = () => {
      loadCacheStats();
      loadCacheConfig();
      window.clearInterval(statsTimer);
      statsTimer = window.setInterval(() => {
        if ($('panel-cache').hidden) window.clearInterval(statsTimer);
        else loadCacheStats();
      }, 5000);
    };
    $('cache-refresh').addEventListener('click', () => { loadCacheStats(); loadCacheConfig(); });
    for (const id of ['config-ttl', 'config-max']) {
      $(id).addEventListener('input', () => { $(id).dataset.dirty = 'true'; });
    }

    $('config-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const body = {};
      for (const [id, key, hi, name] of [['config-ttl', 'ttl_seconds', 31536000, 'TTL'], ['config-max', 'max_items', 10000000, 'Max items']]) {
        const text = $(id).value.trim();
        if (!text) continue;
        const n = Number(text);
        if (!Number.isInteger(n) || n < 1 || n > hi) {
          $(id).setAttribute('aria-invalid', 'true');
          return showResult('config-result', `${name} must be a whole number from 1 to ${fmtInt(hi)}.`, true);
        }
        $(id).removeAttribute('aria-invalid');
        body[key] = n;
      }
      if (!Object.keys(body).length) return showResult('config-result', 'Give a TTL and/or a max item count.', true);
      showResult('config-result', 'Applying…');
      const res = await api('PUT', '/cache/config', { body, admin: true });
      if (!res.ok || !res.data) return showResult('config-result', adminFailureText(res), true);
      for (const id of ['config-ttl', 'config-max']) delete $(id).dataset.dirty;
      $('config-ttl').value = String(res.data.ttl_seconds);
      $('config-max').value = String(res.data.max_items);
      showResult('config-result', `Applied: TTL ${fmtInt(res.data.ttl_seconds)} s, at most ${fmtInt(res.data.max_items)} events.`);
      logActivity(`Cache limits set: TTL ${fmtInt(res.data.ttl_seconds)} s, max ${fmtInt(res.data.max_items)}`, 'info');
      loadCacheStats();
    });

    const confirmBox = $('clear-confirm');
    $('clear-start').addEventListener('click', () => {
      const items = lastHealth && lastHealth.h.cache ? lastHealth.h.cache.items : null;
      setText('clear-question', items === null ? 'Clear every cached event?' : `Clear all ${fmtInt(items)} cached events?`);
      confirmBox.hidden = false;
      $('clear-start').hidden = true;
      $('clear-no').focus();
    });
    const closeConfirm = () => {
      confirmBox.hidden = true;
      $('clear-start').hidden = false;
      $('clear-start').focus();
    };
    $('clear-no').addEventListener('click', closeConfirm);
    confirmBox.addEventListener('keydown', (e) => { if (e.key === 'Escape') closeConfirm(); });
    $('clear-yes').addEventListener('click', async () => {
      showResult('clear-result', 'Clearing…');
      const res = await api('DELETE', '/cache', { admin: true });
      closeConfirm();
      if (!res.ok || !res.data) return showResult('clear-result', adminFailureText(res), true);
      showResult('clear-result', `Cleared ${fmtInt(res.data.cleared)} event${res.data.cleared === 1 ? '' : 's'} from the cache.`);
      toast(`Cache cleared (${fmtInt(res.data.cleared)} events).`, 'ok', 4000);
      logActivity(`Cache cleared (${fmtInt(res.data.cleared)} events)`, 'info');
      loadCacheStats();
    });
  }

  // -- tools: SQL console --------------------------------------------------

  function showSqlError(title, body) {
    $('sql-table-wrap').hidden = true;
    setText('sql-error-title', title);
    setText('sql-error-body', body);
    $('sql-error').hidden = false;
    showResult('sql-summary', ''); // the alert box says it
  }

  function sqlFailureTitle(res) {
    const failure = describeFailure(res);
    const why = {
      0: 'the relay did not answer',
      400: 'the query was refused',
      401: 'an API token is needed',
      404: 'this relay does not serve /query',
      503: 'there is no store to query',
      504: 'the query timed out',
    }[res.status] || 'the query failed';
    return `Query failed: ${why} (${failure.head})`;
  }

  function renderSqlTable(result) {
    const columns = result.columns;
    const numeric = columns.map((c) => /Int|Float|Decimal/.test(String(c.type || '')));
    const thead = $('sql-table').tHead;
    const tbody = $('sql-table').tBodies[0];
    const head = el('tr');
    for (const c of columns) {
      const th = el('th', '', String(c.name));
      th.scope = 'col';
      th.append(el('small', '', String(c.type || '')));
      head.append(th);
    }
    thead.replaceChildren(head);
    const fragment = document.createDocumentFragment();
    for (const row of result.rows.slice(0, SQL_MAX_ROWS_SHOWN)) {
      const tr = el('tr');
      row.forEach((cell, i) => {
        let td;
        if (cell === null) td = el('td', 'null', 'NULL');
        else td = el('td', numeric[i] ? 'n' : '', typeof cell === 'object' ? JSON.stringify(cell) : String(cell));
        if (td.textContent.length > 60) td.title = td.textContent.slice(0, 2000);
        tr.append(td);
      });
      fragment.append(tr);
    }
    tbody.replaceChildren(fragment);
    $('sql-error').hidden = true;
    $('sql-table-wrap').hidden = false;
    const count = typeof result.row_count === 'number' ? result.row_count : result.rows.length;
    const parts = [`${fmtInt(count)} row${count === 1 ? '' : 's'}`];
    if (typeof result.elapsed_ms === 'number') parts.push(`${fmtRate(result.elapsed_ms)} ms`);
    if (result.truncated) parts.push('truncated at the relay\'s row limit');
    if (result.rows.length > SQL_MAX_ROWS_SHOWN) parts.push(`showing the first ${fmtInt(SQL_MAX_ROWS_SHOWN)}`);
    showResult('sql-summary', parts.join(' · '));
  }

  function setupSql() {
    const form = $('sql-form');
    const text = $('sql-text');
    const button = form.querySelector('button[type="submit"]');
    for (const chip of document.querySelectorAll('.chip[data-sql]')) {
      chip.addEventListener('click', () => {
        text.value = chip.dataset.sql;
        $('sql-params').value = chip.dataset.params || '';
        text.focus();
      });
    }
    text.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const sql = text.value.trim();
      if (!sql) return showSqlError('Nothing to run', 'Type a read-only query first, e.g. SHOW TABLES.');
      const body = { sql };
      const rawParams = $('sql-params').value.trim();
      if (rawParams) {
        let params;
        try {
          params = JSON.parse(rawParams);
        } catch (err) {
          return showSqlError('Parameters are not valid JSON', String(err.message || err));
        }
        if (!params || typeof params !== 'object' || Array.isArray(params)) {
          return showSqlError('Parameters must be a JSON object', 'e.g. {"topic": "T.AAPL"} fills %(topic)s');
        }
        body.params = params;
      }
      button.disabled = true;
      showResult('sql-summary', 'Running…');
      const res = await api('POST', '/query', { body, timeoutMs: 120000 });
      button.disabled = false;
      if (res.ok && res.data && Array.isArray(res.data.columns) && Array.isArray(res.data.rows)) {
        renderSqlTable(res.data);
      } else {
        showSqlError(sqlFailureTitle(res), describeFailure(res).body);
      }
    });
  }

  // -- keyboard ----------------------------------------------------------------

  function setupShortcuts() {
    document.addEventListener('keydown', (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
      const target = e.target;
      if (target.closest('input, textarea, select, dialog, [contenteditable="true"]')) return;
      if (e.key === 'p' || e.key === 'P') {
        e.preventDefault();
        setPaused(!feed.paused);
      } else if (e.key === '/') {
        e.preventDefault();
        $('filter-topics').focus();
        $('filter-topics').select();
      }
    });
  }

  // -- start -----------------------------------------------------------------

  function start() {
    setupDialogs();
    setupFeedControls();
    setupTabs();
    setupSearch();
    setupCache();
    setupSql();
    setupShortcuts();
    $('retry-now').addEventListener('click', () => {
      stream.attempt = 0;
      stream.connect();
    });
    const fromUrl = new URL(window.location.href).searchParams.get('topics');
    if (fromUrl) {
      const parsed = parsePatterns(fromUrl);
      if (!parsed.error) stream.topics = parsed.patterns;
    }
    $('filter-topics').value = stream.topics.join(', ');
    const rateFromUrl = Number(new URL(window.location.href).searchParams.get('max_hz'));
    if (rateFromUrl > 0 && rateFromUrl <= 1000) {
      stream.maxHz = rateFromUrl;
      const option = [...$('feed-rate').options].find((o) => Number(o.value) === rateFromUrl);
      if (!option) $('feed-rate').add(new Option(`${rateFromUrl} / s per topic`, String(rateFromUrl)));
      $('feed-rate').value = String(rateFromUrl);
    }
    window.matchMedia('(prefers-color-scheme: light)').addEventListener('change', () => {
      for (const chart of Object.values(charts)) chart.draw();
    });
    window.setInterval(() => stream.heartbeat(), 5000);
    stream.connect();
    pollHealth();
    renderStreamBar();
  }

  // what the Clients tab (monitor-clients.js, loaded after this file) builds on
  window.relayhouseMonitor = Object.freeze({
    $, el, setText, fmtInt, fmtBytes, fmtDuration, api, describeFailure, showResult, tabHooks,
  });

  start();
})();
