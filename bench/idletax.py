"""What a held idle crowd costs at steady state: CPU per ping, on the relay and on the load generator.

    flock /tmp/relayhouse-bench.lock .venv/bin/python bench/idletax.py --n 20000 --ping-s 5 --window-s 10 [--spy]

One worker, N idle /ws clients (bench/idleload.py, one process per 20,000 at most), pinged
every `--ping-s` (20,000 at 5 s is 4,000 pings/s: what 100,000 clients cost at the contract's
25 s). Once every client has had its first ping, the worker's and the load generators' CPU
are metered over `--window-s` and divided by the pings answered in that window; `--spy`
samples the worker with py-spy over the same window. Prints one JSON line; every process it
starts is stopped by its pid, and each has its own time limit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from idle import IdleLoad, client_url, git_head  # noqa: E402
from procs import BENCH, VENV_BIN, CpuMeter, Relayhouse, Upstream, loadavg, wait_for  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--ping-s", type=float, default=5.0)
    p.add_argument("--window-s", type=float, default=10.0)
    p.add_argument("--spy", action="store_true")
    p.add_argument("--native", action="store_true", help="with --spy: C frames too (py-spy --native)")
    p.add_argument("--strace", action="store_true",
                   help="count the worker's system calls over the window (strace -c; slows the worker: CPU figures of such a run are not comparable)")
    p.add_argument("--batch-ms", type=float, default=None, help="bench/idleload.py's --batch-ms (its default: 100)")
    p.add_argument("--root", default="", help="run the relay from this checkout (an A/B against another revision)")
    a = p.parse_args()
    if a.root:
        Relayhouse.root = Path(a.root)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = BENCH / "results" / f"{stamp}-idle-tax"
    out.mkdir(parents=True, exist_ok=True)
    rec: dict = {"git": git_head(), "root": str(Relayhouse.root), "n": a.n, "ping_s": a.ping_s, "batch_ms": a.batch_ms,
                 "loadavg_before": loadavg()}
    up = Upstream("serve", out / "upstream.log")
    relay, loads = None, []
    try:
        relay = Relayhouse(out, up.url, {"WS_PING_INTERVAL_S": str(a.ping_s)})
        per = [min(19_000, a.n - k) for k in range(0, a.n, 19_000)]
        loads = [IdleLoad(client_url(relay, "ws", quiet=True), k, source=f"127.0.0.{2 + i}", rate=2000,
                          inflight=500, max_s=300, log=out / f"load-{i}.log", batch_ms=a.batch_ms) for i, k in enumerate(per)]
        wait_for(lambda: all(x.settled() for x in loads), 120, f"{a.n} clients {[x.last for x in loads]}")
        time.sleep(a.ping_s * 1.1)  # every client has had its first ping: the steady state
        for x in loads:
            x.poll()
        mark = [len(x.ticks) for x in loads]
        meter = CpuMeter({"worker": relay.pids, "loadgens": [x.pid for x in loads]})
        spy = None
        if a.spy:
            spy = subprocess.Popen([str(VENV_BIN / "py-spy"), "record", "--format", "raw", "--rate", "250",
                                    "--duration", str(int(a.window_s)), "--pid", str(relay.pids[0]),
                                    "--output", str(out / "worker.pyspy.txt")] + (["--native"] if a.native else []),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        tracer = None
        if a.strace:
            tracer = subprocess.Popen(["strace", "-c", "-q", "-o", str(out / "worker.strace.txt"), "-p", str(relay.pids[0])],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(a.window_s)
        rec["cpu_pct"] = meter.stop()
        if tracer is not None:
            tracer.send_signal(2)  # SIGINT: strace detaches and writes its table
            tracer.wait(timeout=60)
        if spy is not None:
            spy.wait(timeout=60)
        for x in loads:
            x.poll()
        pings = sum(t["pings"] for x, m in zip(loads, mark, strict=True) for t in x.ticks[m:])
        rec["pings"] = pings
        rec["pings_per_s"] = round(pings / a.window_s, 1)
        for name in ("worker", "loadgens"):
            rec[f"{name}_us_per_ping"] = round(rec["cpu_pct"][name] * 1e4 * a.window_s / max(1, pings), 1)
        rec["closed_by_server"] = sum(x.poll().get("closed", 0) for x in loads)
        if tracer is not None:
            rec["syscalls_per_ping"] = syscalls_per_ping(out / "worker.strace.txt", pings)
    finally:
        for x in loads:
            x.stop()
        for proc in (relay, up):
            if proc is not None:
                proc.stop()
    rec["loadavg_after"] = loadavg()
    (out / "results.json").write_text(json.dumps(rec, indent=1))
    print(json.dumps(rec), flush=True)


def syscalls_per_ping(table: Path, pings: int) -> dict[str, float]:
    """strace -c's table as calls per ping answered, by system call (the busiest first)."""
    counts = {}
    for line in table.read_text().splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[0][0].isdigit() and cols[-1] != "total":
            counts[cols[-1]] = int(cols[3])
    return {name: round(n / max(1, pings), 2) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])}


if __name__ == "__main__":
    main()
