"""Idle connections: what one costs, how many one machine holds, and what they do to active clients.

    .venv/bin/python bench/idle.py breakdown            # 10,000 idle /ws, then /sse: RSS, greenlets, fds
    .venv/bin/python bench/idle.py breakdown --trace    # + tracemalloc's top allocations (2,000 clients)
    .venv/bin/python bench/idle.py storm                # 10,000 connects within one second
    .venv/bin/python bench/idle.py crowd --total 100000 --workers 7 --loadgens 6
                                                        # 10 k / 50 k / 100 k idle over several workers,
                                                        # /health and /metrics timed while they connect,
                                                        # 1,000 active clients at 200 ev/s without and with them
    ... --health-port                                   # crowd/storm with HEALTH_BIND: /health and /metrics
                                                        # timed on their own listener
    .venv/bin/python bench/idle.py nchan                # nginx + nchan, 10,000 idle, same load generator

Each run writes bench/results/<UTC time>-idle/results.json. Load generators are bench/idleload.py
processes (at most 20,000 open files each), connecting from 127.0.0.2, 127.0.0.3, ...; every
process started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crowdscan import Scan, Spy  # noqa: E402
from procs import (  # noqa: E402
    BENCH,
    VENV_BIN,
    CpuMeter,
    LineProc,
    Nchan,
    Relayhouse,
    SubscriberSet,
    Upstream,
    cpu_seconds,
    free_port,
    loadavg,
    rss_kib,
    tcp_sockets,
    wait_for,
)

PYTHON = str(VENV_BIN / "python")


class IdleLoad(LineProc):
    """One bench/idleload.py process."""

    def __init__(self, url: str, n: int, *, source: str = "", rate: float = 2000, inflight: int = 2000,
                 hold_s: float = 3600, max_s: float = 600, log: Path | None = None, batch_ms: float | None = None):
        argv = [PYTHON, str(BENCH / "idleload.py"), "--url", url, "--n", str(n), "--rate", str(rate),
                "--inflight", str(inflight), "--hold-s", str(hold_s), "--max-s", str(max_s)]
        if batch_ms is not None:
            argv += ["--batch-ms", str(batch_ms)]
        if source:
            argv += ["--source", source]
        super().__init__(argv, log=log)
        self.n = n
        self.last: dict = {}
        self.ticks: list[dict] = []

    def poll(self) -> dict:
        """Take every line printed so far; the newest progress line."""
        while not self.lines.empty():
            msg = self.lines.get_nowait()
            if "t" in msg:
                self.last = msg
                self.ticks.append(msg)
            elif msg.get("summary") or msg.get("error") or msg.get("eof"):
                self.last = {**self.last, **msg}
        return self.last

    def settled(self) -> bool:
        last = self.poll()
        return last.get("connected", 0) + last.get("failed", 0) >= self.n or "eof" in last

    def stop(self) -> dict:
        """SIGTERM: it closes its clients and prints its summary."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()
        time.sleep(0.2)
        summary = {}
        self.poll()
        while not self.lines.empty():
            self.poll()
        if self.last.get("summary"):
            summary = {k: v for k, v in self.last.items() if k not in ("t", "open", "pings", "inflight")}
        return summary


class Timer(threading.Thread):
    """Times GET `path` every `every_s` (a new connection each time) until stopped."""

    def __init__(self, url: str, every_s: float = 0.25):
        super().__init__(daemon=True)
        self.url, self.every_s = url, every_s
        self.ms: list[float] = []
        self.connect_ms: list[float] = []  # of which the TCP connect (the listen queue)
        self.errors = 0
        self.statuses: dict[str, int] = {}  # answers by status code (a 503 is an answer, not a healthy one)
        self.halt = threading.Event()

    def run(self) -> None:
        url = urllib.parse.urlsplit(self.url)
        while not self.halt.wait(self.every_s):
            t0 = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
                conn.connect()
                t1 = time.perf_counter()
                conn.request("GET", url.path, headers={"Connection": "close"})
                answer = conn.getresponse()
                answer.read()
                conn.close()
                self.statuses[str(answer.status)] = self.statuses.get(str(answer.status), 0) + 1
                t2 = time.perf_counter()
                self.ms.append((t2 - t0) * 1000)
                self.connect_ms.append((t1 - t0) * 1000)
            except OSError:
                self.errors += 1

    def result(self) -> dict:
        self.halt.set()
        self.join(15)
        ms = sorted(self.ms)
        pick = (lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))], 1)) if ms else (lambda q: None)
        return {"requests": len(ms), "errors": self.errors, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                "max_ms": pick(1.0), "over_100ms": sum(1 for m in ms if m > 100),
                "connect_over_100ms": sum(1 for m in self.connect_ms if m > 100),
                "max_connect_ms": round(max(self.connect_ms), 1) if self.connect_ms else None,
                "statuses": dict(self.statuses)}


