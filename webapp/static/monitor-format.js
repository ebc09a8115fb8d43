/* relayhouse monitor: numbers, sizes, durations and times as the page shows them, and topic patterns
 * checked as the relay checks them. Pure: no DOM, no network. */

const intFormat = new Intl.NumberFormat('en-US');
export const fmtInt = (n) => (typeof n === 'number' && Number.isFinite(n) ? intFormat.format(n) : '–');

export function fmtRate(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  if (v >= 10000) return `${(v / 1000).toFixed(0)}k`;
  if (v >= 1000) return `${(v / 1000).toFixed(1)}k`;
  if (v >= 10) return String(Math.round(v));
  return v.toFixed(1);
}

export function fmtBytes(n) {
  if (typeof n !== 'number') return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export function fmtDuration(s) {
  if (typeof s !== 'number' || !Number.isFinite(s)) return '–';
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${sec} s`;
  return `${sec} s`;
}

export function fmtAge(s) {
  if (s < 10) return `${s.toFixed(1)} s ago`;
  if (s < 60) return `${Math.round(s)} s ago`;
  return `${fmtDuration(s)} ago`;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');
export function fmtTime(ms) {
  const d = new Date(ms);
  if (Number.isNaN(d.getTime())) return '–';
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function clockNow() { return fmtTime(Date.now()).slice(0, 8); }

/** Topic patterns as the relay accepts them: exact, prefix ending in '*', or '*'. */
export function parsePatterns(text) {
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
