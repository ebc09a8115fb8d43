"""The flush-interval floor: relayhouse with several HUB_FLUSH_INTERVAL_MS beside nginx + nchan, point by point,
alternated in rounds (docs/benchmarks.md, Delivery control).

    .venv/bin/python bench/floor_probe.py [--rounds 2] [--duration 10] [--floors 0,2,5,10] [--points 100x50,100x500]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs  # noqa: E402
from run import Bench  # noqa: E402

FLOORS_MS = ["0", "2", "5", "10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--floors", default=",".join(FLOORS_MS), help="HUB_FLUSH_INTERVAL_MS values, comma-separated")
    parser.add_argument("--points", default="100x50,100x500", help="clients x events/s, comma-separated")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = procs.BENCH / "results" / f"{stamp}-floor"
    bench = Bench(argparse.Namespace(out=str(out), quick=False, only="floor", systems="relayhouse,nchan",
                                     duration=args.duration))
    for _ in range(args.rounds):
        for point in args.points.split(","):
            clients, rate = (int(n) for n in point.lower().split("x"))
            for floor in args.floors.split(","):
                bench.fanout("relayhouse", clients, rate, deflate=False, duration_s=args.duration, scenario="floor",
                             env={"HUB_FLUSH_INTERVAL_MS": floor})
            bench.fanout("nchan", clients, rate, deflate=False, duration_s=args.duration, scenario="floor")
    bench.save()


if __name__ == "__main__":
    main()