class Probe:
    """Talks to bench/probe.conf.py's probe greenlet in a worker through files."""

    def __init__(self, directory: Path):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)

    def ask(self, command: str, pid: int | None = None, timeout_s: float = 120) -> dict | None:
        for old in self.dir.glob("report-*.json"):
            old.unlink()
        (self.dir / f"request-{time.time_ns()}").write_text(command)
        if command != "report":
            time.sleep(1.0)
            return None
        path = wait_for(lambda: next(iter(self.dir.glob("report-*.json")), None), timeout_s, "probe report")
        time.sleep(0.2)
        return json.loads(path.read_text())


class AcceptQueue(threading.Thread):
    """Samples a listener's accept queue (`ss -ltn`'s Recv-Q: connections the kernel completed that no
    worker has accepted yet) every `every_s` until stopped."""

    def __init__(self, port: int, every_s: float = 0.1):
        super().__init__(daemon=True)
        self.port, self.every_s = port, every_s
        self.depths: list[int] = []
        self.backlog = None  # the listener's queue limit: ss's Send-Q, BACKLOG capped by net.core.somaxconn
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every_s):
            out = subprocess.run(["ss", "-Hltn", f"sport = :{self.port}"], capture_output=True, text=True).stdout
            fields = out.split()
            if len(fields) >= 3 and fields[1].isdigit():
                self.depths.append(int(fields[1]))
                self.backlog = int(fields[2])

    def result(self) -> dict:
        self.halt.set()
        self.join(5)
        d = self.depths
        return {"samples": len(d), "max": max(d) if d else None, "nonzero": sum(1 for x in d if x),
                "over_1000": sum(1 for x in d if x > 1000), "limit": self.backlog}


