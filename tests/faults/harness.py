"""Tools of the fault suite: a paced upstream pump, many timed readers, a direct look at the store
and the spool, and the relay worker's file descriptors and memory as the kernel reports them.

Every fault test compares three records of the same stream: what the fake
upstream delivered to the relay's connection (`Pump.sent`), what each client
received, and what ClickHouse holds (read straight from the server, not through
the relay). Nothing here reaches into the relay's process beyond /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.events import unique_sym
from support.procnet import stat_fields
from support.upstream import FakeUpstream

# -- the upstream side ------------------------------------------------------------------------


class Pump:
    """Sends numbered trades through a fake upstream from a thread, at a steady rate.

    An element counts as sent only when its frame went to exactly one open
    relay connection (the send call returned); `n` counts sent elements only,
    so `sent[i]["n"] == i` always holds and the relay must number them in this
    order. `pause()` returns once no frame is being written.
    """

    def __init__(self, upstream: FakeUpstream, sym: str, rate_per_s: float, *, per_frame: int = 50,
                 ev: str = "T", pad: str = "") -> None:
        self.upstream = upstream
        self.sym = sym
        self.ev = ev
        self.pad = pad
        self.per_frame = per_frame
        self.interval_s = per_frame / rate_per_s
        self.sent: list[dict[str, Any]] = []
        self.sent_at: list[float] = []  # monotonic time each sent frame went out, per element
        self.refused_frames = 0  # frames that found no open relay connection
        self._run = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"pump-{sym}", daemon=True)

    def start(self) -> Pump:
        self._run.set()
        self._thread.start()
        return self

    def _frame(self) -> tuple[list[dict[str, Any]], str]:
        first = len(self.sent)
        now_ms = time.time() * 1000
        items = [{"ev": self.ev, "sym": self.sym, "n": n, "p": 100 + n / 4, "s": 100, "sent_ms": now_ms,
                  **({"pad": self.pad} if self.pad else {})} for n in range(first, first + self.per_frame)]
        return items, json.dumps(items)

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            if not self._run.is_set():
                self._idle.set()
                self._run.wait(0.05)
                next_at = time.monotonic()
                continue
            self._idle.clear()
            if not self._run.is_set():  # paused between the check and the flag: do not send
                continue
            items, frame = self._frame()
            receivers = self.upstream.send(frame)
            with self._lock:
                if receivers == 1:
                    self.sent.extend(items)
                    self.sent_at.extend([time.monotonic()] * len(items))
                else:
                    self.refused_frames += 1
            next_at += self.interval_s
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()  # behind: no burst to catch up
        self._idle.set()

    def pause(self) -> int:
        """Stop sending; returns how many elements were sent by then."""
        self._run.clear()
        if not self._idle.wait(10):
            raise AssertionError("the pump did not pause within 10 s")
        return len(self.sent)

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> int:
        self._stop.set()
        self._run.set()
        self._thread.join(10)
        if self._thread.is_alive():
            raise AssertionError("the pump thread did not stop")
        return len(self.sent)

    def rate_between(self, start: float, end: float) -> float:
        """Elements per second actually sent between two monotonic times."""
        with self._lock:
            count = sum(1 for at in self.sent_at if start <= at < end)
        return count / max(end - start, 1e-9)


@contextmanager
def pumped_client(ws, relay, upstream: FakeUpstream, rate_per_s: float,
                  per_frame: int = 10) -> Iterator[tuple[Any, Pump]]:
    """A /ws client on a topic of its own, snapshot read, and a pump feeding that topic (stopped after)."""
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    pump = Pump(upstream, sym, rate_per_s, per_frame=per_frame).start()
    try:
        yield client, pump
    finally:
        pump.stop()


# -- the client side ------------------------------------------------------------------------


def ns_of(events: Sequence[dict[str, Any]]) -> list[int]:
    return [event["data"]["n"] for event in events]


def seqs_of(events: Sequence[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


def assert_in_order_once(events: Sequence[dict[str, Any]], sent: Sequence[dict[str, Any]], who: str,
                         *, first_seq: int | None = None) -> None:
    """`events` carry exactly the elements of `sent`, in order, once each, on consecutive seqs."""
    got = ns_of(events)
    want = [item["n"] for item in sent]
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = len(got) - len(set(got))
        raise AssertionError(f"{who}: received {len(got)} events for {len(want)} sent; "
                             f"{len(missing)} missing (first {missing[:10]}), {extra} duplicated, "
                             f"in order: {got == sorted(got)}")
    seqs = seqs_of(events)
    if seqs:
        start = seqs[0] if first_seq is None else first_seq
        assert seqs == list(range(start, start + len(seqs))), f"{who}: seqs are not consecutive from {start}"


@dataclass
class ReaderLog:
    """What one reader got: events in arrival order, their latency, other frames, the close."""

    url: str
    events: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: list[tuple[float, float]] = field(default_factory=list)  # (sent_ms, latency_ms)
    others: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    error: str | None = None


class Readers:
    """Many /ws clients in one asyncio thread, each reading as fast as it can and timing every event.

    One thread and one event loop for all of them, so a hundred readers cost
    the test process little; each event's latency is its arrival time minus
    the `sent_ms` the pump wrote into it.
    """

    def __init__(self, urls: Sequence[str]) -> None:
        self.logs = [ReaderLog(url) for url in urls]
        self._loop = asyncio.new_event_loop()
        self._connected = threading.Event()
        self._connect_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="fault-readers", daemon=True)

    def start(self, timeout_s: float = 30) -> Readers:
        self._thread.start()
        if not self._connected.wait(timeout_s):
            raise AssertionError(f"readers not connected within {timeout_s}s")
        if self._connect_error is not None:
            self.stop()
            raise AssertionError(f"a reader could not connect: {self._connect_error!r}")
        return self

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _run(self) -> None:
        from websockets.asyncio.client import connect

        self._stopping = asyncio.Event()
        conns = []
        try:
            for log in self.logs:
                conns.append(await connect(log.url, compression=None, max_size=None, ping_interval=None,
                                           open_timeout=20, close_timeout=2, max_queue=None, proxy=None))
        except Exception as exc:  # noqa: BLE001  (any failure is reported to the test thread)
            self._connect_error = exc
            self._connected.set()
            for conn in conns:
                await conn.close()
            return
        self._connected.set()
        tasks = [asyncio.ensure_future(self._read(conn, log)) for conn, log in zip(conns, self.logs, strict=True)]
        await self._stopping.wait()
        for conn in conns:
            await conn.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, conn, log: ReaderLog) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in conn:
                now_ms = time.time() * 1000
                frame = json.loads(raw)
                if frame.get("type") in ("snapshot", "events"):
                    for event in frame["events"]:
                        log.events.append(event)
                        sent_ms = event["data"].get("sent_ms") if isinstance(event["data"], dict) else None
                        if sent_ms is not None:
                            log.latency_ms.append((sent_ms, now_ms - sent_ms))
                else:
                    log.others.append(frame)
        except ConnectionClosed:
            pass
        finally:
            if conn.close_code is not None:
                log.close_code = conn.close_code

    def stop(self) -> None:
        if self._stopping is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(15)
        if self._thread.is_alive():
            raise AssertionError("the reader thread did not stop")

    def wait_for_count(self, count: int, timeout_s: float, *, which: Sequence[int] | None = None) -> None:
        chosen = [self.logs[i] for i in which] if which is not None else self.logs
        deadline = time.monotonic() + timeout_s
        while True:
            behind = [(log.url, len(log.events)) for log in chosen if len(log.events) < count]
            if not behind:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"{len(behind)} readers short of {count} events after {timeout_s}s, "
                                     f"e.g. {behind[:3]}")
            time.sleep(0.05)


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        raise AssertionError("no samples")
    index = min(len(ordered) - 1, max(0, int(round(pct / 100 * len(ordered))) - 1))
    return ordered[index]


# -- the store side -----------------------------------------------------------------------------


class StoreProbe:
    """Reads the relay's table straight from the ClickHouse server (the relay is not asked)."""

    def __init__(self, server, url: str) -> None:
        self.server = server
        self.db = url.rsplit("/", 1)[1]
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = self.server.client()
        return self._client

    def facts(self) -> dict[str, int]:
        try:
            rows = self.client.execute(f"SELECT count(), uniqExact(seq), min(seq), max(seq) FROM {self.db}.events")
        except Exception as exc:  # noqa: BLE001  (the table may not exist yet, or the server is restarting)
            self.close()
            return {"count": -1, "unique": -1, "min": -1, "max": -1, "error": str(exc)[:200]}
        count, unique, low, high = (int(v) for v in rows[0])
        return {"count": count, "unique": unique, "min": low, "max": high}

    def seq_n(self) -> list[tuple[int, int]]:
        """(seq, n) of every row, ascending seq; n is the pump's element number."""
        rows = self.client.execute(
            f"SELECT seq, visitParamExtractInt(data, 'n') FROM {self.db}.events ORDER BY seq")
        return [(int(seq), int(n)) for seq, n in rows]

    def rows(self) -> list[tuple[int, str, int]]:
        """(seq, topic, n) of every row, ascending seq."""
        rows = self.client.execute(
            f"SELECT seq, topic, visitParamExtractInt(data, 'n') FROM {self.db}.events ORDER BY seq")
        return [(int(seq), topic, int(n)) for seq, topic, n in rows]

    def wait_count(self, count: int, timeout_s: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout_s
        while True:
            facts = self.facts()
            if facts["count"] >= count:
                return facts
            if time.monotonic() >= deadline:
                raise AssertionError(f"store holds {facts} after {timeout_s}s, expected {count} rows")
            time.sleep(0.2)

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client = None


def assert_store_holds(probe: StoreProbe, expected: Sequence[tuple[int, int]]) -> None:
    """The table holds exactly `expected` (seq, n) rows: each once, nothing else (raw rows, no FINAL)."""
    facts = probe.facts()
    assert facts["count"] == facts["unique"], f"duplicated rows in the store: {facts}"
    rows = probe.seq_n()
    if rows != list(expected):
        have, want = set(rows), set(expected)
        raise AssertionError(f"store rows differ: {len(rows)} stored, {len(expected)} expected; "
                             f"missing {sorted(want - have)[:10]}, unexpected {sorted(have - want)[:10]}")


def read_spool(directory: Path) -> list[dict[str, Any]]:
    """The events in the spool (`directory` is DATA_DIR/spool; the spool is the `spool` table of
    DATA_DIR/relay.sqlite3, one JSON envelope per line of `payload`, docs/operations.md), oldest first.

    Read with the standard library's sqlite3 rather than with the relay's own
    code, so a bug there cannot decide what the test expects.
    """
    path = directory.parent / "relay.sqlite3"
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT payload FROM spool ORDER BY id").fetchall()
    finally:
        conn.close()
    return [json.loads(line) for (payload,) in rows for line in payload.split(b"\n")]


# -- the relay's process --------------------------------------------------------------------------


def worker_pid(master_pid: int, timeout_s: float = 10) -> int:
    """The gunicorn worker: the one live child of the master."""
    deadline = time.monotonic() + timeout_s
    while True:
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = stat_fields(int(entry.name))
            except (OSError, ValueError):
                continue
            if int(fields[1]) == master_pid and fields[0] != "Z":
                children.append(int(entry.name))
        if len(children) == 1:
            return children[0]
        if time.monotonic() >= deadline:
            raise AssertionError(f"gunicorn master {master_pid} has children {children}, expected one worker")
        time.sleep(0.05)


def open_fds(pid: int) -> dict[str, int]:
    """The process's open file descriptors by kind: sockets, pipes, files, other."""
    kinds = {"socket": 0, "pipe": 0, "file": 0, "other": 0}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            kinds["socket"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("/"):
            kinds["file"] += 1
        else:
            kinds["other"] += 1
    kinds["total"] = sum(kinds.values())
    return kinds


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def store_env(url: str, **extra: str) -> dict[str, str]:
    """Settings every fault test shares: a real ClickHouse, short batches and retries, no start-up grace."""
    return {"CLICKHOUSE_URL": url, "STORE_BATCH_MS": "100", "STORE_RETRY_MAX_MS": "500", "STARTUP_GRACE_S": "0",
            **extra}


# -- short-lived raw clients ----------------------------------------------------------------------


def _handshake(port: int, target: str, timeout_s: float = 10) -> tuple[socket.socket, bytes]:
    """A WebSocket opening handshake on a bare socket; returns it and whatever came after the 101 head."""
    from support.clients import upgrade_headers

    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in upgrade_headers().items()) + "\r\n"
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            sock.close()
            raise AssertionError(f"connection closed during the handshake: {head[:200]!r}")
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        sock.close()
        raise AssertionError(f"handshake refused: {head[:200]!r}")
    return sock, rest


def _read_first_frame(sock: socket.socket, buffer: bytes) -> bytes:
    """Read until one whole server frame is in `buffer` (its header tells the length)."""
    def need(size: int) -> None:
        nonlocal buffer
        while len(buffer) < size:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("connection closed before the first frame")
            buffer += chunk

    need(2)
    length, offset = buffer[1] & 0x7F, 2
    if length == 126:
        need(4)
        length, offset = struct.unpack("!H", buffer[2:4])[0], 4
    elif length == 127:
        need(10)
        length, offset = struct.unpack("!Q", buffer[2:10])[0], 10
    need(offset + length)
    return buffer[offset:offset + length]


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (masked, FIN set); payloads up to 64 KiB - 1."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = bytes([0x80 | opcode, 0x80 | len(payload)])
    else:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", len(payload))
    return head + mask + body


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def churn_once(port: int, target_ws: str, target_sse: str, kind: int) -> None:
    """One connect/disconnect cycle of one of five kinds (clean close, reset, half-read, SSE, plain HTTP)."""
    if kind == 0:  # /ws: snapshot, then a clean close handshake
        sock, rest = _handshake(port, target_ws)
        snapshot = json.loads(_read_first_frame(sock, rest))
        assert snapshot["type"] == "snapshot", snapshot
        sock.sendall(masked_frame(0x8, struct.pack("!H", 1000)))
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass  # the relay may reset after its close frame
        sock.close()
    elif kind == 1:  # /ws: snapshot, then the TCP connection is reset
        sock, rest = _handshake(port, target_ws)
        _read_first_frame(sock, rest)
        _reset(sock)
    elif kind == 2:  # /ws: gone right after the handshake, nothing read
        sock, _ = _handshake(port, target_ws)
        sock.close()
    elif kind == 3:  # /sse: the first chunk, then gone
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET {target_sse} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = b""
        while b"retry:" not in head:
            chunk = sock.recv(65536)
            assert chunk, f"SSE stream closed early: {head[:200]!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        _reset(sock)
    else:  # a plain request on a kept-alive connection, dropped after the answer
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /cache/stats HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, "no answer"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        sock.close()
