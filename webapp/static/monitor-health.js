/* relayhouse monitor: /health polled every second, drawn as the status panels, the charts and the
 * activity log's state changes. */

import { CHART_MIN_SPAN_MS, CHART_WINDOW_MS, Chart, chartSpan } from './monitor-charts.js';
import { $, logActivity, setState, setText } from './monitor-dom.js';
import { fmtAge, fmtBytes, fmtDuration, fmtInt, fmtRate, fmtTime } from './monitor-format.js';

const HEALTH_INTERVAL_MS = 1000;
const HEALTH_TIMEOUT_MS = 3000;
const PAGE_VERSION = (document.querySelector('.brand-version') || {}).textContent || '';

const CHART_GAP_MS = 5 * HEALTH_INTERVAL_MS; // five polls missed: the line breaks

export const charts = {
  in: new Chart($('chart-in'), $('chart-in-value'), { label: 'Events in per second', unit: '/s', format: fmtRate, minTop: 5, gapMs: CHART_GAP_MS }),
  out: new Chart($('chart-out'), $('chart-out-value'), { label: 'Deliveries out per second', unit: '/s', format: fmtRate, minTop: 5, gapMs: CHART_GAP_MS }),
  clients: new Chart($('chart-clients'), $('chart-clients-value'), { label: 'Connected clients', unit: '', format: (v) => fmtInt(Math.round(v)), minTop: 4, gapMs: CHART_GAP_MS }),
};

let lastHealth = null; // { t, h } of the previous answer, for rates
let seen = null;       // what the activity log last knew about the relay

/** How many events the cache held at the last answer of /health, or null when unknown. */
export function cachedItems() {
  return lastHealth && lastHealth.h.cache ? lastHealth.h.cache.items : null;
}

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

export async function pollHealth() {
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
