"""gunicorn.conf.py plus a probe in each worker, for bench/idle.py's memory breakdown (never in production).

The probe is a greenlet that looks for files in $PROBE_DIR every 0.2 s: `start` begins
tracemalloc and takes a baseline snapshot; `report` writes report-<pid>.json with the
worker's RSS, its greenlets and sockets, the most numerous object types and, while tracing,
the allocations made since the baseline grouped by source line.
"""

import os
from pathlib import Path

_here = Path(__file__).resolve().parent
exec(compile((_here.parent / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"))  # noqa: S102

_post_worker_init = post_worker_init  # noqa: F821 (defined by the exec above)


def _rss_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _report(baseline):
    import collections
    import gc
    import tracemalloc

    import greenlet

    gc.collect()
    objects = gc.get_objects()
    types = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
    greenlets = [o for o in objects if isinstance(o, greenlet.greenlet)]
    report = {
        "pid": os.getpid(), "rss_kib": _rss_kib(),
        "greenlets": len(greenlets), "greenlets_alive": sum(1 for g in greenlets if not g.dead),
        "fds": len(os.listdir("/proc/self/fd")),
        "types": types.most_common(40),
    }
    if tracemalloc.is_tracing() and baseline is not None:
        snap = tracemalloc.take_snapshot()
        stats = snap.compare_to(baseline, "lineno")
        report["traced_kib"] = round(tracemalloc.get_traced_memory()[0] / 1024, 1)
        report["top"] = [{"where": str(s.traceback), "kib": round(s.size_diff / 1024, 1), "count": s.count_diff}
                         for s in stats[:40]]
    return report


def post_worker_init(worker):
    _post_worker_init(worker)
    import json
    import tracemalloc

    import gevent

    probe_dir = Path(os.environ["PROBE_DIR"])

    def probe():
        baseline = None
        while True:
            gevent.sleep(0.2)
            for request in sorted(probe_dir.glob("request-*")):
                command = request.read_text().strip()
                try:
                    request.unlink()
                except FileNotFoundError:
                    continue  # another worker took it
                if command == "start":
                    tracemalloc.start(1)
                    baseline = tracemalloc.take_snapshot()
                elif command == "report":
                    out = probe_dir / f"report-{os.getpid()}.json"
                    out.write_text(json.dumps(_report(baseline), indent=1))

    def guarded():
        while True:
            try:
                probe()
            except Exception:  # noqa: BLE001  (a bench probe: report and go on)
                import traceback
                traceback.print_exc()

    gevent.spawn(guarded)
