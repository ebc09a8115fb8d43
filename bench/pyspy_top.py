"""Summarize a py-spy `--format raw` profile (collapsed stacks): where the worker's samples go.

    python bench/pyspy_top.py PROFILE.txt [--top 25] [--rate 250 --duration 10] [--funcs Hub._feed_slow,Latest.offer]

Prints the functions with the most samples on top of the stack (self) and anywhere on
it (total). With the sampling rate and duration it also prints the share of a core the
sampled samples amount to (py-spy skips idle samples by default). With --funcs it prints only
the total % of the named functions (`Class.method`, any file): e.g. what conflation costs a flush.
"""

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:]+)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path})"


def summarize(text: str) -> tuple[int, Counter, Counter]:
    self_, total = Counter(), Counter()
    n = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        try:
            c = int(count)
        except ValueError:
            continue
        frames = [short(f) for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        n += c
        self_[frames[-1]] += c
        for f in set(frames):
            total[f] += c
    return n, self_, total


def report(path: Path, top: int = 25, rate: float | None = None, duration: float | None = None) -> str:
    n, self_, total = summarize(path.read_text())
    lines = [f"{path.name}: {n} samples"]
    if rate and duration:
        lines[0] += f" = {100 * n / (rate * duration):.0f} % of one core (non-idle)"
    lines.append("")
    lines.append("| self % | total % | function |")
    lines.append("|---:|---:|---|")
    for func, c in self_.most_common(top):
        lines.append(f"| {100 * c / n:.1f} | {100 * total[func] / n:.1f} | `{func}` |")
    lines.append("")
    lines.append("| total % | function (inclusive, top) |")
    lines.append("|---:|---|")
    for func, c in total.most_common(top):
        lines.append(f"| {100 * c / n:.1f} | `{func}` |")
    return "\n".join(lines)


def shares(path: Path, funcs: list[str]) -> str:
    """The inclusive share of each named function (a function is on the stack: counted once per sample)."""
    n, _, total = summarize(path.read_text())
    got = {f: sum(c for func, c in total.items() if func.startswith(f + " ")) for f in funcs}
    return f"{path}: {n} samples; " + ", ".join(f"{f} {100 * c / max(n, 1):.2f} %" for f, c in got.items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--funcs", default="", help="comma-separated Class.method names: their total %% only")
    args = parser.parse_args()
    if args.funcs:
        print(shares(args.profile, [f for f in args.funcs.split(",") if f]))
        return
    print(report(args.profile, args.top, args.rate, args.duration))


if __name__ == "__main__":
    main()
