"""The health listener (HEALTH_BIND) answered by a small process of each worker, not by its gevent loop.

Why: in a connect storm above the handshake capacity (1,500 connects/s offered to 7 workers during the
100,000 crowd) a probe accepted by the loop waited behind the handshakes that loop already had: p99
296 ms, max 631 ms. A native thread of the worker (the previous design) still needed the worker's GIL
three or four times per probe, and the loop's thread holds it, descheduled, whenever the saturated
machine preempts it: p99 108-152 ms. A process of its own has its own interpreter; at a raised priority
(HEALTH_NICE) the kernel runs it as soon as a probe arrives (docs/benchmarks.md, "the health listener's
own process").

How: post_worker_init forks the child once the runtime has started; the child keeps only the listener
(every other inherited descriptor is closed), dies with its worker (PR_SET_PDEATHSIG) and never returns
into the worker's code. It answers from a shared memory map: the loop writes its /health and /metrics
reports there every REFRESH_S (computed on the loop, as on PORT) and a heartbeat every TICK_S; the child
serves the last report with its age, never waiting for the loop. A loop that has not run its heartbeat
for HEALTH_LOOP_STALL_MS makes /health a 503: the child must not make a stuck worker look alive. The
child's unexpected errors are counted in the map and logged by the loop; a child that died is forked
again (at most once a second).

What the child may touch: the C socket type (`_socket`, which gevent does not patch), the original
`_thread` and `time.sleep`, the shared map, and the pure handlers/probes.py. Never gevent, never logging
(its locks are gevent's after monkey-patching), never the runtime.
"""

import _socket
import ctypes
import gc
import logging
import mmap
import os
import signal
import struct
import time

import gevent
from gevent import monkey

from handlers import jsonx, probes
from webapp.metrics import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

start_native_thread = monkey.get_original("_thread", "start_new_thread")
native_lock = monkey.get_original("_thread", "allocate_lock")
native_sleep = monkey.get_original("time", "sleep")
native_fork = monkey.get_original("os", "fork")
native_waitpid = monkey.get_original("os", "waitpid")
native_signal = monkey.get_original("signal", "signal")  # gevent's would reach for the worker's hub
try:  # looked up here, not in the child: a dlopen after fork could wait on a lock another thread held
    prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    prctl = None  # not Linux: serve_forever notices a new parent instead

TICK_S = 0.1  # the loop's heartbeat
REFRESH_S = 1.0  # the loop makes /health's and /metrics' reports this often (~0.5 ms of a worker's CPU)
READ_TIMEOUT_S = 2.0  # a whole request head, however it trickles in (slow-loris)
WRITE_TIMEOUT_S = 2.0
LINGER_S = 0.2  # reading what the client still sends after the answer, so closing does not reset it
LINGER_BYTES = 65536
MAX_CONNECTIONS = 16  # per worker, at once; more are answered 503 at once
ACCEPT_POLL_S = 1.0
RESPAWN_MIN_S = 1.0  # a child that keeps dying is forked again at most this often
PR_SET_PDEATHSIG = 1

# The shared map: a generation counter (odd while the loop writes a report), the heartbeat, the child's
# error count and last error, then one slot per path: made_at, failed, length, body.
_GEN, _BEAT, _ERRORS, _ERROR_LEN, _NICE_REFUSED, _ERROR = 0, 8, 16, 24, 28, 32
ERROR_BYTES = 300
_SLOTS = 512
_SLOT_HEAD = struct.Struct("<dII")  # made_at, failed, length
SLOT_BYTES = 4 << 20  # a report's body at most (the map's pages are touched only as far as written)
PATHS = (probes.HEALTH, probes.METRICS)


class Report:
    """One answer the loop made: when (time.monotonic), the body, whether it failed."""

    __slots__ = ("made_at", "body", "failed")

    def __init__(self, made_at: float, body: bytes, failed: bool = False):
        self.made_at, self.body, self.failed = made_at, body, failed


class Shared:
    """The memory the worker and its health child share (MAP_SHARED, anonymous: inherited by the fork).
    One writer of reports and beat (the loop); the child's threads write only the error fields."""

    def __init__(self):
        self.map = mmap.mmap(-1, _SLOTS + len(PATHS) * SLOT_BYTES, flags=mmap.MAP_SHARED)
        self._errors = native_lock()  # the child's threads, one at a time

    # the loop's side
    def beat(self, now: float) -> None:
        struct.pack_into("<d", self.map, _BEAT, now)

    def publish(self, path: str, report: Report) -> None:
        body = report.body
        if len(body) > SLOT_BYTES - _SLOT_HEAD.size:
            body, failed = jsonx.dumps({"error": f"{path} report of {len(body)} bytes is too large"}), True
        else:
            failed = report.failed
        base = _SLOTS + PATHS.index(path) * SLOT_BYTES
        gen = struct.unpack_from("<Q", self.map, _GEN)[0]
        struct.pack_into("<Q", self.map, _GEN, gen + 1)  # odd: being written
        _SLOT_HEAD.pack_into(self.map, base, report.made_at, int(failed), len(body))
        self.map[base + _SLOT_HEAD.size:base + _SLOT_HEAD.size + len(body)] = body
        struct.pack_into("<Q", self.map, _GEN, gen + 2)

    def errors(self) -> tuple[int, str]:
        count = struct.unpack_from("<Q", self.map, _ERRORS)[0]
        length = min(ERROR_BYTES, struct.unpack_from("<I", self.map, _ERROR_LEN)[0])
        return count, self.map[_ERROR:_ERROR + length].decode("utf-8", "replace")

    def nice_refused(self) -> bool:
        return bool(self.map[_NICE_REFUSED])

    # the child's side
    def last_beat(self) -> float:
        return struct.unpack_from("<d", self.map, _BEAT)[0]

    def report(self, path: str) -> Report | None:
        """The last report of `path`, None before the first; read again while the loop writes it."""
        base = _SLOTS + PATHS.index(path) * SLOT_BYTES
        for _ in range(200):
            gen = struct.unpack_from("<Q", self.map, _GEN)[0]
            if not gen & 1:
                made_at, failed, length = _SLOT_HEAD.unpack_from(self.map, base)
                body = self.map[base + _SLOT_HEAD.size:base + _SLOT_HEAD.size + min(length, SLOT_BYTES)]
                if struct.unpack_from("<Q", self.map, _GEN)[0] == gen:
                    return None if made_at == 0 else Report(made_at, body, bool(failed))
            native_sleep(0.0002)
        raise TimeoutError(f"the {path} report was being written for too long")

    def note_error(self, text: str) -> None:
        data = text.encode("utf-8", "replace")[:ERROR_BYTES]
        with self._errors:
            self.map[_ERROR:_ERROR + len(data)] = data
            struct.pack_into("<I", self.map, _ERROR_LEN, len(data))
            struct.pack_into("<Q", self.map, _ERRORS, struct.unpack_from("<Q", self.map, _ERRORS)[0] + 1)


