"""The health listener's own process (HEALTH_BIND), started by each worker (webapp/healthproc.py).

Run as a script in a fresh interpreter, not forked from the worker: a fork kept ~25 MiB of the worker's
pages to itself (copy-on-write) and ran in a copy of a process with the store's threads. It gets the
listener and a memfd from the worker (nothing else is inherited), maps the memfd, where the worker's
loop writes its /health and /metrics reports and its heartbeat, and answers each probe from the last
report, in a thread per connection, never waiting for the worker. It asks for SIGKILL when the worker
dies (PR_SET_PDEATHSIG) and checks its parent every second. Imports: the standard library and the pure
handlers/probes.py only (not the `webapp` package: that is the whole app).
"""

import _socket
import _thread
import ctypes
import mmap
import os
import signal
import struct
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # a script: the project's root first on the path, not webapp/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from handlers import jsonx, probes  # noqa: E402

READ_TIMEOUT_S = 2.0  # a whole request head, however it trickles in (slow-loris)
WRITE_TIMEOUT_S = 2.0
LINGER_S = 0.2  # reading what the client still sends after the answer, so closing does not reset it
LINGER_BYTES = 65536
MAX_CONNECTIONS = 16  # per worker, at once; more are answered 503 at once
ACCEPT_POLL_S = 1.0
PR_SET_PDEATHSIG = 1

# The shared map: a generation counter (odd while the loop writes a report), the heartbeat, the health
# process's error count and last error, then one slot per path: made_at, failed, length, body.
_GEN, _BEAT, _ERRORS, _ERROR_LEN, _NICE_REFUSED, _ERROR = 0, 8, 16, 24, 28, 32
ERROR_BYTES = 300
_SLOTS = 512
_SLOT_HEAD = struct.Struct("<dII")  # made_at, failed, length
SLOT_BYTES = 4 << 20  # a report's body at most
PATHS = (probes.HEALTH, probes.METRICS)
MAP_BYTES = _SLOTS + len(PATHS) * SLOT_BYTES


class Report:
    """One answer the loop made: when (time.monotonic), the body, whether it failed."""

    __slots__ = ("made_at", "body", "failed")

    def __init__(self, made_at: float, body: bytes, failed: bool = False):
        self.made_at, self.body, self.failed = made_at, body, failed


class Shared:
    """The memory the worker and its health process share: a memfd both map. One writer of reports
    and beat (the worker's loop); the health process's threads write only the error fields."""

    def __init__(self, fd: int):
        self.fd = fd
        self.map = mmap.mmap(fd, MAP_BYTES, flags=mmap.MAP_SHARED)
        self._errors = _thread.allocate_lock()  # the health process's threads, one at a time

    @classmethod
    def create(cls) -> "Shared":
        fd = os.memfd_create("relayhouse-health")
        os.ftruncate(fd, MAP_BYTES)  # pages are touched only as far as written
        return cls(fd)

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
            time.sleep(0.0002)
        raise TimeoutError(f"the {path} report was being written for too long")

    def note_error(self, text: str) -> None:
        data = text.encode("utf-8", "replace")[:ERROR_BYTES]
        with self._errors:
            self.map[_ERROR:_ERROR + len(data)] = data
            struct.pack_into("<I", self.map, _ERROR_LEN, len(data))
            struct.pack_into("<Q", self.map, _ERRORS, struct.unpack_from("<Q", self.map, _ERRORS)[0] + 1)


class Server:
    """The child's side: accepts on the health listener and answers each connection in a thread of its own."""

    def __init__(self, sock: _socket.socket, shared: Shared, stall_s: float, metrics_type: str):
        self.sock = sock
        self.shared = shared
        self.stall_s = stall_s
        self.metrics_type = metrics_type
        self.open = 0
        self._count = _thread.allocate_lock()

    def serve_forever(self, worker_pid: int) -> None:
        self.sock.settimeout(ACCEPT_POLL_S)  # the fd stays non-blocking: it is shared with the other workers
        while True:
            try:
                fd, _ = self.sock._accept()
            except TimeoutError:
                if os.getppid() != worker_pid:
                    return  # the worker is gone (PR_SET_PDEATHSIG unavailable)
                continue
            except OSError as exc:  # out of file descriptors, ...
                self._note(exc)
                time.sleep(0.05)
                continue
            conn = _socket.socket(fileno=fd)
            with self._count:
                busy = self.open >= MAX_CONNECTIONS
                if not busy:
                    self.open += 1
            if not busy:
                try:
                    _thread.start_new_thread(self._serve, (conn,))
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
        except Exception as exc:  # noqa: BLE001  (kept, logged from the loop: logged by the worker's loop)
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
            return probes.response(200, probes.metrics_answer(report.body, silent_s, age_s), self.metrics_type,
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


def main(argv: list[str]) -> None:
    """argv: listener fd, map fd, HEALTH_LOOP_STALL_MS in seconds, HEALTH_NICE ('' = none), the worker's
    pid, the /metrics content type."""
    listener_fd, map_fd, stall_s, nice, worker_pid, metrics_type = argv
    listener_fd, map_fd, worker_pid = int(listener_fd), int(map_fd), int(worker_pid)
    low, high = sorted((listener_fd, map_fd))
    for start, stop in ((3, low), (low + 1, high), (high + 1, 1 << 20)):
        os.closerange(start, stop)  # what the worker's libraries opened without close-on-exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: serve_forever notices a new parent instead
    if os.getppid() != worker_pid:
        return  # the worker ended before the death signal was asked for
    shared = Shared(map_fd)
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, int(nice))
        except OSError:
            shared.map[_NICE_REFUSED] = 1
    Server(_socket.socket(fileno=listener_fd), shared, float(stall_s), metrics_type).serve_forever(worker_pid)


if __name__ == "__main__":
    main(sys.argv[1:])