def listen_drops() -> dict:
    """The kernel's count of connections dropped because a listen queue was full (whole machine)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], (int(v) for v in values.split()[1:]), strict=False))
            # + SYNs the clients had to send again, and SYNs refused by a full SYN queue
            return {k: table.get(k, 0) for k in ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPReqQFullDrop",
                                                 "TCPReqQFullDoCookies")}
    return {}


SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def machine_note() -> dict:
    return {"loadavg": loadavg(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "somaxconn": int(SOMAXCONN.read_text())}


@contextlib.contextmanager
def somaxconn(value: int | None):
    """net.core.somaxconn set to `value` for the run (needs root), the previous value put back after."""
    if value is None:
        yield
        return
    before = SOMAXCONN.read_text()
    SOMAXCONN.write_text(str(value))
    try:
        yield
    finally:
        SOMAXCONN.write_text(before)


class IdleBench:
    def __init__(self, out: Path):
        self.out = out
        self.work = out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"started": machine_note(), "git": git_head(), "runs": []}
        self.spy = self.perf = False  # crowd: py-spy on a worker (and perf on the machine) in each active row
        self.paused_row = False  # crowd: one more active row with the crowd held but its load generators stopped
        self.crowd_nice = 0  # crowd: the load generators' nice from the with row on (0: left as they are)
        self.warmup_s = 0.0  # crowd: an untimed active row before the first timed one
        self.active_procs = 1  # crowd: the subscriber processes the active clients are spread over

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def save(self, record: dict) -> None:
        self.results["runs"].append(record)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1))

    # -- one worker: the cost of one idle connection ------------------------------------------

    def breakdown(self, route: str, n: int, trace: bool) -> dict:
        run_id = f"breakdown-{route}-{n}{'-trace' if trace else ''}"
        wd = self.work / run_id
        wd.mkdir(parents=True, exist_ok=True)
        record = {"id": run_id, "scenario": "breakdown", "route": route, "clients": n, "trace": trace,
                  "before": machine_note()}
        up = Upstream("serve", wd / "upstream.log")
        probe = Probe(wd / "probe")
        relay = load = None
        try:
            relay = Relayhouse(wd, up.url, {"PROBE_DIR": str(probe.dir)}, config="bench/probe.conf.py")
            url = client_url(relay, route)
            warm = IdleLoad(url, 50, log=wd / "warm.log")
            wait_for(warm.settled, 30, "warm-up clients")
            warm.stop()
            time.sleep(1.5)
            if trace:
                probe.ask("start")
            r0 = probe.ask("report")
            t0 = time.monotonic()
            load = IdleLoad(url, n, rate=2000, log=wd / "load.log")
            wait_for(load.settled, 300, f"{n} clients")
            record["connect_s"] = round(time.monotonic() - t0, 2)
            time.sleep(3.0)
            r1 = probe.ask("report")
            opened = load.poll().get("connected", 0)
            record["connected"] = opened
            record["rss_before_kib"], record["rss_after_kib"] = r0["rss_kib"], r1["rss_kib"]
            record["kib_per_connection"] = round((r1["rss_kib"] - r0["rss_kib"]) / max(1, opened), 2)
            record["greenlets"] = {"before": r0["greenlets"], "after": r1["greenlets"],
                                   "alive_before": r0["greenlets_alive"], "alive_after": r1["greenlets_alive"]}
            record["greenlets_per_connection"] = round((r1["greenlets_alive"] - r0["greenlets_alive"]) / max(1, opened),
                                                       2)
            record["fds"] = {"before": r0["fds"], "after": r1["fds"]}
            before = dict((k, v) for k, v in r0["types"])
            record["objects_per_connection"] = [
                (k, round((v - before.get(k, 0)) / max(1, opened), 2)) for k, v in r1["types"]
                if (v - before.get(k, 0)) >= opened // 2]
            if trace:
                record["traced_kib_per_connection"] = round(r1.get("traced_kib", 0) / max(1, opened), 2)
                record["top_allocations"] = [{**a, "bytes_per_connection": round(a["kib"] * 1024 / max(1, opened))}
                                             for a in r1.get("top", [])[:25]]
            record["summary"] = load.stop()
            load = None
            record["ok"] = opened == n
        except Exception as exc:  # noqa: BLE001  (recorded; the bench goes on)
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["ok"] = False
        finally:
            stop_all(load, relay, up)
        record["after"] = machine_note()
        self.save(record)
        self.say(f"{run_id}: {record.get('connected')} connected, {record.get('kib_per_connection')} KiB each, "
                 f"{record.get('greenlets_per_connection')} greenlets each {record.get('error', '')}")
        return record

    def nchan(self, n: int) -> dict:
        run_id = f"nchan-{n}"
        wd = self.work / run_id
        wd.mkdir(parents=True, exist_ok=True)
        record = {"id": run_id, "scenario": "nchan", "clients": n, "before": machine_note()}
        system = load = None
        try:
            system = Nchan(wd)
            warm = IdleLoad(system.sub_url(run_id), 50, log=wd / "warm.log")
            wait_for(warm.settled, 30, "warm-up clients")
            warm.stop()
            time.sleep(1.5)
            rss0 = sum(rss_kib(p) for p in system.pids)
            load = IdleLoad(system.sub_url(run_id), n, rate=2000, log=wd / "load.log")
            wait_for(load.settled, 300, f"{n} clients")
            time.sleep(3.0)
            rss1 = sum(rss_kib(p) for p in system.pids)
            opened = load.poll().get("connected", 0)
            record.update(connected=opened, kib_per_connection=round((rss1 - rss0) / max(1, opened), 2),
                          rss_before_kib=rss0, rss_after_kib=rss1)
            record["summary"] = load.stop()
            load = None
            record["ok"] = opened == n
        except Exception as exc:  # noqa: BLE001
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["ok"] = False
        finally:
            stop_all(load, system)
        self.save(record)
        self.say(f"{run_id}: {record.get('connected')} connected, {record.get('kib_per_connection')} KiB each")
        return record

    # -- storms ---------------------------------------------------------------------------------

    def storm(self, n: int, workers: int, health_port: bool = False, max_accept: str = "", nth: int = 0,
              variant: str = "") -> dict:
        """`variant`: relay settings of this row, 'NAME=VALUE+NAME=VALUE' ('' = the defaults)."""
        settings = variant_env(variant)
        if max_accept:
            settings["MAX_ACCEPT"] = max_accept
        label = variant or (f"ma{max_accept}" if max_accept else "default")
        run_id = (f"storm-{n}-w{workers}" + ("-hp" if health_port else "") + f"-{label}"
                  + (f"-r{nth}" if nth else ""))
        wd = self.work / run_id
        wd.mkdir(parents=True, exist_ok=True)
        record = {"id": run_id, "scenario": "storm", "clients": n, "workers": workers, "before": machine_note(),
                  "max_accept": max_accept or "the relay's default", "variant": label, "settings": settings}
        up = Upstream("serve", wd / "upstream.log")
        relay = None
        loads: list[IdleLoad] = []
        prefix = f"rh-bench-idle-{time.time_ns()}"
        try:
            relay = Relayhouse(wd, up.url, {**cluster_env(workers, prefix), **health_env(health_port), **settings})
            record["probed"] = relay.health_base
            timer = Timer(relay.health_base + "/health", 0.1)
            timer.start()
            queue = AcceptQueue(relay.port)
            queue.start()
            cpu0 = sum(cpu_seconds(p) for p in relay.pids)
            drops0 = listen_drops()
            t0 = time.monotonic()
            # the whole storm is offered within one second: every connect() at once
            loads = [IdleLoad(client_url(relay, "ws"), n, rate=n, inflight=n, source="127.0.0.2",
                              log=wd / "load.log")]
            wait_for(lambda: all(x.settled() for x in loads), 300, f"{n} clients")
            record["all_settled_s"] = round(time.monotonic() - t0, 2)
            record["accept_queue"] = queue.result()
            record["clients_per_worker"] = relay.connections_per_worker()
            drops1 = listen_drops()
            record["listen_queue_drops"] = {k: drops1[k] - drops0.get(k, 0) for k in drops1}
            # what a handshake costs the workers, whatever else the machine does
            record["worker_cpu_ms_per_connect"] = round(1000 * (sum(cpu_seconds(p) for p in relay.pids) - cpu0) / n,
                                                        3)
            record["health_while_connecting"] = timer.result()
            record["accept_metrics"] = accept_metrics(relay.health_base, 3 * workers)
            record["summary"] = [x.stop() for x in loads]
            loads = []
            s = record["summary"][0]
            record["connected"] = s.get("connected")
            record["handshakes_per_s"] = round(s["connected"] / max(0.01, s["connect_s"]), 1) if s else None
            record["ok"] = s.get("connected") == n
        except Exception as exc:  # noqa: BLE001
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["ok"] = False
        finally:
            stop_all(*loads, relay, up)
            drop_prefix(prefix)
        record["after"] = machine_note()
        self.save(record)
        first = (record.get("summary") or [{}])[0]
        self.say(f"{run_id}: {record.get('connected')} of {n} in {first.get('connect_s')} s "
                 f"({record.get('handshakes_per_s')}/s) overflows {record.get('listen_queue_drops')} "
                 f"queue {record.get('accept_queue')} hs {first.get('handshake_ms')} tcp {first.get('tcp_connect_ms')} "
                 f"health {record.get('health_while_connecting')} {record.get('accept_metrics')} "
                 f"{record.get('error', '')}")
        return record

    # -- the crowd: many workers, many load generators --------------------------------------------

    def crowd(self, total: int, steps: list[int], workers: int, loadgens: int, rates: list[float], hold_s: float,
              active: int, active_rate: float, active_s: float, settle_s: float = 5.0,
              health_port: bool = False, max_accept: str = "", variant: str = "") -> dict:
        settings = {**variant_env(variant), **({"MAX_ACCEPT": max_accept} if max_accept else {})}
        run_id = f"crowd-{total}-w{workers}" + ("-hp" if health_port else "") + (f"-ma{max_accept}" if max_accept else "") \
            + (f"-{variant}" if variant not in ("", "default") else "")
        wd = self.work / run_id
        wd.mkdir(parents=True, exist_ok=True)
        record = {"id": run_id, "scenario": "crowd", "total": total, "workers": workers, "loadgens": loadgens,
                  "rates": rates, "settle_s": settle_s, "health_port": health_port, "before": machine_note(), "root": str(Relayhouse.root),
                  "max_accept": max_accept or "the relay's default", "settings": settings,
                  "steps": []}
        up = Upstream("serve", wd / "upstream.log")
        relay = None
        loads: list[IdleLoad] = []
        prefix = f"rh-bench-idle-{time.time_ns()}"
        try:
            relay = Relayhouse(wd, up.url, {**cluster_env(workers, prefix), **health_env(health_port), **settings})
            record["pids"] = relay.pids
            record["probed"] = relay.health_base
            if active and self.warmup_s:  # the relay's first active row after start is often its worst
                record["active_warmup"] = self.active(relay, up, wd / "active-warmup", active, active_rate,
                                                      self.warmup_s, 5)
            if active:
                record["active_without"] = self.active(relay, up, wd / "active-without", active, active_rate,
                                                       active_s, 1)
            rss0 = {p: rss_kib(p) for p in relay.pids}
            done = 0
            for step, rate in zip(steps, rates, strict=True):
                add = step - done
                per = [add // loadgens + (1 if i < add % loadgens else 0) for i in range(loadgens)]
                health, metrics = Timer(relay.health_base + "/health"), Timer(relay.health_base + "/metrics")
                health.start()
                metrics.start()
                # with HEALTH_BIND, /health on the clients' port as well, side by side; both accept queues
                main = Timer(relay.base + "/health") if relay.health_base != relay.base else None
                queues = {"clients": AcceptQueue(relay.port)}
                if main:
                    main.start()
                    queues["health"] = AcceptQueue(int(relay.health_base.rsplit(":", 1)[1]))
                for q in queues.values():
                    q.start()
                drops0 = listen_drops()
                cpu0 = sum(cpu_seconds(p) for p in relay.pids)
                t0 = time.monotonic()
                new = [IdleLoad(client_url(relay, "ws", quiet=True), k, source=f"127.0.0.{2 + len(loads) + i}",
                                rate=rate / loadgens, inflight=500, log=wd / f"load-{len(loads) + i}.log")
                       for i, k in enumerate(per) if k]
                loads += new
                wait_for(lambda new=new: all(x.settled() for x in new), 900, f"{add} more clients")
                connect_s = time.monotonic() - t0
                time.sleep(3.0)
                rss1 = {p: rss_kib(p) for p in relay.pids}
                connected = sum(x.poll().get("connected", 0) for x in loads)
                failed = sum(x.poll().get("failed", 0) for x in loads)
                step_rec = {
                    "clients": step, "rate_offered": rate, "connected": connected, "failed": failed, "connect_s": round(connect_s, 1),
                    "rss_kib_per_worker": [rss1[p] for p in relay.pids],
                    "sockets_per_worker": [tcp_sockets(p) for p in relay.pids],
                    "kib_per_connection": round(sum(rss1[p] - rss0[p] for p in relay.pids) / max(1, connected), 2),
                    "worker_cpu_ms_per_connect": round(
                        1000 * (sum(cpu_seconds(p) for p in relay.pids) - cpu0) / max(1, add), 3),
                    "health_while_connecting": health.result(), "metrics_while_connecting": metrics.result(),
                    "loadavg": loadavg(),
                }
                if main:
                    step_rec["health_on_clients_port"] = main.result()
                step_rec["accept_queue"] = {k: q.result() for k, q in queues.items()}
                drops1 = listen_drops()  # host-wide, over the connects and the 3 s after
                step_rec["listen_queue_drops"] = {k: drops1[k] - drops0.get(k, 0) for k in drops1}
                record["steps"].append(step_rec)
                self.say(f"{run_id}: {connected} idle connected ({failed} failed), "
                         f"{step_rec['kib_per_connection']} KiB each, health p99 "
                         f"{step_rec['health_while_connecting']['p99_ms']} ms")
                done = step
            # pings: every client is pinged once per WS_PING_INTERVAL_S; spread, not in bursts
            time.sleep(settle_s)  # the last handshakes' work done before the active clients are timed
            t_hold = time.monotonic()
            for x in loads:
                x.poll()
            mark = [len(x.ticks) for x in loads]
            if active:
                if self.crowd_nice:  # the crowd's clients yield the CPU, as clients on other hosts would
                    for x in loads:
                        os.setpriority(os.PRIO_PGRP, x.pid, self.crowd_nice)  # its own session: every thread
                    record["crowd_nice"] = self.crowd_nice
                record["active_with"] = self.active(relay, up, wd / "active-with", active, active_rate, active_s,
                                                    2, {"gen_idle": [x.pid for x in loads]}, crowd=loads)
                if self.paused_row:  # the relay's share of the crowd alone: its clients' processes stopped
                    record["active_with_paused"] = self.active(relay, up, wd / "active-with-paused", active,
                                                               active_rate, active_s, 4,
                                                               {"gen_idle": [x.pid for x in loads]}, crowd=loads,
                                                               pause=[x.pid for x in loads])
            left = hold_s - (time.monotonic() - t_hold)
            if left > 0:
                time.sleep(left)
            per_second: dict[int, int] = {}
            for x, m in zip(loads, mark, strict=True):
                x.poll()
                for tick in x.ticks[m:]:
                    per_second[int(tick["t"])] = per_second.get(int(tick["t"]), 0) + tick["pings"]
            series = [per_second[k] for k in sorted(per_second)][1:-1]
            record["pings_per_s"] = {"seconds": len(series), "total": sum(series),
                                     "mean": round(sum(series) / max(1, len(series)), 1),
                                     "max": max(series, default=0)}
            record["closed_by_server"] = sum(x.poll().get("closed", 0) for x in loads)
            record["accept_metrics"] = accept_metrics(relay.health_base, 3 * workers)
            record["lease_changes"] = (wd / "gunicorn.log").read_text(errors="replace").count("no longer the leader")
            record["summaries"] = [x.stop() for x in loads]
            loads = []
            if active:  # A-B-A: the same relay once more without the crowd, its sockets closed
                wait_for(lambda: sum(tcp_sockets(p) for p in relay.pids) < 2 * workers + active // 2 + 50, 60,
                         "the crowd's sockets closed")
                time.sleep(settle_s)
                record["active_after"] = self.active(relay, up, wd / "active-after", active, active_rate, active_s, 3)
            record["ok"] = all(s["connected"] + s["failed"] > 0 for s in record["steps"]) and \
                (record["steps"][-1]["connected"] if record["steps"] else 0) == total
        except Exception as exc:  # noqa: BLE001
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["ok"] = False
        finally:
            stop_all(*loads, relay, up)
            drop_prefix(prefix)
        record["after"] = machine_note()
        p99 = active_p99(record)
        if ratio := p99_ratio(p99["active_with"], p99["active_without"]):
            record["active_p99_ratio"] = ratio
        if ratio := p99_ratio(p99["active_with"], p99["active_after"]):  # A-B-A: the same relay, warm, its crowd gone
            record["active_p99_ratio_after"] = ratio
        self.save(record)
        self.say(f"{run_id}: closed by the relay {record.get('closed_by_server')}, lease changes "
                 f"{record.get('lease_changes')}, active p99 with/without {p99['active_with']}/"
                 f"{p99['active_without']} ms = {record.get('active_p99_ratio')}x (with/after "
                 f"{record.get('active_p99_ratio_after')}x)")
        return record

    def active(self, relay, up, wd: Path, clients: int, rate: float, duration_s: float, nth: int,
               others: dict | None = None, crowd: list | None = None, pause: list[int] | None = None) -> dict:
        """`clients` Node.js subscribers at `rate` events/s for `duration_s`: p50/p99, lost; where every
        process's CPU went meanwhile (bench/crowdscan.py) and the crowd's pings in the window.

        `pause`: processes stopped (SIGSTOP) for the timed window and until every event is delivered,
        continued right after (the idle crowd's load generators: the relay still pings their clients,
        whose pongs come once they run again, within the 25 s a client has to answer)."""
        wd.mkdir(parents=True, exist_ok=True)
        subs = spy = None
        rec: dict = {"clients": clients, "rate": rate, "duration_s": duration_s, "loadavg_before": loadavg()}
        try:
            socks0 = [tcp_sockets(p) for p in relay.pids]
            subs = SubscriberSet(client_url(relay, "ws"), clients, self.active_procs, deflate=False,
                                 log=wd / "subscribers.log", first_frame=True)
            rec["subscriber_processes"] = len(subs.pids)
            # which workers the kernel gave the active clients to (established sockets, after - before)
            rec["active_per_worker"] = [tcp_sockets(p) - s0 for p, s0 in zip(relay.pids, socks0, strict=True)]
            base, count = nth * 100_000_000, round(rate * duration_s)
            subs.arm(base, count)
            time.sleep(0.5)
            # everything on the machine that is ours: the idle crowd's generators and Redis too
            groups = {"workers": relay.pids, "gen_subscribers": subs.pids, "gen_upstream": [up.pid],
                      **getattr(relay, "side_pids", {}), **(others or {})}
            if self.spy:
                busiest = relay.pids[max(range(len(relay.pids)), key=lambda i: rec["active_per_worker"][i])]
                spy = Spy(VENV_BIN, wd / "spy", busiest, duration_s, perf=self.perf)
                rec["spied_worker"] = busiest
                groups["spy"] = spy.pids()
            scan = Scan({**groups, "bench_and_master": [os.getpid(), relay.proc.pid]}, relay.pids)
            meter = CpuMeter(groups)
            for x in crowd or []:
                x.poll()
            mark = [len(x.ticks) for x in crowd or []]
            t_window = time.monotonic()
            for pid in pause or []:
                os.kill(pid, signal.SIGSTOP)
            try:
                up.run(base, rate, duration_s)
                up.expect("done", duration_s + 120)
                rec["cpu_pct"] = meter.stop()
                rec["scan"] = scan.stop()
                # every event delivered before stopped processes run again: their backlog of pongs
                # (40,000 for the crowd) must not land on the relay while the last events are in flight
                subs.quiet(2000, 10_000)
            finally:
                for pid in pause or []:
                    os.kill(pid, signal.SIGCONT)
            if crowd:  # the crowd's pings answered while the active clients were timed
                for x in crowd:
                    x.poll()
                pings = sum(sum(t["pings"] for t in x.ticks[m:]) for x, m in zip(crowd, mark, strict=True))
                rec["crowd_pings_per_s"] = round(pings / (time.monotonic() - t_window), 1)
            ours = sum(v for k, v in rec["cpu_pct"].items() if k != "machine_busy_pct_of_all_cores")
            rec["cpu_pct"]["not_ours"] = round(rec["cpu_pct"]["machine_busy_pct_of_all_cores"] * (os.cpu_count() or 1)
                                               - ours, 1)  # other people's processes and the kernel's softirqs
            rep = subs.report()
            rec.update({k: rep[k] for k in ("delivered", "frames", "lost", "duplicated", "out_of_order", "closed")})
            rec["latency_ms"] = rep["latency_ms"]
            rec["relay_receive_ms"] = rep.get("relay_receive_ms")
        except Exception as exc:  # noqa: BLE001
            rec["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if subs is not None:
                subs.stop()
            if spy is not None:
                spy.wait()
        rec["loadavg_after"] = loadavg()
        scan = rec.get("scan", {})
        self.say(f"active {clients} x {rate:g}: p50 {rec.get('latency_ms', {}).get('p50')} p99 "
                 f"{rec.get('latency_ms', {}).get('p99')} ms, frames {rec.get('frames')}, lost {rec.get('lost')}, per worker "
                 f"{rec.get('active_per_worker')}, cpu {rec.get('cpu_pct')}, machine {scan.get('machine')}, "
                 f"others {scan.get('others_cpu')} {[(o['comm'], o['cpu']) for o in scan.get('others_top', [])]} "
                 f"{rec.get('error', '')}")
        return rec


def stop_all(*procs) -> None:
    """Stop every process started for a row (by its own pid), whatever the row reached."""
    for p in procs:
        if p is not None:
            p.stop()


def client_url(relay, route: str, quiet: bool = False) -> str:
    """An idle client's URL; `quiet`: subscribed to a topic no event has (the crowd beside active
    clients), otherwise to everything (nothing is published while idle clients are measured alone)."""
    topics = "&topics=idle.quiet" if quiet else ""
    if route == "sse":
        return f"http://127.0.0.1:{relay.port}/sse?snapshot=0{topics}"
    return f"ws://127.0.0.1:{relay.port}/ws?snapshot=0{topics}"


def accept_metrics(base: str, scrapes: int) -> dict:
    """The most handshakes in flight and sockets waiting any worker reported (each scrape reaches one)."""
    seen: dict = {}
    for _ in range(scrapes):
        try:
            with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            for name in ("handshakes_in_flight_max", "accept_waiting_max", "accept_dropped_total"):
                if line.startswith("relayhouse_" + name):
                    key = line.split(" ")[0][len("relayhouse_"):]
                    seen[key] = max(seen.get(key, 0), float(line.split(" ")[1]))
    return seen


def active_p99(run: dict) -> dict:
    """A crowd run's active p99 (ms) before, with and after the crowd; None for a row it lacks."""
    return {k: (run.get(k) or {}).get("latency_ms", {}).get("p99")
            for k in ("active_without", "active_with", "active_after")}


