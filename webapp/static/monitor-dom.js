/* relayhouse monitor: the small DOM helpers every panel uses, the toasts and the activity log.
 * Text is only ever set with textContent, never as HTML. */

import { clockNow } from './monitor-format.js';

export const $ = (id) => document.getElementById(id);

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function setText(id, text) {
  const node = typeof id === 'string' ? $(id) : id;
  if (node && node.textContent !== text) node.textContent = text;
}

export function setState(node, state) {
  if (node && node.dataset.state !== state) node.dataset.state = state;
}

export function showResult(id, text, bad) {
  const node = $(id);
  setText(node, text);
  node.classList.toggle('is-bad', Boolean(bad));
}

// -- toasts ------------------------------------------------------------------

export function toast(text, kind = 'info', ms = 6000) {
  const box = $('toasts');
  const node = el('div', `toast ${kind}`, text);
  box.append(node);
  while (box.childElementCount > 4) box.firstElementChild.remove();
  window.setTimeout(() => node.remove(), ms);
}

// -- activity log --------------------------------------------------------------

export function logActivity(text, kind = 'info') {
  const list = $('activity');
  const item = el('li', kind);
  const time = el('time', '', clockNow());
  time.dateTime = new Date().toISOString();
  item.append(time, el('span', '', text));
  list.prepend(item);
  while (list.childElementCount > 100) list.lastElementChild.remove();
}
