// CLOCK_MONOTONIC in ms (process.hrtime), read through the cheaper performance.now(), shared by
// upstream.js and subscribers.js so that a latency between two Node processes is measured on one
// clock. The offset between them is taken after a first call of each (the first performance.now()
// loads its module, ~1 ms, which a one-shot `hrtime - performance.now()` folded into the offset:
// every process then read 0.8-1.2 ms behind the real clock, a different amount per process, so a
// latency between two processes carried a per-run bias of up to ~0.4 ms), as the best of 50
// bracketed samples.
'use strict';
const { performance } = require('perf_hooks');

function monoOffset() {
  performance.now();
  process.hrtime.bigint();
  let best = Infinity, offset = 0;
  for (let i = 0; i < 50; i++) {
    const a = performance.now();
    const h = Number(process.hrtime.bigint()) / 1e6;
    const b = performance.now();
    if (b - a < best) { best = b - a; offset = h - (a + b) / 2; }
  }
  return offset;
}

const MONO_OFFSET = monoOffset();
const monoMs = () => performance.now() + MONO_OFFSET;

module.exports = { monoMs };