def p99_ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def variant_env(variant: str) -> dict:
    """'HANDSHAKE_CONCURRENCY=0+MAX_ACCEPT=4096' -> the relay settings of a row ('default' or '': none)."""
    if variant in ("", "default"):
        return {}
    return dict(part.split("=", 1) for part in variant.split("+"))


def cluster_env(workers: int, prefix: str) -> dict:
    if workers <= 1:
        return {}
    return {"REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"), "REDIS_PREFIX": prefix,
            "WEB_CONCURRENCY": str(workers), "STARTUP_GRACE_S": "0"}


def health_env(on: bool) -> dict:
    """HEALTH_BIND on a free loopback port: /health and /metrics get a listener of their own."""
    return {"HEALTH_BIND": f"127.0.0.1:{free_port()}"} if on else {}


def drop_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


def git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=BENCH.parent).stdout.strip()
    except OSError:
        return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["breakdown", "storm", "crowd", "nchan"])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--routes", default="ws,sse")
    p.add_argument("--trace", action="store_true", help="breakdown: tracemalloc's top allocations (2,000 clients)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--total", type=int, default=100_000)
    p.add_argument("--steps", default="10000,50000,100000")
    p.add_argument("--loadgens", type=int, default=6)
    p.add_argument("--rate", type=float, default=2000, help="crowd: connections per second, all load generators")
    p.add_argument("--rates", default="", help="crowd: one --rate per step (comma-separated)")
    p.add_argument("--settle-s", type=float, default=5.0, help="crowd: wait after the last connect")
    p.add_argument("--hold-s", type=float, default=40)
    p.add_argument("--active", type=int, default=1000)
    p.add_argument("--active-rate", type=float, default=200)
    p.add_argument("--active-s", type=float, default=20)
    p.add_argument("--health-port", action="store_true",
                   help="crowd/storm: run with HEALTH_BIND and time /health and /metrics on that listener")
    p.add_argument("--max-accept", default="",
                   help="storm: comma-separated MAX_ACCEPT values run interleaved ('default' = unset, the relay's default; 0 = gunicorn's choice); crowd: one value")
    p.add_argument("--variants", default="",
                   help="storm: comma-separated relay settings run interleaved, each 'NAME=VALUE+NAME=VALUE' or "
                        "'default' (e.g. default,HANDSHAKE_CONCURRENCY=0+MAX_ACCEPT=0); instead of --max-accept; "
                        "crowd: one such value")
    p.add_argument("--rounds", type=int, default=1, help="storm: rounds of the --max-accept values or --variants")
    p.add_argument("--spy", action="store_true", help="crowd: py-spy on the busiest worker in each active row")
    p.add_argument("--perf", action="store_true", help="crowd, with --spy: perf record -a in each active row")
    p.add_argument("--paused-row", action="store_true",
                   help="crowd: an active row with the crowd held but its load generators stopped (SIGSTOP)")
    p.add_argument("--warmup-s", type=float, default=0,
                   help="crowd: an untimed active row of this length first (the first row after the relay "
                        "starts was often its worst); recorded as active_warmup, not in the ratio")
    p.add_argument("--active-procs", type=int, default=1,
                   help="crowd: spread the active clients over this many subscriber processes (one process with "
                        "1,000 clients at 200 events/s is itself ~85 %% busy, and its own queue is then measured too)")
    p.add_argument("--crowd-nice", type=int, default=0,
                   help="crowd: renice the crowd's load generators to this before the with row (they stand for "
                        "clients on other hosts; the relay's own pings are unchanged)")
    p.add_argument("--somaxconn", type=int, default=None,
                   help="set net.core.somaxconn (the kernel's cap on BACKLOG) for the run, put back after; needs root")
    p.add_argument("--root", default="",
                   help="the checkout whose relay runs (e.g. a `git archive` of main with .venv linked); default this one")
    p.add_argument("--out", default="")
    a = p.parse_args()
    if a.root:
        Relayhouse.root = Path(a.root).resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: the finally blocks stop every child
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(a.out) if a.out else BENCH / "results" / f"{stamp}-idle-{a.scenario}"
    b = IdleBench(out.resolve())
    b.spy, b.perf, b.paused_row, b.crowd_nice, b.warmup_s = a.spy, a.perf, a.paused_row, a.crowd_nice, a.warmup_s
    b.active_procs = a.active_procs
    with somaxconn(a.somaxconn):
        run(a, b)
    print(out)


