"""gunicorn.conf.py plus stage timestamps in the worker, for bench/latency_probe.py (never in production).

Per event it notes, on CLOCK_MONOTONIC (the clock the bench upstream stamps `t` with): the upstream
read handing its frames to the ingest, the hub's publish, the start of the flush that carried it
and the end of that flush (every client's write done). Beside that: every garbage collection
(gc.callbacks, with its generation and duration) and the event loop's lateness (a greenlet asking
to sleep 1 ms, noting how much later it woke), when each `max_hz` group's release began
and ended its writes (so a rate's spacing can be read at the relay's sockets, free of the
subscriber's read jitter), each flush's wall and CPU time (time.thread_time), and the worker's
OS thread count at exit. When the worker exits it writes
$PROBE_DIR/latency-<pid>.json.
"""

import os
from pathlib import Path

_here = Path(__file__).resolve().parent
exec(compile((_here.parent / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"))  # noqa: S102

_post_worker_init = post_worker_init  # noqa: F821 (defined by the exec above)


def post_worker_init(worker):
    import gc
    import json
    import time

    import gevent

    from webapp.hub import Hub
    from webapp.ingest import Ingest

    mono_ms = time.monotonic  # seconds; converted below
    probe_dir = Path(os.environ["PROBE_DIR"])
    stages: dict[int, list] = {}  # seq -> [t_sent, recv, publish, flush_start, flush_end, batch]
    gcs: list = []
    lags: list = []
    current = {"recv": None}

    submit = Ingest.submit_frames

    def submit_frames(self, frames, recv_ms):
        current["recv"] = mono_ms() * 1000
        return submit(self, frames, recv_ms)

    publish = Hub.publish

    def hub_publish(self, events):
        now = mono_ms() * 1000
        for e in events:
            t = e.data.get("t") if isinstance(e.data, dict) else None
            if isinstance(t, (int, float)):
                stages[e.seq] = [t, current["recv"], now, None, None, None]
        return publish(self, events)

    flush = Hub.flush
    flushes: list = []  # [start ms, wall ms, the worker thread's CPU ms, events] per flush with events
    thread_time = time.thread_time

    def hub_flush(self, batch, now_s=None):
        start = mono_ms() * 1000
        cpu0 = thread_time()
        out = flush(self, batch, now_s)
        cpu = (thread_time() - cpu0) * 1000
        end = mono_ms() * 1000
        if batch:
            flushes.append([round(start, 3), round(end - start, 3), round(cpu, 3), len(batch)])
        for e in batch:
            row = stages.get(e.seq)
            if row is not None:
                row[3], row[4], row[5] = start, end, len(batch)
        return out

    send = Hub._send
    releases: list = []  # a rated group's release: [group id, first write starts, last write ends] (ms)

    def hub_send(self, group, events, conflated):
        if group.conflator is None:
            return send(self, group, events, conflated)
        start = mono_ms() * 1000
        try:
            return send(self, group, events, conflated)
        finally:
            releases.append([id(group), start, mono_ms() * 1000])

    Ingest.submit_frames = submit_frames
    Hub.publish = hub_publish
    Hub.flush = hub_flush
    Hub._send = hub_send

    started = {}

    def on_gc(phase, info):
        if phase == "start":
            started["t"] = time.perf_counter()
        elif "t" in started:
            gcs.append([mono_ms() * 1000, info["generation"], (time.perf_counter() - started.pop("t")) * 1000,
                        info.get("collected", 0)])

    gc.callbacks.append(on_gc)
    _post_worker_init(worker)

    def lag_monitor():
        while True:
            before = time.perf_counter()
            gevent.sleep(0.001)
            late = (time.perf_counter() - before) * 1000 - 1.0
            if late > 0.5:
                lags.append([mono_ms() * 1000, round(late, 3)])

    def dump():
        out = probe_dir / f"latency-{os.getpid()}.json"
        out.write_text(json.dumps({"stages": stages, "gc": gcs, "lags": lags, "releases": releases,
                                   "flushes": flushes, "threads": len(os.listdir(f"/proc/{os.getpid()}/task")),
                                   "gc_threshold": gc.get_threshold(), "gc_frozen": gc.get_freeze_count()}))

    _dumps.append(dump)  # written when the worker exits: a dump while events come would stall the loop
    gevent.spawn(lag_monitor)


_dumps: list = []
_worker_exit = worker_exit  # noqa: F821 (defined by the exec above)


def worker_exit(server, worker):
    for dump in _dumps:
        dump()
    _worker_exit(server, worker)
