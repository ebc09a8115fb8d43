"""The health listener (HEALTH_BIND) answered by a small process of each worker, not by its gevent loop.

Why: in a connect storm above the handshake capacity (1,500 connects/s offered to 7 workers during the
100,000 crowd) a probe accepted by the loop waited behind the handshakes that loop already had: p99
296 ms, max 631 ms. A native thread of the worker (the previous design) still needed the worker's GIL
three or four times per probe, and the loop's thread holds it, descheduled, whenever the saturated
machine preempts it: p99 108-152 ms. A process of its own has its own interpreter; at a raised priority
(HEALTH_NICE) the kernel runs it as soon as a probe arrives (docs/benchmarks.md, "`HEALTH_BIND` answered
by a process of each worker").

How: post_worker_init starts webapp/healthchild.py in a fresh interpreter (os.posix_spawn: no Python runs
between fork and exec; Python's descriptors are close-on-exec, so it inherits only the two made
inheritable here, the listener and a memfd; a memfd needs Linux). The loop writes its /health and
/metrics reports there every REFRESH_S (computed on the loop, as on PORT) and a heartbeat
every TICK_S; the health process serves the last report with its age, never waiting for the loop. A loop
that has not run its heartbeat for HEALTH_LOOP_STALL_MS makes /health a 503: the health process must not
make a stuck worker look alive. Its unexpected errors are counted in the map and logged by the loop; a
health process that ended is started again (at most once a second).
"""

import _socket
import logging
import os
import sys
import time
from pathlib import Path

import gevent
from gevent import monkey

from handlers import jsonx, probes
from webapp.healthchild import PATHS, Report, Shared
from webapp.metrics import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

native_waitpid = monkey.get_original("os", "waitpid")
native_spawn = monkey.get_original("os", "posix_spawn")  # gevent's would reap the child itself
CHILD_SCRIPT = str(Path(__file__).with_name("healthchild.py"))

TICK_S = 0.1  # the loop's heartbeat
REFRESH_S = 1.0  # the loop makes /health's and /metrics' reports this often (~0.5 ms of a worker's CPU)
RESPAWN_MIN_S = 1.0  # a health process that keeps ending is started again at most this often


class LoopSide:
    """What runs on the gevent loop: the heartbeat, a fresh report of each path every REFRESH_S, the
    health process's errors logged, and the health process started again if it ended."""

    def __init__(self, runtime, hub, shared: Shared, child: "Child"):
        self.runtime = runtime
        self.shared = shared
        self.child = child
        self.made_at: dict[str, float | None] = dict.fromkeys(PATHS)
        self.making: set[str] = set()
        self._logged_errors = 0
        self._told_nice = False
        self._timer = hub.loop.timer(TICK_S, TICK_S, ref=False)

    def start(self) -> None:
        self.shared.beat(time.monotonic())
        self._timer.start(self._heartbeat)
        self._refresh()  # a first report of each, so a loop stuck from the start still has one served

    def _heartbeat(self) -> None:
        now = time.monotonic()
        self.shared.beat(now)
        if any(made is None or now - made >= REFRESH_S for made in self.made_at.values()):
            self._refresh()
            self._check_child(now)

    def _check_child(self, now: float) -> None:
        count, last = self.shared.errors()
        if count != self._logged_errors:
            self._logged_errors = count
            gevent.spawn(log.error, "health listener process: %d unexpected errors so far, the last: %s", count, last)
        if not self._told_nice and self.shared.nice_refused():
            self._told_nice = True
            gevent.spawn(log.info, "the HEALTH_BIND process keeps the worker's priority, not HEALTH_NICE=%d (it "
                         "needs CAP_SYS_NICE)", self.child.nice)
        ended = self.child.reap()
        if ended is not None:
            gevent.spawn(log.error, "health listener process %d ended (%s): starting another", *ended)
        if not self.child.running and now - self.child.started_at >= RESPAWN_MIN_S:
            self.child.start()

    def _refresh(self) -> None:
        for path in PATHS:
            if path not in self.making:  # one at a time (a follower's /health asks Redis)
                self.making.add(path)
                gevent.spawn(self._make, path)

    def _make(self, path: str) -> None:
        try:
            if path == probes.HEALTH:
                report = Report(time.monotonic(), jsonx.dumps(self.runtime.health()))
            else:
                report = Report(time.monotonic(), self.runtime.render_metrics())
        except Exception as exc:  # noqa: BLE001  (answered 500 like the route would, and logged)
            log.exception("health listener: making %s failed", path)
            report = Report(time.monotonic(), jsonx.dumps({"error": f"{path} failed: {exc!r}"[:300]}), True)
        finally:
            self.making.discard(path)
        self.made_at[path] = report.made_at
        self.shared.publish(path, report)


class Child:
    """The worker's health process: starts it, knows whether it runs, reaps it."""

    def __init__(self, sock: _socket.socket, shared: Shared, stall_s: float, nice: int | None):
        self.sock, self.shared, self.stall_s, self.nice = sock, shared, stall_s, nice
        self.pid: int | None = None
        self.started_at = 0.0
        for fd in (sock.fileno(), shared.fd):
            os.set_inheritable(fd, True)  # by the health process only: the worker starts no other

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> int:
        self.started_at = time.monotonic()
        argv = [sys.executable, CHILD_SCRIPT, str(self.sock.fileno()), str(self.shared.fd), repr(self.stall_s),
                "" if self.nice is None else str(self.nice), str(os.getpid()), CONTENT_TYPE_LATEST]
        self.pid = native_spawn(sys.executable, argv, os.environ)
        return self.pid

    def reap(self) -> tuple[int, str] | None:
        """(pid, how it ended) if the health process has ended since the last look, else None."""
        if self.pid is None:
            return None
        try:
            pid, status = native_waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, -1  # reaped by someone else
        if pid == 0:
            return None
        self.pid = None
        how = ("unknown" if status == -1 else f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.WEXITSTATUS(status)}")
        return pid, how


def listener_of(sockets: list, port: int):
    """The socket of `sockets` (gunicorn's, gevent-patched) listening on TCP `port`, else None."""
    for sock in sockets:
        try:
            name = sock.getsockname()
        except OSError:
            continue
        if isinstance(name, tuple) and len(name) >= 2 and name[1] == port:
            return sock
    return None


def serve_in_child(worker, runtime, settings) -> bool:
    """From post_worker_init, before the worker builds its servers: take the health listener out of
    `worker.sockets` and answer it from a health process. False (the loop serves it) when it is not there."""
    listener = listener_of(worker.sockets, settings.health_port) if settings.health_port else None
    if listener is None:
        if settings.health_port:
            log.warning("HEALTH_BIND port %s is not among gunicorn's listeners: its event loop serves it",
                        settings.health_port)
        return False
    worker.sockets = [s for s in worker.sockets if s is not listener]
    sock = _socket.socket(fileno=listener.detach())
    shared = Shared.create()
    child = Child(sock, shared, settings.health_loop_stall_ms / 1000, settings.health_nice)
    loop_side = LoopSide(runtime, gevent.get_hub(), shared, child)
    loop_side.start()  # the first beat is in the map before the health process can answer
    child.start()
    return True
