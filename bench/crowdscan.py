"""Where the CPU went during one active row of `bench/idle.py crowd`: every process of the machine.

The active row (1,000 clients at 200 events/s) keeps this 2-core machine ~99 % busy by itself, so
whatever else runs comes out of the measured processes' share. `Scan` reads /proc at the start
and the end of the row and reports, in % of one core:

- the machine's time by kind (/proc/stat: user, system, softirq, steal, idle);
- each named group of the bench's processes (the workers, the subscribers, the upstream, Redis,
  the idle crowd's load generators, the bench itself), and every other process that took more
  than 1 % of a core, by name ("others": other engineers' runs, kernel threads);
- per worker: CPU, context switches (voluntary = it waited for I/O; involuntary = it was
  preempted while runnable: the machine had no core for it), page faults, and the active clients
  it serves (its established sockets before and after the subscribers connected).

`Spy` samples processes over the same window: py-spy for one worker (raw collapsed stacks, for
bench/pyspy_top.py), and optionally `perf record -a` for the whole machine (kernel included).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from procs import TICKS, machine_jiffies

STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def proc_stat(pid: int) -> tuple[str, int, int, int, int, int] | None:
    """(comm, utime, stime, minflt, majflt, ppid) in ticks / counts; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    f = raw[raw.rindex(")") + 2:].split()
    return comm, int(f[11]), int(f[12]), int(f[7]), int(f[9]), int(f[1])


def ctx_switches(pid: int) -> tuple[int, int]:
    vol = invol = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol = int(line.split()[1])
    except OSError:
        pass
    return vol, invol


def schedstat(pid: int) -> tuple[int, int, int]:
    """/proc/<pid>/schedstat: ns on a CPU, ns runnable but waiting for one, times scheduled in
    (the main thread: a worker's loop)."""
    try:
        run, wait, slices = Path(f"/proc/{pid}/schedstat").read_text().split()[:3]
        return int(run), int(wait), int(slices)
    except (OSError, ValueError):
        return 0, 0, 0


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return ""


def cpu_line() -> list[int]:
    return machine_jiffies()[:len(STAT_FIELDS)]


class Scan:
    """All processes' CPU over a window; `groups` names the bench's own pids."""

    def __init__(self, groups: dict[str, list[int]], workers: list[int]):
        self.groups = groups
        self.workers = workers
        self.t0 = time.monotonic()
        self.cpu0 = cpu_line()
        self.p0 = {pid: s for pid in all_pids() if (s := proc_stat(pid)) is not None}
        self.ctx0 = {pid: ctx_switches(pid) for pid in workers}
        self.sched0 = {pid: schedstat(pid) for pid in workers}

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        cpu1 = cpu_line()
        p1 = {pid: s for pid in all_pids() if (s := proc_stat(pid)) is not None}
        ctx1 = {pid: ctx_switches(pid) for pid in self.workers}
        sched1 = {pid: schedstat(pid) for pid in self.workers}

        def pct(ticks: float) -> float:
            return round(100 * ticks / TICKS / wall, 1)

        deltas = {}
        for pid, (comm, ut, st, mn, mj, ppid) in p1.items():
            b = self.p0.get(pid, (comm, 0, 0, 0, 0, ppid))
            deltas[pid] = (comm, ut - b[1], st - b[2], mn - b[3], mj - b[4], ppid)
        total = sum(c - b for c, b in zip(cpu1, self.cpu0, strict=True)) or 1
        n_cores = os.cpu_count() or 1
        out: dict = {"wall_s": round(wall, 2),
                     "machine": {k: round(100 * n_cores * (c - b) / total, 1)
                                 for k, c, b in zip(STAT_FIELDS, cpu1, self.cpu0, strict=True)}}
        ours: set[int] = set()
        groups = {}
        for name, pids in self.groups.items():
            ut = sum(deltas[p][1] for p in pids if p in deltas)
            st = sum(deltas[p][2] for p in pids if p in deltas)
            groups[name] = {"cpu": pct(ut + st), "user": pct(ut), "system": pct(st)}
            ours.update(pids)
        out["groups"] = groups
        others = [(pid, d) for pid, d in deltas.items() if pid not in ours and d[1] + d[2] > 0]
        others.sort(key=lambda x: -(x[1][1] + x[1][2]))
        out["others_cpu"] = pct(sum(d[1] + d[2] for _, d in others))
        out["others_top"] = [{"pid": pid, "comm": d[0], "cpu": pct(d[1] + d[2]), "system": pct(d[2]),
                              "cmd": cmdline(pid)} for pid, d in others[:8] if pct(d[1] + d[2]) >= 1.0]
        out["workers"] = []
        for pid in self.workers:
            d = deltas.get(pid)
            if d is None:
                continue
            (v0, i0), (v1, i1) = self.ctx0.get(pid, (0, 0)), ctx1.get(pid, (0, 0))
            (_, w0, n0), (_, w1, n1) = self.sched0.get(pid, (0, 0, 0)), sched1.get(pid, (0, 0, 0))
            out["workers"].append({"pid": pid, "cpu": pct(d[1] + d[2]), "system": pct(d[2]),
                                   "minflt_per_s": round(d[3] / wall), "majflt": d[4],
                                   "voluntary_cs_per_s": round((v1 - v0) / wall),
                                   "involuntary_cs_per_s": round((i1 - i0) / wall),
                                   # the time its loop was runnable but had no core, per second and per wake-up
                                   "runqueue_wait_pct": round(100 * (w1 - w0) / 1e9 / wall, 1),
                                   "runqueue_wait_ms_per_slice": round((w1 - w0) / 1e6 / max(1, n1 - n0), 3)})
        return out


class Spy:
    """py-spy on one process (and optionally perf on the machine) for `duration_s`."""

    def __init__(self, venv_bin: Path, out: Path, pid: int, duration_s: float, perf: bool = False):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.procs = [subprocess.Popen(
            [str(venv_bin / "py-spy"), "record", "--nonblocking", "--format", "raw", "--rate", "100",
             "--duration", str(int(duration_s)), "--pid", str(pid), "--output", str(out / f"worker-{pid}.pyspy.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        if perf:
            self.procs.append(subprocess.Popen(
                ["perf", "record", "-a", "-g", "-F", "49", "-o", str(out / "perf.data"), "--", "sleep", str(duration_s)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait(self) -> None:
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
