"""Tools of the cluster tests: relay settings, a private redis-server, a TCP proxy that can stall,
an upstream pump, and a watch on how many upstream connections are open at once."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from support.events import trades, unique_sym
from support.relay import free_port
from support.waiting import wait_until

SHARED_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix no other test uses on the shared Redis; its keys are deleted afterwards."""
    name = "rh-test-" + secrets.token_hex(4)
    yield name
    client = redis.Redis.from_url(SHARED_REDIS)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def leading_with_a_client(prefix: str, upstream, launch_relay, ws, **extra: str):
    """One relay leading a cluster (no store), a /ws client of one fresh topic on it that has received
    that topic's first three events (seqs 1-3): (the relay, its env, the client, the symbol)."""
    env = cluster_env(prefix, CLICKHOUSE_URL="none", **extra)
    relay = launch_relay(upstream, env)
    wait_until(lambda: role(relay) == "leader", 15, "the relay to lead")
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    upstream.emit(trades(0, 3, sym=sym), batch=3)
    assert [e["seq"] for e in client.wait_for_events(3)] == [1, 2, 3]
    return relay, env, client, sym


OPEN_BUSES: list = []  # RedisBus objects a test opened in-process (see close_open_buses)


@pytest.fixture(autouse=True)
def close_open_buses() -> Iterator[None]:
    """Imported by a test module: the buses its tests put in OPEN_BUSES are closed after each."""
    yield
    while OPEN_BUSES:
        OPEN_BUSES.pop().close()


def cluster_env(prefix: str, url: str = SHARED_REDIS, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": url, "REDIS_PREFIX": prefix, "LEADER_LEASE_MS": "1500", "STARTUP_GRACE_S": "0", **extra}


def role(relay) -> str:
    return relay.health()["role"]


def start_pair(launch_relay, upstream, env, follower_env=None):
    first = launch_relay(upstream, env)  # waits until it leads and holds the upstream
    second = launch_relay(upstream, follower_env or env, wait_upstream=False)
    wait_until(lambda: role(second) == "follower", 10, "the second relay to follow")
    return first, second


class UpstreamWatch:
    """Samples the fake upstream: how many relay connections are open, with when."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def most_open(self) -> int:
        return max((n for _, n in self.samples), default=0)

    def most_open_outside(self, start: float, end: float) -> int:
        return max((n for at, n in self.samples if not start <= at <= end), default=0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), len(self.upstream.open_connections())))
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.most_open


class Pump:
    """Emits trades n, n+1, ... in tens while a relay holds the upstream; `sent` is what reached one."""

    def __init__(self, upstream, sym: str, interval_s: float = 0.01):
        self.upstream, self.sym, self.interval_s = upstream, sym, interval_s
        self.sent: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            if self.upstream.open_connections():
                # to every open connection: while a paused leader's socket is still open, it gets
                # the frames too (and must not number them)
                if self.upstream.send(_frame(trades(n, n + 10, sym=self.sym))):
                    self.sent.extend(range(n, n + 10))
                n += 10
            time.sleep(self.interval_s)

    def wait_for_more(self, count: int, what: str, timeout_s: float = 20) -> int:
        start = len(self.sent)
        wait_until(lambda: len(self.sent) >= start + count, timeout_s, what)
        return start

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _frame(items) -> str:
    import json

    return json.dumps(items, separators=(",", ":"))


class PrivateRedis:
    """A redis-server of the test's own, to restart or put behind a proxy: with an append-only file (it keeps
    its data across a restart), or with `persistent=False` none (it comes back empty, as Redis without
    persistence does)."""

    def __init__(self, directory: Path, persistent: bool = True):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        directory.mkdir(exist_ok=True)
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "yes" if persistent else "no", "--dir", str(directory)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: pings(self.url), 10, "the private redis-server to answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def pings(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


class StallingProxy:
    """A TCP proxy to `target_port` that forwards until `stall()`, then holds every byte (connections
    stay open, nothing moves) until `resume()`: a network partition as a paused peer sees it."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                thread = threading.Thread(target=self._pipe, args=(src, dst), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                data = src.recv(65536)
                if not data:
                    break
                while not self.flowing.wait(0.05):
                    if self._closed.is_set():
                        return
                dst.sendall(data)
        except OSError:
            pass  # one side went away: the other is closed below
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed

    def close(self) -> None:
        self._closed.set()
        self.flowing.set()
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
                except OSError:
                    pass  # already shut
                sock.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own (with an append-only file), to restart, pause or fill at will."""
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def forgetful_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server that comes back empty after a restart (no append-only file, no snapshot)."""
    server = PrivateRedis(tmp_path / "redis", persistent=False)
    server.start()
    yield server
    server.stop()


def worker_of(relay) -> int:
    """The pid of a one-worker relay's worker."""
    from support.procnet import children
    from support.waiting import wait_until

    workers = wait_until(lambda: children(relay.proc.pid), 10, "the relay's worker")
    assert len(workers) == 1, workers
    return workers[0]
