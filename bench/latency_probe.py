"""Where a light-load event's latency goes: relayhouse under bench/latency_probe.conf.py at one fan-out
point, the probe's stage timestamps summed up beside the subscriber's end-to-end figures.

    .venv/bin/python bench/latency_probe.py [--clients 100] [--rate 50] [--duration 10] [--env K=V ...]

Stages (ms, CLOCK_MONOTONIC, per event): sent -> read (upstream reader hands the frame to the
ingest), read -> publish (ingest: parse, number, cache, bus), publish -> flush start (the
flusher's wake-up), flush start -> flush end (every client's write). Also the garbage
collections and the event loop's lateness during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs  # noqa: E402
from run import Bench  # noqa: E402


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q / 100 * len(values)))], 3)


def summarize(probe: dict, t0_ms: float | None = None) -> dict:
    rows = [r for r in probe["stages"].values() if None not in r]
    stages = {"sent_to_read": [r[1] - r[0] for r in rows], "read_to_publish": [r[2] - r[1] for r in rows],
              "publish_to_flush": [r[3] - r[2] for r in rows], "flush": [r[4] - r[3] for r in rows],
              "sent_to_written": [r[4] - r[0] for r in rows]}
    out = {name: {q: pct(v, q) for q in (50, 90, 99, 100)} for name, v in stages.items()}
    out["events"] = len(rows)
    out["batch_sizes"] = {q: pct([r[5] for r in rows], q) for q in (50, 99, 100)}
    worst = sorted(rows, key=lambda r: r[4] - r[0])[-5:]
    out["worst"] = [[round(r[1] - r[0], 2), round(r[2] - r[1], 2), round(r[3] - r[2], 2), round(r[4] - r[3], 2)]
                    for r in worst]
    if rows:
        first, last = min(r[0] for r in rows), max(r[4] for r in rows)
        gcs = [g for g in probe["gc"] if first <= g[0] <= last]
        lags = [x for x in probe["lags"] if first <= x[0] <= last]
        out["gc"] = {"count_by_gen": {str(gen): sum(1 for g in gcs if g[1] == gen) for gen in (0, 1, 2)},
                     "max_ms": round(max((g[2] for g in gcs), default=0), 3),
                     "total_ms": round(sum(g[2] for g in gcs), 2)}
        out["loop_lag"] = {"over_0.5ms": len(lags), "max_ms": max((x[1] for x in lags), default=0)}
    out["gc_threshold"], out["gc_frozen"] = probe.get("gc_threshold"), probe.get("gc_frozen")
    out["releases"] = release_spacing(probe.get("releases", []))
    flushes = probe.get("flushes") or []
    if flushes:
        # wall time against the worker's own CPU time per flush: the difference is the worker
        # descheduled (or waiting) mid-flush, which the pacing's cost/share rule counts as cost
        out["flush_wall_ms"] = {q: pct([f[1] for f in flushes], q) for q in (50, 90, 99, 100)}
        out["flush_cpu_ms"] = {q: pct([f[2] for f in flushes], q) for q in (50, 90, 99, 100)}
        out["flushes"] = len(flushes)
    out["threads"] = probe.get("threads")
    return out


def release_spacing(releases: list) -> dict | None:
    """Per `max_hz` group, consecutive releases: the least time from one's last write to the next one's
    first (a lower bound of the gap between any one client's two writes) and from start to start."""
    by_group: dict = {}
    for gid, start, end in releases:
        by_group.setdefault(gid, []).append((start, end))
    gaps = [b[0] - a[1] for rs in by_group.values() for a, b in zip(rs, rs[1:], strict=False)]
    starts = [b[0] - a[0] for rs in by_group.values() for a, b in zip(rs, rs[1:], strict=False)]
    if not gaps:
        return None
    return {"releases": len(releases), "min_end_to_start_ms": round(min(gaps), 2),
            "min_start_to_start_ms": round(min(starts), 2), "max_write_ms": round(max(e - s for _, s, e in releases), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], help="K=V for the relay (repeatable)")
    parser.add_argument("--nchan", action="store_true", help="an nchan run after each relay run")
    parser.add_argument("--root", help="the checkout to run (default: this one), e.g. a `git archive` of another revision")
    args = parser.parse_args()
    if args.root:
        procs.Relayhouse.root = Path(args.root).resolve()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = procs.BENCH / "results" / f"{stamp}-latency-probe"
    bench = Bench(argparse.Namespace(out=str(out), quick=False, only="latency-probe", systems="relayhouse",
                                     duration=args.duration))
    bench.relay_config = str(procs.BENCH / "latency_probe.conf.py")
    env = dict(kv.split("=", 1) for kv in args.env)
    for _ in range(args.rounds):
        probe_dir = out / f"probe-{bench.n + 1:03d}"
        probe_dir.mkdir(parents=True, exist_ok=True)
        rec = bench.fanout("relayhouse", args.clients, args.rate, deflate=False, duration_s=args.duration,
                           scenario="latency-probe", env={**env, "PROBE_DIR": str(probe_dir)})
        files = sorted(probe_dir.glob("latency-*.json"))
        if files:
            rec["probe"] = summarize(json.loads(files[0].read_text()))
            print(json.dumps({"latency_ms": rec.get("latency_ms"), "relay_receive_ms": rec.get("relay_receive_ms"),
                              "cpu": rec.get("cpu_pct"), **rec["probe"]}, indent=1))
        if args.nchan:
            bench.fanout("nchan", args.clients, args.rate, deflate=False, duration_s=args.duration, scenario="latency-probe")
        bench.save()
    print(f"results: {out}", file=sys.stderr)
    os.sync()


if __name__ == "__main__":
    main()