class LoopSide:
    """What runs on the gevent loop: the heartbeat, a fresh report of each path every REFRESH_S, the
    child's errors logged, and the child forked again if it died."""

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
            gevent.spawn(log.error, "health listener process %d ended (%s): forking another", *ended)
        if not self.child.running and now - self.child.forked_at >= RESPAWN_MIN_S:
            self.child.fork()

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


class Server:
    """The child's side: accepts on the health listener and answers each connection in a thread of its own."""

    def __init__(self, sock: _socket.socket, shared: Shared, stall_s: float):
        self.sock = sock
        self.shared = shared
        self.stall_s = stall_s
        self.open = 0
        self._count = native_lock()

    def serve_forever(self, worker_pid: int) -> None:
        self.sock.settimeout(ACCEPT_POLL_S)  # the fd stays non-blocking: it is shared with the other workers
        while True:
            try:
                fd, _ = self.sock._accept()
            except TimeoutError:
                if os.getppid() != worker_pid:
                    return  # the worker is gone (PR_SET_PDEATHSIG unavailable, or it raced the fork)
                continue
            except OSError as exc:  # out of file descriptors, ...
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
        except Exception as exc:  # noqa: BLE001  (kept, logged from the loop: the child may not log)
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
        report, now = self.shared.report(probe.path), time.monotonic()
        silent_s = max(0.0, now - self.shared.last_beat())
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
        self.shared.note_error(repr(exc))


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


class Child:
    """The worker's health child: forks it, knows whether it runs, reaps it."""

    def __init__(self, sock: _socket.socket, shared: Shared, stall_s: float, nice: int | None):
        self.sock, self.shared, self.stall_s, self.nice = sock, shared, stall_s, nice
        self.pid: int | None = None
        self.forked_at = 0.0

    @property
    def running(self) -> bool:
        return self.pid is not None

    def fork(self) -> int:
        worker_pid = os.getpid()
        self.forked_at = time.monotonic()
        pid = native_fork()
        if pid == 0:
            _child_main(self.sock, self.shared, self.stall_s, self.nice, worker_pid)  # never returns
        self.pid = pid
        return pid

    def reap(self) -> tuple[int, str] | None:
        """(pid, how it ended) if the child has ended since the last look, else None."""
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


def _child_main(sock: _socket.socket, shared: Shared, stall_s: float, nice: int | None, worker_pid: int):
    """The forked child: keep the listener, drop the rest of the worker, serve until the worker is gone."""
    code = 0
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
                       signal.SIGUSR2, signal.SIGWINCH, signal.SIGCHLD, signal.SIGABRT):
            native_signal(signum, signal.SIG_DFL)  # gunicorn's worker handlers are not this process's
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != worker_pid:
            os._exit(0)  # the worker ended before the death signal was asked for
        keep = sock.fileno()
        os.closerange(3, keep)  # the worker's clients, upstream, Redis, store: not the child's
        os.closerange(keep + 1, 1 << 20)
        gc.freeze()  # a collection would touch (and copy) every page of the worker it came from
        if nice is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, nice)
            except OSError:
                shared.map[_NICE_REFUSED] = 1
        Server(sock, shared, stall_s).serve_forever(worker_pid)
    except BaseException as exc:  # noqa: BLE001  (this process must never unwind into the worker's code)
        try:
            shared.note_error(f"health listener process failed: {exc!r}")
        finally:
            code = 1
    os._exit(code)


def serve_in_child(worker, runtime, settings) -> bool:
    """From post_worker_init, before the worker builds its servers: take the health listener out of
    `worker.sockets` and answer it from a forked child. False (the loop serves it) when it is not there."""
    listener = listener_of(worker.sockets, settings.health_port) if settings.health_port else None
    if listener is None:
        if settings.health_port:
            log.warning("HEALTH_BIND port %s is not among gunicorn's listeners: its event loop serves it",
                        settings.health_port)
        return False
    worker.sockets = [s for s in worker.sockets if s is not listener]
    sock = _socket.socket(fileno=listener.detach())
    shared = Shared()
    child = Child(sock, shared, settings.health_loop_stall_ms / 1000, settings.health_nice)
    loop_side = LoopSide(runtime, gevent.get_hub(), shared, child)
    loop_side.start()  # the first beat is in the map before the child can answer
    child.fork()
    return True
