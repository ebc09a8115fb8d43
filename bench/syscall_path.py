"""An event's path through the relay and through nginx + nchan, seen from the kernel: no probe in the relay.

    flock /tmp/relayhouse-bench.lock .venv/bin/python bench/syscall_path.py [--clients 100] [--rate 50]
        [--duration 10] [--rounds 2] [--systems relayhouse,nchan] [--also LABEL=DIR ...]

Needs root and `perf` (it mounts tracefs if it is not mounted). For each system, one fan-out run
(bench/run.py's, one Node.js subscriber process) with `perf record -a` of the system calls that
carry an event (the upstream's write, the server's epoll wake-up, its read of the upstream socket,
its writes to the clients) and the scheduler's switches. Per event, in microseconds, p50 / p90 / p99:

  write -> wake     the upstream's write to the server's epoll_wait returning
  wake -> read      epoll_wait returning to the read of the upstream's bytes returning
  read -> 1st send  the read to the first client's write (parse, number, cache, encode: the relay's Python)
  1st -> last send  the flush: every client's write
  wake -> 1st send  everything the server does before the first client has the event

and per flush the time the server spent off its CPU (switched out between its first and last write),
and by whom. perf's tracing costs every traced system call some microseconds, the same for both
systems; read the systems side by side, not the figures as absolute. `--also LABEL=DIR` measures
another checkout of relayhouse (e.g. a `git archive` of another revision) beside this one.
Results: bench/results/<UTC>-syscall-path/results.json.

Why: at 100 x 50 nchan's p99 is below relayhouse's on every VM so far (docs/benchmarks.md,
"Light load"), with the writes themselves at parity; this shows where the rest goes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs  # noqa: E402
import run as bench_run  # noqa: E402

EVENTS = ("sched:sched_switch,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,"
          "syscalls:sys_exit_recvfrom,syscalls:sys_exit_read,syscalls:sys_exit_epoll_wait,"
          "syscalls:sys_exit_epoll_pwait")
SENDS = {"sys_enter_write", "sys_enter_writev", "sys_enter_sendto"}
READS = {"sys_exit_recvfrom", "sys_exit_read"}
LINE = re.compile(r"^\s*(\S+)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\w+):(\w+):\s*(.*)$")
STAGES = ("write -> wake", "wake -> read", "read -> 1st send", "1st -> last send", "wake -> 1st send")


def ensure_tracefs() -> None:
    if not Path("/sys/kernel/tracing/events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)


def parse(text: str) -> list[tuple]:
    """(ms, comm, tid, category, name, args) per line of `perf script`."""
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            comm, _pid, tid, _cpu, t, cat, name, args = m.groups()
            out.append((float(t) * 1000, comm, int(tid), cat, name, args))
    out.sort(key=lambda e: e[0])
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q / 100 * len(values)))], 1)


def analyse(events: list[tuple], clients: int) -> dict:
    """Per event and per flush, from one run's trace (the server and the upstream found by their calls)."""
    sends = Counter(e[2] for e in events if e[1] in ("gunicorn", "nginx") and e[4] in SENDS)
    if not sends:
        return {"error": "no server writes in the trace"}
    server = sends.most_common(1)[0][0]
    writes = Counter(e[2] for e in events if e[1] == "node" and e[4] in SENDS)
    upstream = writes.most_common(1)[0][0]
    rows, cur = [], None
    for t, _comm, tid, cat, name, args in events:
        if tid == upstream and name in SENDS:
            if cur is not None:
                rows.append(cur)
            cur = {"A": t, "n": 0, "gaps": [], "by": Counter()}
        elif cur is None or tid != server and cat != "sched":
            continue
        elif cat == "sched":
            if f"prev_pid={server} " in args and "S1" in cur and "out" not in cur:
                cur["out"] = (t, re.search(r"next_comm=(\S+)", args).group(1))
            elif f"next_pid={server} " in args and "out" in cur:
                cur["gaps"].append((*cur.pop("out"), t))
        elif name.startswith("sys_exit_epoll") and "E" not in cur:
            cur["E"] = t
        elif name in READS and "E" in cur and "R" not in cur and not args.startswith(("0x0", "0xf")):
            cur["R"] = t
        elif name in SENDS and "R" in cur:
            cur.setdefault("S1", t)
            cur["SN"] = t
            cur["n"] += 1
    rows = [r for r in rows if r["n"] >= clients and "E" in r]
    for r in rows:  # switched out between the flush's first and last write (not the sleep after it)
        inside = [(t_out, who) for t_out, who, t_in in r["gaps"] if t_in <= r["SN"]]
        r["off"] = sum(t_in - t_out for t_out, _who, t_in in r["gaps"] if t_in <= r["SN"])
        r["by"] = Counter(who for _t, who in inside)
    spans = {"write -> wake": ("A", "E"), "wake -> read": ("E", "R"), "read -> 1st send": ("R", "S1"),
             "1st -> last send": ("S1", "SN"), "wake -> 1st send": ("E", "S1")}
    out = {"events": len(rows), "server_tid": server}
    for label, (a, b) in spans.items():
        values = [(r[b] - r[a]) * 1000 for r in rows]
        out[label] = {"p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99)}
    off = [r["off"] * 1000 for r in rows]
    by = Counter()
    for r in rows:
        by.update(r["by"])
    out["flush_off_cpu_us"] = {"mean": round(statistics.mean(off), 1) if off else None, "p90": pct(off, 90),
                               "p99": pct(off, 99),
                               "flushes_off_over_1ms": round(sum(1 for v in off if v > 1000) / max(1, len(off)), 3),
                               "switched_to": dict(by.most_common(5))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--systems", default="relayhouse,nchan")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=DIR")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("syscall_path.py needs root (perf record -a of tracepoints)")
    ensure_tracefs()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = procs.BENCH / "results" / f"{stamp}-syscall-path"
    bench = bench_run.Bench(argparse.Namespace(out=str(out), quick=False, only="syscall-path",
                                               systems="relayhouse", duration=args.duration))
    builds = [(kind, kind, procs.ROOT) for kind in args.systems.split(",")]
    builds += [(label, "relayhouse", Path(path).resolve()) for label, _, path in (a.partition("=") for a in args.also)]
    perf_file = out / "perf.data"
    state: dict = {}
    real_run = bench_run.Upstream.run

    def traced_run(self, base, rate, duration_s, *a, **k):
        # the trace covers the events' window only, not the connects
        state["perf"] = subprocess.Popen(["perf", "record", "-a", "-q", "-o", str(perf_file), "-e", EVENTS,
                                          "--exclude-perf", "--", "sleep", str(duration_s)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # perf's start-up
        return real_run(self, base, rate, duration_s, *a, **k)

    bench_run.Upstream.run = traced_run
    results = []
    for rnd in range(args.rounds):
        for label, kind, root in builds:
            procs.Relayhouse.root = root
            rec = bench.fanout(kind, args.clients, args.rate, deflate=False, duration_s=args.duration,
                               scenario="syscall-path")
            state.pop("perf").wait(timeout=60)
            text = subprocess.run(["perf", "script", "-i", str(perf_file), "-F", "comm,pid,tid,cpu,time,event,trace"],
                                  capture_output=True, text=True).stdout
            perf_file.unlink()
            row = {"round": rnd + 1, "build": label, "subscriber_ms": rec.get("latency_ms"),
                   **analyse(parse(text), args.clients)}
            results.append(row)
            print(json.dumps({k: row[k] for k in ("round", "build", "subscriber_ms", "wake -> 1st send",
                                                  "1st -> last send", "flush_off_cpu_us") if k in row}))
    procs.Relayhouse.root = procs.ROOT
    (out / "results.json").write_text(json.dumps({"machine": bench.results.get("machine"), "args": vars(args),
                                                  "rows": results}, indent=1))
    print(f"\n| build | {' | '.join(STAGES)} | off CPU in a flush (mean µs; flushes > 1 ms) | subscriber p50 / p99 ms |")
    print("|---|" + "---:|" * (len(STAGES) + 2))
    for row in results:
        cells = [f"{row[s]['p50']} / {row[s]['p90']} / {row[s]['p99']}" if s in row else "–" for s in STAGES]
        off = row.get("flush_off_cpu_us", {})
        lat = row.get("subscriber_ms") or {}
        print(f"| {row['build']} r{row['round']} | " + " | ".join(cells)
              + f" | {off.get('mean')}; {off.get('flushes_off_over_1ms')} | {lat.get('p50')} / {lat.get('p99')} |")
    print(out)


if __name__ == "__main__":
    main()
