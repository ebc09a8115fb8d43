/* relayhouse monitor: the Clients tab, this worker's clients and their delivery modes (GET /clients).
 * Topic patterns come from clients and are only ever written with textContent, never as HTML. */

import { api, describeFailure } from './monitor-api.js';
import { $, el, setText, showResult } from './monitor-dom.js';
import { fmtBytes, fmtDuration, fmtInt } from './monitor-format.js';
import { tabHooks } from './monitor-tools.js';

const REFRESH_MS = 5000;
const LIMIT = 100;
const MODE_HELP = {
  live: 'live: every event',
  rate: 'rate: at most max_hz events per topic per second, the newest winning',
  conflated: 'conflated: a slow client (on_slow=conflate) kept on the newest value of each topic',
};

function fmtHz(hz) {
  if (typeof hz !== 'number') return 'every event';
  if (hz >= 1) return `${fmtInt(hz)} / s per topic`;
  return `1 / ${fmtInt(Math.round(10 / hz) / 10)} s per topic`;
}

function modeCell(row) {
  const td = el('td', 'c-mode');
  const badge = el('span', `mode-badge mode-${row.mode}`, row.mode);
  badge.title = MODE_HELP[row.mode] || '';
  td.append(badge);
  if (row.on_slow === 'conflate' && row.mode !== 'conflated') td.append(el('small', '', 'conflates if slow'));
  return td;
}

function topicsText(topics) {
  const shown = topics.patterns.join(', ');
  const more = topics.count - topics.patterns.length;
  if (!topics.count) return 'none yet';
  return more > 0 ? `${shown} +${fmtInt(more)} more` : shown;
}

function clientRow(row) {
  const tr = el('tr');
  tr.dataset.id = row.id;
  tr.dataset.mode = row.mode;
  const topics = el('td', 'c-topics', topicsText(row.topics));
  topics.title = topics.textContent.slice(0, 2000);
  const queued = row.queued_events || row.queued_bytes
    ? `${fmtInt(row.queued_events)} ev · ${fmtBytes(row.queued_bytes)}` : '0';
  tr.append(modeCell(row), el('td', '', fmtHz(row.max_hz)), el('td', '', row.transport), topics,
            el('td', 'n', queued), el('td', 'n', row.connected_s === null ? '–' : fmtDuration(row.connected_s)));
  return tr;
}

function summaryText(body) {
  const modes = ['live', 'rate', 'conflated'].filter((k) => body.by_mode[k]).map((k) => `${k} ${fmtInt(body.by_mode[k])}`);
  const noun = body.total === 1 ? 'client' : 'clients';
  return [`Showing ${fmtInt(body.clients.length)} of ${fmtInt(body.total)} ${noun}`, `worker ${body.worker}`, ...modes].join(' · ');
}

function render(body) {
  $('clients-rows').replaceChildren(...body.clients.map(clientRow));
  $('clients-table-wrap').hidden = body.clients.length === 0;
  $('clients-empty').hidden = body.total !== 0;
  $('clients-summary').dataset.total = String(body.total);
  $('clients-summary').dataset.worker = String(body.worker);
  showResult('clients-summary', summaryText(body));
  setText('clients-updated', `updated ${new Date().toLocaleTimeString()}`);
}

let busy = false;

async function load(prompt) {
  if (busy) return;
  busy = true;
  try {
    const res = await api('GET', `/clients?limit=${LIMIT}`, { prompt, timeoutMs: 10000 });
    if (res.ok && res.data && Array.isArray(res.data.clients)) {
      render(res.data);
      return;
    }
    const failure = describeFailure(res);
    const why = res.status === 401 ? 'an API token is needed (Tokens, top right)' : failure.message;
    showResult('clients-summary', `Clients could not be listed: ${failure.head} — ${why}`, true);
  } finally {
    busy = false;
  }
}

/** The Clients tab: listed when it is opened, then every REFRESH_MS while it stays open. */
export function setupClients() {
  let timer = null;
  tabHooks['tab-clients'] = () => {
    load(true);
    window.clearInterval(timer);
    timer = window.setInterval(() => {
      if ($('panel-clients').hidden) window.clearInterval(timer);
      else if (!document.hidden) load(false);
    }, REFRESH_MS);
  };
  $('clients-refresh').addEventListener('click', () => load(true));
}
