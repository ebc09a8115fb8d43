/* relayhouse monitor: event rows as the live feed and the search results show them, and their keyboard
 * navigation. Event data is only ever written with textContent, never as HTML. */

import { el } from './monitor-dom.js';
import { fmtTime } from './monitor-format.js';

// the fields that make up the topic: the feed shows the topic, so the data column skips them
const TOPIC_FIELDS = new Set((document.body.dataset.topicFields || '').split(',').filter(Boolean));

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

export function eventItem(ev, fresh) {
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

export function markerItem(text, kind) {
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
export function setupEventList(list) {
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
