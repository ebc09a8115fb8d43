"""Before/after: the same relayhouse points on two checkouts, alternated, on the same load generator.

    .venv/bin/python bench/ab.py --before REV [--rounds 2]

REV (a git revision) is exported with `git archive` into a temporary directory and
run with this checkout's .venv; "after" is the working tree. Points: 1000 clients
x 200 and x 500 events/s, 100 x 2000, ingest at 20,000 events/s with the embedded
store, 10,000 idle connections; or, with `--points 100x50,1000x200,...`, those fan-out
points only, and with `--nchan 100x50,...` nginx + nchan after the builds at those points
(each round runs a point on every build, then the next point). Results:
bench/results/<UTC time>-ab/results.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs  # noqa: E402
from run import Bench  # noqa: E402


def export(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(procs.ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / ".venv").symlink_to(procs.ROOT / ".venv")
    return into


def _point(text: str) -> tuple[int, float]:
    clients, rate = text.lower().split("x")
    return int(clients), float(rate)


def points(bench: Bench, roots: dict, args, rnd: int) -> None:
    """One round of --points: each point on every build (and on nchan), back to back."""
    nchan = {_point(p) for p in args.nchan.split(",") if p}
    for text in args.points.split(","):
        clients, rate = _point(text)
        for label in ("before", "after", *(k for k in roots if k not in ("before", "after"))):
            procs.Relayhouse.root = roots[label]
            bench.say(f"round {rnd + 1}: {clients} x {rate:g} on {label} ({roots[label]})")
            rec = bench.fanout("relayhouse", clients, rate, deflate=False, duration_s=args.duration, scenario="ab")
            rec["ab"] = label
        if (clients, rate) in nchan:
            rec = bench.fanout("nchan", clients, rate, deflate=False, duration_s=args.duration, scenario="ab")
            rec["ab"] = "nchan"
        bench.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision to compare the working tree with")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=DIR",
                        help="a third build to measure: a checkout directory (may be given more than once)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--points", help="clients x events/s, comma-separated: these fan-out points only")
    parser.add_argument("--nchan", default="", help="points (among --points) also run on nginx + nchan")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = procs.BENCH / "results" / f"{stamp}-ab"
    bench = Bench(argparse.Namespace(out=str(out), quick=False, only="ab", systems="relayhouse", duration=args.duration))
    roots = {"after": procs.ROOT}
    with tempfile.TemporaryDirectory(prefix="relayhouse-before-") as tmp:
        roots["before"] = export(args.before, Path(tmp))
        bench.results["before_rev"] = subprocess.run(["git", "-C", str(procs.ROOT), "rev-parse", "--short", args.before],
                                                     capture_output=True, text=True).stdout.strip()
        for extra in args.also:
            label, _, path = extra.partition("=")
            roots[label] = Path(path).resolve()
        for rnd in range(args.rounds):
            if args.points:
                points(bench, roots, args, rnd)
                continue
            for label in ("before", "after", *(k for k in roots if k not in ("before", "after"))):
                procs.Relayhouse.root = roots[label]
                start = len(bench.results["runs"])
                bench.say(f"round {rnd + 1}: {label} ({roots[label]})")
                bench.fanout("relayhouse", 1000, 200, deflate=False, duration_s=args.duration, scenario="ab")
                bench.fanout("relayhouse", 1000, 500, deflate=False, duration_s=args.duration, scenario="ab")
                bench.fanout("relayhouse", 100, 2000, deflate=False, duration_s=args.duration, scenario="ab")
                bench.ingest("chdb", [20_000], 10.0)
                bench.idle(["relayhouse"], 10_000)
                for r in bench.results["runs"][start:]:
                    r["ab"] = label
                bench.save()
    procs.Relayhouse.root = procs.ROOT
    rows = []
    for r in bench.results["runs"]:
        if r.get("scenario") == "idle":
            what, value = "idle KiB/connection", r.get("kib_per_connection")
            rows.append((what, r["ab"], value, None, None))
        elif r.get("scenario") == "ingest":
            sub = r.get("subscriber", {})
            rows.append((f"ingest chdb {r['rate']:g}/s", r["ab"], r.get("cpu_pct", {}).get("system"),
                         sub.get("relay_receive_ms", {}).get("p99"), r.get("ok")))
        elif "latency_ms" in r:
            rows.append((f"{r['clients']} x {r['rate']:g}", r["ab"], r["cpu_pct"]["system"],
                         f"{r['latency_ms']['p50']} / {r['latency_ms']['p99']}", r["ok"]))
    print("| point | build | worker CPU % (or KiB) | p50 / p99 ms (ingest: send→receive p99) | ok |")
    print("|---|---|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join("–" if v is None else str(v) for v in row) + " |")
    (out / "ab.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