def run(a, b: IdleBench) -> None:
    if a.scenario == "breakdown":
        for route in a.routes.split(","):
            b.breakdown(route, 2000 if a.trace else a.n, a.trace)
    elif a.scenario == "nchan":
        b.nchan(a.n)
    elif a.scenario == "storm":
        for nth in range(1, a.rounds + 1):
            if a.variants:
                for variant in a.variants.split(","):
                    b.storm(a.n, a.workers, a.health_port, "", nth if a.rounds > 1 else 0, variant)
                continue
            for value in (a.max_accept or "default").split(","):
                b.storm(a.n, a.workers, a.health_port, "" if value == "default" else value, nth if a.rounds > 1 else 0)
    else:
        steps = [int(s) for s in a.steps.split(",")]
        rates = [float(r) for r in a.rates.split(",")] if a.rates else [a.rate] * len(steps)
        kept = [(step, rate) for step, rate in zip(steps, rates, strict=True) if step <= a.total]
        steps, rates = [step for step, _ in kept], [rate for _, rate in kept]  # --total 0: the active row alone
        rec = b.crowd(a.total, steps, a.workers, a.loadgens, rates, a.hold_s, a.active, a.active_rate, a.active_s,
                      a.settle_s, a.health_port, "" if a.max_accept in ("", "default") else a.max_accept,
                      a.variants)
        b.say(f"crowd: ok={rec.get('ok')} {rec.get('error', '')}")


if __name__ == "__main__":
    main()
