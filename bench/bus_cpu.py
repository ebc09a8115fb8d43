"""What the Redis bus costs the workers per event: several workers, few clients, builds interleaved.

    flock /tmp/relayhouse-bench.lock .venv/bin/python bench/bus_cpu.py [--rounds 3] [--clients 14]
        [--rate 200] [--workers 7] LABEL=DIR [LABEL=DIR ...]

Each DIR is a checkout of relayhouse (this one, or a `git archive` of another revision with .venv
linked). Per round and build: a fresh `gunicorn` with `WEB_CONCURRENCY` workers on the Redis at
127.0.0.1:6379 (a fresh `REDIS_PREFIX`), the bench's upstream at `--rate` events/s for 15 s, `--clients`
subscribers (bench/run.py's fan-out run); prints the workers' summed CPU in % of one core and the
subscribers' p50 / p99. With few clients the workers' CPU is mostly what each of them pays per event
to read it from the bus. Results: bench/results/<UTC>-bus-cpu/results.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs  # noqa: E402
from run import Bench, drop_prefix  # noqa: E402

REDIS = "redis://127.0.0.1:6379/0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", metavar="LABEL=DIR")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=14)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--workers", type=int, default=7)
    args = ap.parse_args()
    out = procs.BENCH / "results" / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-bus-cpu")
    bench = Bench(argparse.Namespace(out=str(out), quick=False, only="bus-cpu", systems="relayhouse", duration=15))
    builds = [(label, Path(path).resolve()) for label, _, path in (b.partition("=") for b in args.builds)]
    for _ in range(args.rounds):
        for label, root in builds:
            procs.Relayhouse.root = root
            prefix = f"rh-bench-{time.time_ns()}"
            env = {"REDIS_URL": REDIS, "REDIS_PREFIX": prefix, "WEB_CONCURRENCY": str(args.workers),
                   "STARTUP_GRACE_S": "0"}
            rec = bench.fanout("relayhouse", args.clients, args.rate, deflate=False, duration_s=15, env=env,
                               scenario="bus-cpu")
            rec["build"] = label
            drop_prefix(REDIS, prefix)
            lat = rec.get("latency_ms") or {}
            print(f"{label}: workers {rec.get('cpu_pct', {}).get('system')} % of a core, "
                  f"p50 / p99 {lat.get('p50')} / {lat.get('p99')} ms, lost {rec.get('lost')}", flush=True)
    procs.Relayhouse.root = procs.ROOT
    bench.save()
    print(out)


if __name__ == "__main__":
    main()
