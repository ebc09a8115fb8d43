"""The active clients with and without the idle crowd, over several `bench/idle.py crowd` runs.

    .venv/bin/python bench/crowd_report.py bench/results/<run>[/<round>] ... [--variant default]

Reads every results.json under the paths given, keeps the crowd runs of the variant asked for (by
default those run with the relay's defaults), and prints one line per round (p99 before / with /
after and the two ratios) and the ratios on the medians: with ÷ before, with ÷ after, and with ÷
every row without the crowd. A warm-up row (`--warmup-s`) is never counted.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from idle import active_p99, p99_ratio, variant_env  # noqa: E402


def rounds(paths: list[str], variant: str) -> list[dict]:
    found = []
    for path in paths:
        for results in sorted(Path(path).rglob("results.json")):
            if "work" in results.parts:
                continue
            for run in json.loads(results.read_text()).get("runs", []):
                if run.get("scenario") != "crowd" or not run.get("active_with") or run.get("crowd_nice"):
                    continue  # no active rows, or the crowd reniced (--crowd-nice: another condition)
                if (run.get("settings") or {}) != variant_env(variant):
                    continue
                found.append({"where": str(results.parent), **active_p99(run)})
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+")
    p.add_argument("--variant", default="default", help="'default' or the run's settings, 'NAME=VALUE+NAME=VALUE'")
    a = p.parse_args()
    found = rounds(a.paths, a.variant)
    if not found:
        print("no crowd run with active rows found", file=sys.stderr)
        return 1
    print("| round | before | with | after | with ÷ before | with ÷ after |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in found:
        print(f"| {r['where']} | {r['active_without']} | {r['active_with']} | {r['active_after']} | "
              f"{p99_ratio(r['active_with'], r['active_without'])} | {p99_ratio(r['active_with'], r['active_after'])} |")
    med = {k: round(statistics.median(v), 1) if (v := [r[k] for r in found if r[k]]) else None
           for k in ("active_without", "active_with", "active_after")}
    without = [r[k] for r in found for k in ("active_without", "active_after") if r[k]]
    print(f"\n{len(found)} rounds; medians: before {med['active_without']}, with {med['active_with']}, "
          f"after {med['active_after']}, every row without the crowd {round(statistics.median(without), 1)} ms")
    print(f"with ÷ before {p99_ratio(med['active_with'], med['active_without'])}x, with ÷ after "
          f"{p99_ratio(med['active_with'], med['active_after'])}x, with ÷ every row without "
          f"{p99_ratio(med['active_with'], statistics.median(without))}x (on the medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
