/* relayhouse monitor: the tools panel: its tabs, and the Search cache, Cache and SQL console tabs
 * (the Clients tab is monitor-clients.js). */

import { api, describeFailure } from './monitor-api.js';
import { $, el, logActivity, setText, showResult, toast } from './monitor-dom.js';
import { eventItem, setupEventList } from './monitor-events.js';
import { fmtBytes, fmtDuration, fmtInt, fmtRate, parsePatterns } from './monitor-format.js';
import { cachedItems } from './monitor-health.js';

const SQL_MAX_ROWS_SHOWN = 1000;

// -- tools: tabs -------------------------------------------------------------

export const tabHooks = {};

export function setupTabs() {
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

// -- tools: search -----------------------------------------------------------

export function setupSearch() {
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

export function setupCache() {
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
    const items = cachedItems();
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

export function setupSql() {
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
