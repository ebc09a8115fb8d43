"""The spool's cost on the writer's path, in one process: the segment files (git REV) against sqlite3 (this tree).

    .venv/bin/python bench/spool_micro.py [BATCH_EVENTS] [BATCHES] [--before REV]

Per batch of ~120-byte events, what the writer does with the store up (append, fsync'd, then
clear), and for an outage's backlog (BATCHES appended, then read back and removed in the
drain's chunks): the calling thread's CPU time and the wall time, medians of 3 interleaved
rounds. Files go to a temporary directory under bench/results (the same disk as DATA_DIR).
"""

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handlers.events import make_event  # noqa: E402
from webapp.store.spool import Spool as NewSpool  # noqa: E402


def old_spool_module(rev: str, into: Path):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:webapp/store/spool.py"], check=True,
                            capture_output=True, text=True).stdout
    path = into / "old_spool.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_spool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def normal_path(make, batches, work: Path) -> tuple[float, float]:
    d = tempfile.mkdtemp(dir=work)
    spool = make(os.path.join(d, "spool"))
    cpu, wall = [], []
    for batch in batches:
        t0, c0 = time.perf_counter(), time.thread_time()
        spool.append(batch)
        spool.clear()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    shutil.rmtree(d)
    return statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3


def drain_path(make, read_all, batches, work: Path) -> tuple[float, float]:
    d = tempfile.mkdtemp(dir=work)
    spool = make(os.path.join(d, "spool"))
    for batch in batches:
        spool.append(batch)
    t0, c0 = time.perf_counter(), time.thread_time()
    n = read_all(spool)
    cpu, wall = time.thread_time() - c0, time.perf_counter() - t0
    shutil.rmtree(d)
    assert n == sum(len(b) for b in batches), n
    return cpu * 1e3, wall * 1e3


def old_read(spool) -> int:
    n = 0
    for path in spool.segments():
        records = spool.segment_records(path)
        count = sum(len(r.events) for r in records)
        spool.remove_segment(path, count)
        n += count
    return n


def new_read(spool) -> int:
    n = 0
    while records := spool.oldest():
        n += sum(len(r.events) for r in records)
        spool.remove_through(records[-1].id)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("batch", type=int, nargs="?", default=5000)
    parser.add_argument("batches", type=int, nargs="?", default=40)
    parser.add_argument("--before", default="7a6ef9e")
    args = parser.parse_args()
    batches = [[make_event(b * args.batch + i + 1, 1_764_124_800_123, "T.AAPL",
                           {"ev": "T", "sym": "AAPL", "p": 191.2, "s": 100, "t": 1764124800120, "i": i})
                for i in range(args.batch)] for b in range(args.batches)]
    work = ROOT / "bench" / "results"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        old = old_spool_module(args.before, Path(tmp))
        builds = {"segment files": (lambda p: old.Spool(p, 1 << 40), old_read),
                  "sqlite3": (lambda p: NewSpool(p, 1 << 40), new_read)}
        normal: dict[str, list] = {k: [] for k in builds}
        drain: dict[str, list] = {k: [] for k in builds}
        for _ in range(3):
            for label, (make, read) in builds.items():
                normal[label].append(normal_path(make, batches, work))
                drain[label].append(drain_path(make, read, batches, work))
    for label in builds:
        cpu, wall = (statistics.median(r[i] for r in normal[label]) for i in (0, 1))
        dcpu, dwall = (statistics.median(r[i] for r in drain[label]) for i in (0, 1))
        print(f"{label}: append + clear of {args.batch} events: thread CPU {cpu:.2f} ms, wall {wall:.2f} ms | "
              f"drain of {args.batches} x {args.batch}: thread CPU {dcpu:.0f} ms, wall {dwall:.0f} ms")


if __name__ == "__main__":
    main()
