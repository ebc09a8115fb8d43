/* relayhouse monitor: the throughput charts, drawn on a canvas from samples of the last five minutes. */

import { setText } from './monitor-dom.js';

export const CHART_WINDOW_MS = 5 * 60 * 1000;
export const CHART_MIN_SPAN_MS = 20 * 1000;  // a young chart spans what it has, so it never looks empty

function niceCeil(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** How much time a chart spans: what it has seen, between 20 s and 5 minutes. */
export function chartSpan(samples, now) {
  const first = samples.length ? samples[0].t : now;
  return Math.min(CHART_WINDOW_MS, Math.max(CHART_MIN_SPAN_MS, now - first));
}

/** One chart; `gapMs`: samples further apart than this are not joined by a line (the source missed some). */
export class Chart {
  constructor(canvas, valueEl, { label, unit, format, minTop, gapMs }) {
    this.canvas = canvas;
    this.valueEl = valueEl;
    this.label = label;
    this.unit = unit;
    this.format = format;
    this.minTop = minTop;
    this.gapMs = gapMs;
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
      if (s.v === null || (prevT !== null && s.t - prevT > this.gapMs)) {
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
