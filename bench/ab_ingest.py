"""Ingest ceiling on several builds, alternated: chDB and a ClickHouse server at rising rates.

    .venv/bin/python bench/ab_ingest.py --before REV [--rounds 2] [--rates 40000,60000,80000]

REV is exported with `git archive` (as in bench/ab.py) and run with this checkout's .venv;
"after" is the working tree. Without --before only the working tree runs. Each round runs
every build in turn; a backend's rates stop at the first one the relay cannot keep (loss or
p99 > 1 s). Results: bench/results/<UTC time>-ab-ingest/results.json and a table on stdout.
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
from ab import export  # noqa: E402
from run import Bench  # noqa: E402


def row(r: dict) -> tuple:
    sub = r.get("subscriber", {}).get("relay_receive_ms", {})
    return (r["ab"], r["backend"], r["rate"], r.get("ok"), r.get("rows_per_s_sustained"),
            sub.get("p50"), sub.get("p99"), r.get("cpu_pct", {}).get("system"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=None, help="git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rates", default="40000,60000,80000")
    parser.add_argument("--backends", default="chdb,clickhouse")
    args = parser.parse_args()
    rates = [float(x) for x in args.rates.split(",")]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = procs.BENCH / "results" / f"{stamp}-ab-ingest"
    bench = Bench(argparse.Namespace(out=str(out), quick=False, only="ab", systems="relayhouse", duration=args.duration))
    roots = {"after": procs.ROOT}
    with tempfile.TemporaryDirectory(prefix="relayhouse-before-") as tmp:
        if args.before:
            roots = {"before": export(args.before, Path(tmp)), "after": procs.ROOT}
            bench.results["before_rev"] = subprocess.run(
                ["git", "-C", str(procs.ROOT), "rev-parse", "--short", args.before],
                capture_output=True, text=True).stdout.strip()
        for rnd in range(args.rounds):
            for label, root in roots.items():
                procs.Relayhouse.root = root
                start = len(bench.results["runs"])
                bench.say(f"round {rnd + 1}: {label} ({root})")
                for backend in args.backends.split(","):
                    bench.ingest(backend, rates, args.duration)
                for r in bench.results["runs"][start:]:
                    r["ab"], r["round"] = label, rnd + 1
                bench.save()
    procs.Relayhouse.root = procs.ROOT
    rows = [row(r) for r in bench.results["runs"] if r.get("scenario") == "ingest"]
    print("| build | backend | offered/s | ok | stored rows/s | send→relay p50 / p99 ms | worker CPU % |")
    print("|---|---|---:|---|---:|---|---:|")
    for b, backend, rate, ok, rps, p50, p99, cpu in rows:
        print(f"| {b} | {backend} | {rate:,.0f} | {ok} | {rps} | {p50} / {p99} | {cpu} |")
    (out / "ab-ingest.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
