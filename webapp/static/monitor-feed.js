/* relayhouse monitor: the live feed's list: events waiting to be drawn, drawn at most a few times a
 * second, held while paused or while the reader scrolls. */

import { $, setText } from './monitor-dom.js';
import { eventItem, markerItem, setupEventList } from './monitor-events.js';
import { fmtInt } from './monitor-format.js';

const FEED_MAX_ROWS = 200;          // DOM cap for the live feed

// -- live feed ---------------------------------------------------------------

export const feed = {
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

export const holding = () => feed.list.scrollTop > 2;
const frozen = () => feed.paused || holding();

function feedPush(item) {
  feed.pending.push(item);
  const excess = feed.pending.length - FEED_MAX_ROWS;
  if (excess > 0) {
    feed.skipped += feed.pending.slice(0, excess).filter((i) => i.ev).length;
    feed.pending.splice(0, excess);
  }
}

export function feedEvents(events) {
  if (!events.length) return;
  for (const ev of events) feedPush({ ev });
  feed.received += events.length;
  if (frozen()) feed.frozenNew += events.length;
  feed.arrivals.push([Date.now(), events.length]);
}

export function feedMarker(text, kind) {
  feedPush({ marker: text, kind });
}

export function clearFeed() {
  feed.pending = [];
  feed.skipped = 0;
  feed.frozenNew = 0;
  feed.list.replaceChildren();
  feed.nav.settle();
  $('feed-empty').hidden = false;
  $('feed-newer').hidden = true;
}

/** Draw what is pending, unless the view is held (the stream bar is monitor-stream.js's). */
export function renderFeed() {
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

export function feedRate() {
  const now = Date.now();
  while (feed.arrivals.length && feed.arrivals[0][0] < now - 5000) feed.arrivals.shift();
  let n = 0;
  for (const [, count] of feed.arrivals) n += count;
  return n / 5;
}
