"""The relayhouse benchmark: relayhouse, nginx + nchan and the naive relay side by side, one load generator.

    bench/run.sh                  # the whole bench (~20 min on 2 cores), installs what it needs
    bench/run.sh --quick          # a smoke run (~3 min)
    .venv/bin/python bench/run.py --help

Scenarios (each run starts a fresh system and a fresh subscriber process):
  fanout   100 and 1000 clients at rising rates until a system loses or falls behind,
           clients that refuse permessage-deflate, then clients that offer it (browsers)
  light    100 x 50, 100 x 500, 1000 x 50, 1000 x 200, 1000 x 500 point by point: relayhouse's
           default, relayhouse with the previous HUB_FLUSH_INTERVAL_MS=10, nchan
  mixed    contract §12: 900 live clients, 100 at max_hz=2, 10 reading 4 KiB/s with
           on_slow=conflate, 1000 events/s over 50 topics; beside the 900 alone, 1010 all live
           and 1000 all at max_hz=2
  idle     10,000 idle /ws connections: RSS growth per connection
  ingest   upstream events/s with persistence on (embedded chDB, then a ClickHouse server),
           every event checked in the store; a bare clickhouse-driver insert for comparison
  slow     one client that stops reading among fast ones: the others' p99 with and without it
  profile  py-spy on the relay's worker at 1000 x 200, 1000 x 500 and the ingest rate
  cluster  1, 2 and 4 workers behind one upstream connection (REDIS_URL, the Redis on
           127.0.0.1:6379 or BENCH_REDIS_URL): the same fan-out points, clients spread by the kernel

Results: bench/results/<UTC time>/results.json (+ logs), summarized by bench/report.py into
bench/results/<UTC time>/summary.md and docs/bench-*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import (  # noqa: E402
    BENCH,
    ROOT,
    VENV_BIN,
    CpuMeter,
    Naive,
    Nchan,
    Relayhouse,
    SlowReader,
    StalledClient,
    Subscribers,
    Upstream,
    free_port,
    http_json,
    loadavg,
    rss_kib,
    wait_for,
)

DEFAULT_ONLY = "fanout,light,mixed,deflate,slow,idle,ingest,profile,cluster"
FAIL_P99_MS = 1000.0  # a p99 above this means the system no longer keeps up
DRAIN_MAX_MS = 10_000  # events not received within this after the last send count as lost
QUIET_MS = 2_000  # ... or when nothing came for this long (a system that stalls is behind anyway)


class Bench:
    def __init__(self, args):
        self.args = args
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.out = (Path(args.out) if args.out else BENCH / "results" / stamp).resolve()
        self.work = self.out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"machine": machine(), "args": vars(args), "started": stamp, "runs": []}
        self.n = 0
        self.relay_config = "gunicorn.conf.py"  # bench/latency_probe.py runs the relay with its probe config
        self.relay_env: dict = {}  # added to every relay's environment (bench/mixed_rounds.py --monitor)
        self.pyspy = False  # mixed runs: py-spy the worker (bench/mixed_rounds.py --pyspy)

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def save(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1))

    def next_id(self, label: str) -> tuple[str, int]:
        self.n += 1
        return f"r{self.n:03d}-{label}", self.n * 10_000_000

    # -- one fan-out run ------------------------------------------------------------------

    def start_system(self, kind: str, run_id: str, up: Upstream, env: dict | None = None):
        wd = self.work / run_id
        if kind == "relayhouse":
            return Relayhouse(wd, up.url, env, config=self.relay_config)
        if kind == "nchan":
            return Nchan(wd)
        system = Naive(wd, up.url)
        wait_for(lambda: _peers(up) >= 1, 20, "naive relay connected upstream")
        return system

    def fanout(self, kind: str, clients: int, rate: float, *, deflate: bool, duration_s: float,
               slow: int = 0, env: dict | None = None, scenario: str = "fanout", profile: str | None = None,
               retry: bool = False) -> dict:
        run_id, base = self.next_id(f"{kind}-{clients}x{rate:g}{'-deflate' if deflate else ''}{'-slow' if slow else ''}"
                                    f"{'-retry' if retry else ''}")
        wd = self.work / run_id
        wd.mkdir(parents=True, exist_ok=True)
        record = {"id": run_id, "scenario": scenario, "system": kind, "clients": clients, "rate": rate,
                  "deflate": deflate, "slow": slow, "duration_s": duration_s, "env": env or {}, "retry": retry,
                  "loadavg_before": loadavg()}
        up = Upstream("publish" if kind == "nchan" else "serve", wd / "upstream.log")
        system = subs = spy = None
        try:
            system = self.start_system(kind, run_id, up, env)
            if kind == "nchan":
                up.connect(system.pub_url(run_id))
            subs = Subscribers(system.sub_url(run_id), clients, deflate=deflate,
                               log=wd / "subscribers.log", first_frame=kind == "relayhouse")
            stalled = [StalledClient(system.sub_url(run_id)) for _ in range(slow)]
            record["connect"] = subs.opened
            count = round(rate * duration_s)
            subs.arm(base, count)
            time.sleep(0.5)  # let handshakes and snapshots settle
            rss0 = sum(rss_kib(p) for p in system.pids)
            if "REDIS_URL" in getattr(system, "env", {}):
                record["workers"] = system.workers
                record["sockets_per_worker"] = system.connections_per_worker()
            meter = CpuMeter({"system": system.pids, "gen_upstream": [up.pid], "gen_subscribers": [subs.pid],
                              **getattr(system, "side_pids", {})})
            if profile:
                spy = start_pyspy(system.pids[0], duration_s, wd / f"{profile}.txt")
            up.run(base, rate, duration_s)
            done = up.expect("done", duration_s + 120)
            record["cpu_pct"] = meter.stop()
            record["generator"] = done
            record["drain"] = subs.quiet(QUIET_MS, DRAIN_MAX_MS)
            rep = subs.report()
            if stalled:
                if kind == "relayhouse":
                    record["slow_consumer_closes"] = metric(system.base, "relayhouse_slow_consumer_closes_total")
                rep["slow_clients"] = [c.outcome() for c in stalled]
            record["rss_kib"] = {"before": rss0, "after": sum(rss_kib(p) for p in system.pids)}
            record.update(rep)
            span = rep["span_s"] or 0
            record["deliveries_per_s"] = round(rep["delivered"] / max(duration_s, span), 1) if rep["delivered"] else 0
            p99 = rep["latency_ms"]["p99"]
            record["kept_up"] = p99 is not None and p99 < FAIL_P99_MS
            record["ok"] = (rep["lost"] == 0 and rep["duplicated"] == 0 and rep["out_of_order"] == 0
                            and rep["closed"] == 0 and record["kept_up"])
            if spy is not None:
                spy.wait(timeout=60)
                record["profile"] = str((wd / f"{profile}.txt").relative_to(self.out))
            if kind == "relayhouse":
                record["health"] = system.health()
        except Exception as exc:  # noqa: BLE001  (a broken run is recorded, the bench goes on)
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["ok"] = False
        finally:
            for p in (subs, system, up):
                if p is not None:
                    p.stop()
            if spy is not None and spy.poll() is None:
                spy.terminate()
                spy.wait()
        record["loadavg_after"] = loadavg()
        self.results["runs"].append(record)
        self.save()
        self.say(summary_line(record))
        return record

    # -- scenarios --------------------------------------------------------------------------

    def sweep(self, systems: list[str], clients: int, rates: list[float], deflate: bool, duration_s: float,
              long_s: dict | None = None) -> None:
        """Rising rates, all systems side by side at each rate, each system until it loses or falls behind.
        `long_s`: rates run longer (the targets' 30 s points)."""
        alive = list(systems)
        for rate in rates:
            d = (long_s or {}).get(rate, duration_s)
            for kind in list(alive):
                rec = self.fanout(kind, clients, rate, deflate=deflate, duration_s=d)
                if not rec["ok"]:
                    # once more before giving up on a system: on a shared 2-core machine a burst of
                    # someone else's load can sink one run (both runs are kept and reported)
                    rec = self.fanout(kind, clients, rate, deflate=deflate, duration_s=d, retry=True)
                if not rec["ok"]:
                    alive.remove(kind)
            if not alive:
                break

    def cluster(self, workers: list[int], points: list[tuple[int, float]], duration_s: float) -> None:
        """The same fan-out points with 1, 2, 4 ... workers behind one upstream connection (REDIS_URL).

        Every worker count gets a fresh key prefix; a point that fails is retried once, as in sweep()."""
        url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
        for n in workers:
            for clients, rate in points:
                for retry in (False, True):
                    prefix = f"rh-bench-{time.time_ns()}"
                    env = {"REDIS_URL": url, "REDIS_PREFIX": prefix, "WEB_CONCURRENCY": str(n),
                           "STARTUP_GRACE_S": "0"}
                    rec = self.fanout("relayhouse", clients, rate, deflate=False, duration_s=duration_s, env=env,
                                      scenario="cluster", retry=retry)
                    drop_prefix(url, prefix)
                    if rec["ok"]:
                        break

    def idle(self, systems: list[str], n: int) -> None:
        for kind in systems:
            run_id, _ = self.next_id(f"{kind}-idle{n}")
            wd = self.work / run_id
            wd.mkdir(parents=True, exist_ok=True)
            record = {"id": run_id, "scenario": "idle", "system": kind, "clients": n, "loadavg_before": loadavg()}
            up = Upstream("publish" if kind == "nchan" else "serve", wd / "upstream.log")
            system = subs = None
            try:
                system = self.start_system(kind, run_id, up)
                warm = Subscribers(system.sub_url(run_id), 10, deflate=False, log=wd / "warm.log")
                warm.stop()  # the first connections load code and buffers: not per-connection cost
                time.sleep(1.0)
                rss0 = sum(rss_kib(p) for p in system.pids)
                t0 = time.monotonic()
                subs = Subscribers(system.sub_url(run_id), n, deflate=False, log=wd / "subscribers.log",
                                   connect_timeout_s=300, first_frame=kind == "relayhouse")
                record["connect"] = subs.opened
                record["connect_s"] = round(time.monotonic() - t0, 2)
                time.sleep(3.0)
                rss1 = sum(rss_kib(p) for p in system.pids)
                opened = subs.opened["connected"]
                record.update(rss_before_kib=rss0, rss_after_kib=rss1, connected=opened,
                              kib_per_connection=round((rss1 - rss0) / max(1, opened), 2))
                if kind == "relayhouse":
                    record["health_clients"] = system.health()["clients"]
                record["ok"] = opened == n
            except Exception as exc:  # noqa: BLE001
                record["error"] = f"{type(exc).__name__}: {exc}"
                record["ok"] = False
            finally:
                for p in (subs, system, up):
                    if p is not None:
                        p.stop()
            record["loadavg_after"] = loadavg()
            self.results["runs"].append(record)
            self.save()
            self.say(f"{run_id}: {record.get('connected')} idle connections, "
                     f"{record.get('kib_per_connection')} KiB each {record.get('error', '')}")

    def ingest(self, backend: str, rates: list[float], duration_s: float, per_frame: int = 1,
               profile: str | None = None) -> list[dict]:
        out = []
        ch_dir = ch_port = None
        if backend == "clickhouse":
            ch_dir, ch_port = self.work / "clickhouse", free_port()
            subprocess.run(["bash", str(ROOT / ".ci" / "clickhouse.sh"), "start", str(ch_dir), str(ch_port),
                            str(free_port())], check=True, stdout=subprocess.DEVNULL)
        try:
            for rate in rates:
                rec = self.ingest_run(backend, rate, duration_s, per_frame, ch_port, profile=profile)
                out.append(rec)
                if not rec["ok"] or profile:
                    break
            if backend == "clickhouse" and not profile:
                self.results["clickhouse_driver_insert"] = bare_insert(ch_port)
                self.say(f"bare clickhouse-driver insert: {self.results['clickhouse_driver_insert']}")
                self.save()
        finally:
            if ch_dir is not None:
                subprocess.run(["bash", str(ROOT / ".ci" / "clickhouse.sh"), "stop", str(ch_dir)],
                               check=False, stdout=subprocess.DEVNULL)
        return out

    def ingest_run(self, backend: str, rate: float, duration_s: float, per_frame: int, ch_port: int | None,
                   profile: str | None = None) -> dict:
        run_id, base = self.next_id(f"ingest-{backend}-{rate:g}x{per_frame}")
        wd = self.work / run_id
        wd.mkdir(parents=True, exist_ok=True)
        db = f"bench_{self.n}"
        env = {"CLICKHOUSE_URL": None if backend == "chdb" else f"clickhouse://default@127.0.0.1:{ch_port}/{db}"}
        record = {"id": run_id, "scenario": "ingest", "system": "relayhouse", "backend": backend, "rate": rate,
                  "per_frame": per_frame, "duration_s": duration_s, "loadavg_before": loadavg()}
        up = Upstream("serve", wd / "upstream.log")
        system = subs = spy = None
        try:
            system = Relayhouse(wd, up.url, env)
            # warm-up: the first inserts load code (chDB's first Python() insert takes ~0.5 s);
            # a relay in service is warm, so the measured window starts after them
            warm = round(rate / 4)
            up.run(base - 1_000_000, rate / 4, 1.0, per_frame)
            up.expect("done", 60)
            wait_for(lambda: system.health()["store"].get("written", 0) >= warm, 60, "warm-up written", 0.2)
            subs = Subscribers(system.sub_url(run_id), 1, deflate=False, log=wd / "subscribers.log",
                               first_frame=True)
            count = round(rate * duration_s)
            subs.arm(base, count)
            time.sleep(0.5)
            meter = CpuMeter({"system": system.pids, "gen_upstream": [up.pid], "gen_subscribers": [subs.pid]})
            if profile:
                spy = start_pyspy(system.pids[0], duration_s, wd / f"{profile}.txt")
            written0 = system.health()["store"].get("written", 0)
            t0 = time.monotonic()
            up.run(base, rate, duration_s, per_frame)
            samples = []
            while True:
                try:
                    done = up.expect("done", 0.5)
                    break
                except TimeoutError:
                    if time.monotonic() - t0 > duration_s + 120:
                        raise
                    try:
                        h = system.health()
                    except OSError:  # a worker whose loop is held by its reader does not answer
                        record["health_unanswered"] = record.get("health_unanswered", 0) + 1
                        continue
                    samples.append((round(time.monotonic() - t0, 2), h["store"].get("written", 0), h["store"]["pending"],
                                    h["store"]["spooled"], h["upstream"]["events"]))
            record["cpu_pct"] = meter.stop()
            t_sent = time.monotonic()
            record["generator"] = done
            record["drain"] = subs.quiet(QUIET_MS, DRAIN_MAX_MS)
            rep = subs.report()
            record["subscriber"] = rep

            def all_written():
                h = system.health()
                return h if h["store"].get("written", 0) - written0 >= done["sent"] and not h["store"]["pending"] else None
            try:
                h = wait_for(all_written, 60, "every event written", 0.1)
                record["store_drain_s"] = round(time.monotonic() - t_sent, 2)
            except TimeoutError:
                h = system.health()
                record["store_drain_s"] = None
            t_last = time.monotonic()
            record["health_store"] = h["store"]
            record["upstream_events"] = h["upstream"]["events"]
            record["timeline"] = samples
            record["store_check"] = store_check(system, backend, db, ch_port, base)
            sc = record["store_check"]
            written = sc.get("count", 0)
            record["rows_per_s_sustained"] = round(written / max(duration_s, t_last - t0), 1) if written else 0
            record["ok"] = (sc.get("count") == done["sent"] and sc.get("uniq") == done["sent"]
                            and sc.get("all_count") == sc.get("all_uniq") == done["sent"] + warm
                            and sc.get("n_min") == base and sc.get("n_max") == base + done["sent"] - 1
                            and rep["lost"] == 0 and rep["duplicated"] == 0
                            and (rep["latency_ms"]["p99"] or 0) < FAIL_P99_MS)
            if spy is not None:
                spy.wait(timeout=60)
                record["profile"] = str((wd / f"{profile}.txt").relative_to(self.out))
        except Exception as exc:  # noqa: BLE001
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["ok"] = False
        finally:
            for p in (subs, system, up):
                if p is not None:
                    p.stop()
            if spy is not None and spy.poll() is None:
                spy.terminate()
                spy.wait()
        record["loadavg_after"] = loadavg()
        self.results["runs"].append(record)
        self.save()
        sub = record.get("subscriber", {})
        self.say(f"{run_id}: ok={record['ok']} store={record.get('store_check')} "
                 f"recv p99={sub.get('relay_receive_ms', {}).get('p99')} ms e2e p99={sub.get('latency_ms', {}).get('p99')} ms "
                 f"cpu={record.get('cpu_pct')} drain={record.get('store_drain_s')} s {record.get('error', '')}")
        return record

    def light(self, systems: list[str], points: list[tuple[int, float]], duration_s: float) -> None:
        """Light and heavy load side by side, point by point: relayhouse with its default (no flush
        floor), relayhouse with the previous default (HUB_FLUSH_INTERVAL_MS=10) and nchan."""
        for clients, rate in points:
            for kind in systems:
                if kind == "naive":
                    continue
                self.fanout(kind, clients, rate, deflate=False, duration_s=duration_s, scenario="light")
                if kind == "relayhouse":
                    self.fanout(kind, clients, rate, deflate=False, duration_s=duration_s, scenario="light",
                                env=PREVIOUS_DEFAULT)

    def mixed(self, duration_s: float, rate: float = 1000.0, topics: int = 50) -> None:
        """Contract §12's audiences in one relay (targets: Conflation), beside the same load without
        them (900 live) and with everyone live (1010): the live clients' p99, the 2 Hz clients' rate
        and newest values, the slow readers' staleness, the worker's CPU."""
        for label, rated, slow, live in (("live900", 0, 0, 900), ("mixed", 100, 10, 900), ("live1010", 0, 0, 1010),
                                         ("rated1000", 1000, 0, 0)):  # one group: one conflation, 2 frames/s each
            self.mixed_run(label, live, rated, slow, rate, topics, max(duration_s, MIXED_MIN_S))

    def mixed_run(self, label: str, live: int, rated: int, slow: int, rate: float, topics: int,
                  duration_s: float) -> dict:
        run_id, base = self.next_id(f"relayhouse-mixed-{label}")
        wd = self.work / run_id
        wd.mkdir(parents=True, exist_ok=True)
        env = {"WS_QUEUE_MAX_BYTES": str(MIXED_QUEUE_BYTES), **self.relay_env}
        record = {"id": run_id, "scenario": "mixed", "label": label, "system": "relayhouse", "clients": live,
                  "rated": rated, "slow_readers": slow, "rate": rate, "topics": topics, "duration_s": duration_s,
                  "env": env, "loadavg_before": loadavg()}
        up = Upstream("serve", wd / "upstream.log")
        system = subs = rated_subs = spy = None
        readers: list[SlowReader] = []
        try:
            system = Relayhouse(wd, up.url, env, config=self.relay_config)
            url = system.sub_url(run_id)
            subs = Subscribers(url, live, deflate=False, log=wd / "subscribers.log", first_frame=True)
            if rated:
                rated_subs = Subscribers(url + "&max_hz=2", rated, deflate=False, log=wd / "rated.log",
                                         first_frame=True, rated=True, topics=topics)
            readers = [SlowReader(url + "&on_slow=conflate", MIXED_SLOW_BPS) for _ in range(slow)]
            count = round(rate * duration_s)
            for s in (subs, rated_subs):
                if s is not None:
                    s.arm(base, count)
            time.sleep(0.5)
            # bench_self: this process, i.e. the slow readers' threads (each also reports its own, cpu_s)
            meter = CpuMeter({"system": system.pids, "gen_upstream": [up.pid], "gen_subscribers": [subs.pid],
                              **({"gen_rated": [rated_subs.pid]} if rated_subs else {}), "bench_self": [os.getpid()]})
            tcp0 = tcp_counters()
            out0 = hub_counters(system.base)
            spy = start_pyspy(system.pids[0], duration_s, wd / "pyspy.txt") if self.pyspy else None
            up.run(base, rate, duration_s, topics=topics)
            modes = []
            t_end = time.monotonic() + duration_s + 120
            while True:
                try:
                    record["generator"] = up.expect("done", 1.0)
                    break
                except TimeoutError:
                    if time.monotonic() > t_end:
                        raise
                    modes.append(system.health().get("clients_by_mode"))
            record["cpu_pct"] = meter.stop()
            # what the worker did for that CPU: frames and event deliveries written, flushes and their time
            record["hub"] = {k: round(v - out0.get(k, 0), 3) for k, v in hub_counters(system.base).items()}
            if spy is not None:
                spy.wait(timeout=60)
                record["profile"] = str((wd / "pyspy.txt").relative_to(self.out))
            # receive queues over their buffer (a subscriber behind): the kernel prunes and collapses
            # them, on loopback inside the sender's send() (machine-wide counters: other work counts too)
            record["tcp_counters"] = {k: v - tcp0.get(k, 0) for k, v in tcp_counters().items()}
            record["clients_by_mode"] = modes
            record["drain"] = subs.quiet(QUIET_MS, DRAIN_MAX_MS)
            rep = subs.report()
            record.update(rep)
            if rated_subs is not None:
                time.sleep(1.0)  # the last release is at most 0.5 s after the last event
                record["rated_report"] = rated_subs.report()
            record["slow_readers_report"] = [r.outcome() for r in readers]
            record["conflated_events"] = metric(system.base, "relayhouse_conflated_events_total")
            record["flushes"] = {le: metric(system.base, f'relayhouse_hub_flush_seconds_bucket{{le="{le}"}}')
                                 for le in ("0.01", "0.1", "1.0", "+Inf")}
            record["deliveries_per_s"] = round(rep["delivered"] / max(duration_s, rep["span_s"] or 0), 1)
            record["ok"] = rep["lost"] == 0 and rep["duplicated"] == 0 and rep["out_of_order"] == 0 and rep["closed"] == 0
        except Exception as exc:  # noqa: BLE001  (a broken run is recorded, the bench goes on)
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["ok"] = False
        finally:
            for r in readers:
                r.outcome()
            for p in (subs, rated_subs, system, up):
                if p is not None:
                    p.stop()
            if spy is not None and spy.poll() is None:
                spy.terminate()
                spy.wait()
        record["loadavg_after"] = loadavg()
        self.results["runs"].append(record)
        self.save()
        lat, cpu = record.get("latency_ms", {}), record.get("cpu_pct", {})
        rr = record.get("rated_report", {})
        self.say(f"{run_id}: ok={record['ok']} live p50={lat.get('p50')} p99={lat.get('p99')} "
                 f"cpu sys={cpu.get('system')}% machine={cpu.get('machine_busy_pct_of_all_cores')}% "
                 f"rated: p99={rr.get('latency_ms', {}).get('p99')} max={rr.get('latency_ms', {}).get('max')} "
                 f"{rr.get('rated')} slow: {[(r['connected'], r['modes'][:4], r['age_ms_max']) for r in record.get('slow_readers_report', [])][:3]} "
                 f"tcp={record.get('tcp_counters')} {record.get('error', '')}")
        return record

    def slow_client(self, systems: list[str], clients: int, rate: float, duration_s: float,
                    env: dict | None = None) -> None:
        """The same run without and with one client that stops reading right after its handshake
        (a 4 KiB receive buffer, so the server feels it within seconds). Not the naive relay: it
        cannot carry the rate at all."""
        for kind in systems:
            if kind == "naive":
                continue
            for slow in (0, 1):
                self.fanout(kind, clients, rate, deflate=False, duration_s=duration_s, slow=slow,
                            env=env if kind == "relayhouse" else None, scenario="slow")


# every mixed run: a 4 KiB/s reader passes 32 KiB within seconds, and its `slow` frame, queued
# behind that backlog, reaches it 8 s later (staleness is bound / link rate: contract §12)
MIXED_QUEUE_BYTES = 32 * 1024
MIXED_SLOW_BPS = 4096
MIXED_MIN_S = 20.0  # long enough for a slow reader to go conflated and back
LIGHT_POINTS = [(100, 50), (100, 500), (1000, 50), (1000, 200), (1000, 500)]
PREVIOUS_DEFAULT = {"HUB_FLUSH_INTERVAL_MS": "10"}  # the flush-interval floor before contract §12


def tcp_counters() -> dict[str, int]:
    """The kernel's TcpExt counters of receive-queue pruning and collapsing (/proc/net/netstat)."""
    wanted = ("PruneCalled", "TCPRcvCollapsed", "TCPToZeroWindowAdv")
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return {k: int(table[k]) for k in wanted if k in table}
    return {}


def hub_counters(base: str) -> dict[str, float]:
    """The hub's running totals from /metrics: frames and event deliveries written, flushes, flush seconds."""
    names = {"frames_out": "relayhouse_frames_out_total", "events_out": "relayhouse_events_out_total",
             "flushes": "relayhouse_hub_flush_seconds_count", "flush_s": "relayhouse_hub_flush_seconds_sum"}
    return {k: metric(base, name) or 0.0 for k, name in names.items()}


def metric(base: str, name: str) -> float | None:
    """One sample's value from /metrics (summed over labels)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and not line.startswith("#")]
    return sum(values) if values else None


def _peers(up: Upstream) -> int:
    up.send(cmd="peers")
    return up.expect("peers", 5)["peers"]


def start_pyspy(pid: int, duration_s: float, out: Path) -> subprocess.Popen | None:
    spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if spy is None:
        return None
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(duration_s)), "--rate", "250",
                             "--format", "raw", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def store_check(system: Relayhouse, backend: str, db: str, ch_port: int | None, base: int) -> dict:
    # the measured window's events (n >= base; the warm-up's are below) and the whole table:
    # every event exactly once (count = uniqExact(seq)), the window complete from base to its end
    n = "visitParamExtractUInt(data, 'n')"
    sql = (f"SELECT countIf({n} >= {base}), uniqExactIf(seq, {n} >= {base}), minIf(seq, {n} >= {base}), "
           f"maxIf(seq, {n} >= {base}), minIf({n}, {n} >= {base}), maxIf({n}, {n} >= {base}), count(), uniqExact(seq) "
           "FROM {db}.events")
    try:
        if backend == "chdb":
            rows = http_json(system.base + "/query", {"sql": sql.format(db="relayhouse")}, timeout_s=60)["rows"]
            row = rows[0]
        else:
            text = subprocess.run(["clickhouse-client", "--host", "127.0.0.1", "--port", str(ch_port), "-q",
                                   sql.format(db=db)], check=True, capture_output=True, text=True).stdout
            row = text.split()
        keys = ("count", "uniq", "seq_min", "seq_max", "n_min", "n_max", "all_count", "all_uniq")
        return {k: int(v) for k, v in zip(keys, row, strict=True)}
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def bare_insert(ch_port: int) -> dict:
    out = subprocess.run([str(VENV_BIN / "python"), str(BENCH / "ch_insert.py"), "--port", str(ch_port)],
                         capture_output=True, text=True, check=False)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": out.stderr[-500:]}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))

    def version(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    def pkg(name):
        return version(["dpkg-query", "-W", "-f=${Version}", name])

    import gevent  # noqa: PLC0415
    return {
        "nproc": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(), "python": platform.python_version(), "gevent": gevent.__version__,
        "nginx": version(["nginx", "-v"]), "nchan": pkg("libnginx-mod-nchan"), "node": version(["node", "--version"]),
        "ws": json.loads((BENCH / "loadgen" / "node_modules" / "ws" / "package.json").read_text())["version"],
        "clickhouse_server": pkg("clickhouse-server"), "git": version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE), "loadavg_at_start": loadavg(),
    }


def summary_line(r: dict) -> str:
    if "error" in r:
        return f"{r['id']}: ERROR {r['error']}"
    lat = r["latency_ms"]
    cpu = r.get("cpu_pct", {})
    slow = f" slow={r['slow_clients']}" if r.get("slow_clients") else ""
    return (f"{r['id']}: ok={r['ok']} {r['deliveries_per_s']:.0f}/s p50={lat['p50']} p99={lat['p99']} "
            f"p99.9={lat['p99.9']} max={lat['max'] and round(lat['max'], 1)} lost={r['lost']} dup={r['duplicated']} "
            f"closed={r['closed']} cpu sys={cpu.get('system')}% sub={cpu.get('gen_subscribers')}% "
            f"up={cpu.get('gen_upstream')}% machine={cpu.get('machine_busy_pct_of_all_cores')}% "
            f"ext={r.get('connect', {}).get('extensions')} load={r['loadavg_before'][0]}{slow}")


def drop_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few points, short runs")
    parser.add_argument("--only", default=DEFAULT_ONLY,
                        help="comma-separated scenarios (fanout, light, mixed, deflate, idle, ingest, slow, profile, cluster)")
    parser.add_argument("--systems", default="relayhouse,nchan,naive")
    parser.add_argument("--duration", type=float, default=None, help="seconds per fan-out run (default 15, quick 5)")
    parser.add_argument("--out", default=None, help="results directory (default bench/results/<UTC time>)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it: 10,000 sockets each
    only = set(args.only.split(","))
    systems = args.systems.split(",")
    quick = args.quick
    d = args.duration or (5.0 if quick else 15.0)
    target_points = {} if quick or args.duration else {200: 30.0, 500: 30.0}  # the targets: 1000 x 200 (500) for 30 s
    b = Bench(args)
    b.say(f"results in {b.out}; machine {b.results['machine']}")
    t_start = time.monotonic()

    if "fanout" in only:
        if quick:
            b.sweep(systems, 100, [1000], False, d)
            b.sweep(systems, 1000, [200], False, d)
        else:
            b.sweep(systems, 100, [500, 1000, 2000, 5000, 10000], False, d)
            b.sweep(systems, 1000, [100, 200, 500, 1000, 2000], False, d, long_s=target_points)
    if "light" in only:
        b.light(systems, LIGHT_POINTS[:2] if quick else LIGHT_POINTS, d)
    if "mixed" in only and "relayhouse" in systems:
        b.mixed(d)
    if "deflate" in only:
        if quick:
            b.sweep(systems, 1000, [200], True, d)
        else:
            b.sweep(systems, 100, [1000, 2000, 5000], True, d)
            b.sweep(systems, 1000, [100, 200, 500, 1000], True, d, long_s=target_points)
    if "slow" in only:
        b.slow_client(systems, 100, 2000, 8.0 if quick else 20.0)
    if "cluster" in only and "relayhouse" in systems:
        if quick:
            b.cluster([1, 2], [(1000, 200)], d)
        else:
            b.cluster([1, 2, 4], [(1000, 200), (1000, 500), (2000, 250), (4000, 100)], d)
    if "idle" in only:
        b.idle(systems, 1000 if quick else 10_000)
    if "ingest" in only:
        rates = [20_000] if quick else [10_000, 20_000, 30_000, 40_000, 60_000]
        idur = 5.0 if quick else 15.0
        b.ingest("chdb", rates, idur)
        if shutil.which("clickhouse-client") and (shutil.which("clickhouse-server") or Path("/usr/sbin/clickhouse-server").exists()):
            b.ingest("clickhouse", rates, idur)
        else:
            b.say("no clickhouse-server: the ClickHouse-server ingest runs are skipped")
        b.ingest("chdb", [20_000], idur, per_frame=10)
    if "profile" in only and "relayhouse" in systems:
        pd = 5.0 if quick else 10.0
        b.fanout("relayhouse", 1000, 200, deflate=False, duration_s=pd, scenario="profile", profile="pyspy-1000x200")
        if not quick:
            b.fanout("relayhouse", 1000, 500, deflate=False, duration_s=pd, scenario="profile", profile="pyspy-1000x500")
            b.ingest("chdb", [20_000], pd, profile="pyspy-ingest-20000")

    b.results["elapsed_s"] = round(time.monotonic() - t_start, 1)
    b.results["loadavg_at_end"] = loadavg()
    b.save()
    latest = BENCH / "results" / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    if b.out.resolve().is_relative_to((BENCH / "results").resolve()):
        latest.symlink_to(b.out.resolve())
    b.say(f"done in {b.results['elapsed_s']} s; writing the summary")
    plots = [] if quick or args.only != DEFAULT_ONLY else ["--plots-dir", str(ROOT / "docs")]
    subprocess.run([sys.executable, str(BENCH / "report.py"), str(b.out), *plots], check=False)


if __name__ == "__main__":
    main()
