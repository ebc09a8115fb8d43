"""What an event's ingest costs when it comes alone after a quiet spell: the same Python, hot and cold.

    flock /tmp/relayhouse-bench.lock .venv/bin/python bench/cold_ingest.py [--events 200] [--rounds 3]

One process, no relay: the ingest's three steps (handlers.frames.parse_frame of a ~110-byte
upstream frame, handlers.events.number_elements, handlers.cache.EventCache.add), timed one
event at a time with time.perf_counter. Between two events the process either goes straight on
(hot), sleeps a gap (as the worker waits in epoll between events at light load: 20 ms is 50
events/s), or spins for 20 ms in a loop of its own (busy, but not on this code). Medians in
microseconds per event; variants interleaved, order rotated per round. Results:
bench/results/<UTC>-cold-ingest/results.json.

Why: bench/latency_probe.py found ~0.12 ms between the upstream read and the hub at 100 x 50
where the same steps take ~10 µs in a loop (docs/benchmarks.md, "Light load, tenth session").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from handlers.cache import EventCache  # noqa: E402
from handlers.events import number_elements  # noqa: E402
from handlers.frames import parse_frame  # noqa: E402

STEPS = ("parse", "number", "cache")
VARIANTS = {"hot": ("sleep", 0.0), "sleep 0.1 ms": ("sleep", 0.0001), "sleep 1 ms": ("sleep", 0.001),
            "sleep 5 ms": ("sleep", 0.005), "sleep 20 ms": ("sleep", 0.02), "spin 20 ms": ("spin", 0.02)}


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def run(cache: EventCache, first_seq: int, events: int, how: str, gap_s: float) -> list[tuple[float, ...]]:
    """Per event: the seconds each step took."""
    timings = []
    for i in range(events):
        payload = orjson.dumps({"sym": f"S{i % 10}", "p": 1.25 + i, "s": 100, "t": time.monotonic() * 1000,
                                "ev": "T", "c": [1, 2]})
        t0 = time.perf_counter()
        parsed = parse_frame(payload, binary=False, max_bytes=1 << 20)
        t1 = time.perf_counter()
        events_ = number_elements(list(parsed.elements), first_seq + i, int(time.time() * 1000), ("sym", "ev"))
        t2 = time.perf_counter()
        cache.add(events_, events_[-1].ts)
        t3 = time.perf_counter()
        timings.append((t1 - t0, t2 - t1, t3 - t2))
        if how == "spin":
            spin(gap_s)
        elif gap_s:
            time.sleep(gap_s)
    return timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200, help="events per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cache = EventCache(10_000, 3600)
    seq = 1
    samples: dict[str, list[tuple[float, ...]]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            how, gap = VARIANTS[name]
            samples[name] += run(cache, seq, args.events, how, gap)
            seq += args.events
    out = {}
    for name, rows in samples.items():
        med = {step: round(statistics.median(row[i] for row in rows) * 1e6, 2) for i, step in enumerate(STEPS)}
        med["total"] = round(statistics.median(sum(row) for row in rows) * 1e6, 2)
        out[name] = med
        print(f"{name:13s} " + "  ".join(f"{k} {v:7.2f} us" for k, v in med.items()))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = ROOT / "bench" / "results" / f"{stamp}-cold-ingest"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps({"events": args.events, "rounds": args.rounds, "medians_us": out},
                                                  indent=1))
    print(dest)


if __name__ == "__main__":
    main()
