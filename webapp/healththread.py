"""The health listener (HEALTH_BIND) answered from a native thread of each worker, not from its gevent loop.

Why: in a connect storm above the handshake capacity (1,500 connects/s offered to 7 workers during the
100,000 crowd) a probe accepted by the loop waited behind the handshakes that loop already had: p99
296 ms, max 631 ms (docs/benchmarks.md, "`HEALTH_BIND` during the 100,000 crowd"); no greenlet
priority helps, the loop runs what it has in order. A native thread gets the GIL within the switch
interval (5 ms) however busy the loop is.

What the thread may touch: the C socket type (`_socket`, which gevent does not patch), the original
`_thread` and `time.sleep`, bytes and numbers the loop published (one attribute assignment each, atomic
under the GIL), and the pure handlers/probes.py. Never a gevent socket, lock or event, never logging
(its locks are gevent's after monkey-patching), never a part of the runtime: /health and /metrics are
computed on the loop, as on PORT, every REFRESH_S and published as bytes; the thread serves the last
one with its age, without waiting for the loop (a first try that waited up to 20 ms for a report made for
each probe gave a p50 of 17 ms in a storm the loop-served listener answered at p50 8 ms: the wait timed
out behind the handshakes). A loop that has not run its heartbeat for HEALTH_LOOP_STALL_MS makes /health
a 503: the thread must not make a stuck worker look alive.
"""

import _socket
import logging
import time

import gevent
from gevent import monkey

from handlers import jsonx, probes
from webapp.metrics import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

start_native_thread = monkey.get_original("_thread", "start_new_thread")
native_lock = monkey.get_original("_thread", "allocate_lock")
native_sleep = monkey.get_original("time", "sleep")

TICK_S = 0.1  # the loop's heartbeat
REFRESH_S = 1.0  # the loop makes /health's and /metrics' reports this often (~0.5 ms of a worker's CPU)
READ_TIMEOUT_S = 2.0  # a whole request head, however it trickles in (slow-loris)
WRITE_TIMEOUT_S = 2.0
LINGER_S = 0.2  # reading what the client still sends after the answer, so closing does not reset it
LINGER_BYTES = 65536
MAX_CONNECTIONS = 16  # per worker, at once; more are answered 503 at once
ACCEPT_POLL_S = 1.0


class Report:
    """One answer the loop made: when (time.monotonic), the body, whether it failed."""

    __slots__ = ("made_at", "body", "failed")

    def __init__(self, made_at: float, body: bytes, failed: bool = False):
        self.made_at, self.body, self.failed = made_at, body, failed


class LoopSide:
    """What runs on the gevent loop: the heartbeat, and a fresh report of each path every REFRESH_S."""

    def __init__(self, runtime, hub):
        self.runtime = runtime
        self.beat = time.monotonic()
        self.reports: dict[str, Report | None] = {probes.HEALTH: None, probes.METRICS: None}
        self.making: set[str] = set()
        self.thread_errors = 0  # written by the thread, logged from the loop
        self.thread_last_error = ""
        self._logged_errors = 0
        self._timer = hub.loop.timer(TICK_S, TICK_S, ref=False)

    def start(self) -> None:
        self._timer.start(self._heartbeat)
        self._refresh()  # a first report of each, so a loop stuck from the start still has one served

    def _heartbeat(self) -> None:
        self.beat = now = time.monotonic()
        if any(report is None or now - report.made_at >= REFRESH_S for report in self.reports.values()):
            self._refresh()
        if self.thread_errors != self._logged_errors:
            self._logged_errors = self.thread_errors
            gevent.spawn(log.error, "health listener thread: %d unexpected errors so far, the last: %s",
                         self.thread_errors, self.thread_last_error)

    def _refresh(self) -> None:
        for path in self.reports:
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
        self.reports[path] = report


