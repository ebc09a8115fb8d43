/* relayhouse monitor: status, live feed, charts and tools for one relay; this module wires the page.
 * Vanilla JS as ES modules, no build step, no network access beyond the relay itself.
 * Event data is only ever written with textContent, never as HTML. */

import { setupDialogs } from './monitor-api.js';
import { setupClients } from './monitor-clients.js';
import { $, setText } from './monitor-dom.js';
import { feed, holding, renderFeed } from './monitor-feed.js';
import { parsePatterns } from './monitor-format.js';
import { charts, pollHealth } from './monitor-health.js';
import { renderStreamBar, stream } from './monitor-stream.js';
import { setupCache, setupSearch, setupSql, setupTabs } from './monitor-tools.js';

const RENDER_INTERVAL_MS = 250;     // the feed is drawn at most 4 times a second

// -- the live feed's controls --------------------------------------------------

/** One frame of the live feed: the stream bar, then the pending rows. */
function redraw() {
  renderStreamBar();
  renderFeed();
}

function setPaused(paused) {
  feed.paused = paused;
  if (paused) feed.frozenNew = 0;
  $('pause').setAttribute('aria-pressed', String(paused));
  redraw();
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
    redraw();
  });
  feed.list.addEventListener('scroll', () => {
    if (!holding() && !feed.paused && feed.pending.length) redraw();
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
  window.setInterval(redraw, RENDER_INTERVAL_MS);
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
  setupDialogs(() => stream.restart());
  setupFeedControls();
  setupTabs();
  setupSearch();
  setupCache();
  setupSql();
  setupClients();
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

start();