class HealthThread:
    """The native side: accepts on the health listener and answers each connection in a thread of its own."""

    def __init__(self, sock: _socket.socket, loop_side: LoopSide, stall_s: float):
        self.sock = sock
        self.loop_side = loop_side
        self.stall_s = stall_s
        self.open = 0
        self._count = native_lock()

    def start(self) -> None:
        self.sock.settimeout(ACCEPT_POLL_S)  # the fd stays non-blocking: it is shared with the other workers
        start_native_thread(self._accept_forever, ())

    def _accept_forever(self) -> None:
        while True:
            try:
                fd, _ = self.sock._accept()
            except TimeoutError:
                continue
            except OSError as exc:  # out of file descriptors, the listener closed at exit, ...
                self._note(exc)
                native_sleep(0.05)
                continue
            conn = _socket.socket(fileno=fd)
            with self._count:
                busy = self.open >= MAX_CONNECTIONS
                if not busy:
                    self.open += 1
            if not busy:
                try:
                    start_native_thread(self._serve, (conn,))
                    continue
                except RuntimeError as exc:  # the process has no thread left to give
                    self._note(exc)
                    with self._count:
                        self.open -= 1
            self._refuse_busy(conn)

    def _refuse_busy(self, conn: _socket.socket) -> None:
        try:
            conn.setblocking(False)
            conn.send(probes.refusal_response(probes.Refusal(
                503, f"the health listener is busy: {MAX_CONNECTIONS} connections open in this worker")))
        except OSError:
            return  # a client that cannot take 200 bytes at once gets nothing: the listener stays free
        finally:
            conn.close()

    def _serve(self, conn: _socket.socket) -> None:
        try:
            conn.sendall(self._answer(conn))
            conn.shutdown(_socket.SHUT_WR)
            self._linger(conn)
        except OSError:
            return  # the client went away or timed out: nothing to answer to
        except Exception as exc:  # noqa: BLE001  (kept, logged from the loop: this thread may not log)
            self._note(exc)
        finally:
            conn.close()
            with self._count:
                self.open -= 1

    def _answer(self, conn: _socket.socket) -> bytes:
        head = self._read_head(conn)
        if isinstance(head, probes.Refusal):
            return probes.refusal_response(head)
        probe = probes.read_probe(head)
        conn.settimeout(WRITE_TIMEOUT_S)
        if isinstance(probe, probes.Refusal):
            return probes.refusal_response(probe)
        report, now = self.loop_side.reports[probe.path], time.monotonic()
        silent_s = max(0.0, now - self.loop_side.beat)
        age_s = None if report is None else max(0.0, now - report.made_at)
        if report is not None and report.failed:
            return probes.response(500, report.body, head_only=probe.head_only)
        if probe.path == probes.METRICS:
            if report is None:
                return probes.refusal_response(probes.Refusal(503, "no metrics from the worker's event loop yet"))
            return probes.response(200, probes.metrics_answer(report.body, silent_s, age_s), CONTENT_TYPE_LATEST,
                                   head_only=probe.head_only)
        loop = probes.loop_state(silent_s, self.stall_s, age_s)
        status, body = probes.health_answer(None if report is None else report.body, loop, probe.strict)
        return probes.response(status, body, head_only=probe.head_only)

    def _read_head(self, conn: _socket.socket) -> bytes | probes.Refusal:
        deadline = time.monotonic() + READ_TIMEOUT_S
        buffer = b""
        while probes.head_end(buffer) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return probes.Refusal(408, f"request head not received within {READ_TIMEOUT_S:g} s")
            conn.settimeout(left)
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionResetError("closed before a whole request head")
            buffer += chunk
            refusal = probes.oversize(buffer)
            if refusal is not None:
                return refusal
        return buffer

    def _linger(self, conn: _socket.socket) -> None:
        deadline, taken = time.monotonic() + LINGER_S, 0
        while taken < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            chunk = conn.recv(4096)
            if not chunk:
                return
            taken += len(chunk)

    def _note(self, exc: BaseException) -> None:
        self.loop_side.thread_last_error = repr(exc)[:300]
        self.loop_side.thread_errors += 1


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


def serve_in_thread(worker, runtime, settings) -> bool:
    """From post_worker_init, before the worker builds its servers: take the health listener out of
    `worker.sockets` and answer it from a native thread. False (the loop serves it) when it is not there."""
    listener = listener_of(worker.sockets, settings.health_port) if settings.health_port else None
    if listener is None:
        if settings.health_port:
            log.warning("HEALTH_BIND port %s is not among gunicorn's listeners: its event loop serves it",
                        settings.health_port)
        return False
    worker.sockets = [s for s in worker.sockets if s is not listener]
    sock = _socket.socket(fileno=listener.detach())
    loop_side = LoopSide(runtime, gevent.get_hub())
    loop_side.start()
    HealthThread(sock, loop_side, settings.health_loop_stall_ms / 1000).start()
    return True
