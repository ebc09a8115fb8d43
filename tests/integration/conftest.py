"""Fixtures for the integration suite: the relay under real gunicorn, a fake upstream, real clients.

A test module gets one relay for all its tests (`relay`, configured by the
module's RELAY_ENV) fed by one fake upstream (`upstream`); tests that need
other settings, or that break the upstream or the relay, start their own with
`fresh_upstream` and `launch_relay`. When a test fails, the log of every relay
it touched is attached to the report.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# `support` lives next to this package; make it importable whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.clients import SseClient, WsClient  # noqa: E402
from support.cluster import forgetful_redis, prefix, private_redis  # noqa: E402,F401 (fixtures: a Redis key prefix, redis-servers of the test's own)
from support.relay import ALL_RELAYS, Relay  # noqa: E402
from support.upstream import FakeUpstream, is_fake_upstream_thread  # noqa: E402

LOG_OFFSETS = pytest.StashKey[dict[int, int]]()


# -- reporting --------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[LOG_OFFSETS] = {id(relay): relay.log_size() for relay in ALL_RELAYS}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    offsets = item.stash.get(LOG_OFFSETS, {})
    for relay in ALL_RELAYS:
        start = offsets.get(id(relay), 0)
        if relay.log_size() > start:
            text = relay.log_text(start)
            if len(text) > 30000:
                text = "[... earlier lines cut ...]\n" + text[-30000:]
            report.sections.append((f"gunicorn log of {relay!r} ({call.when})", text))


# -- leak check -------------------------------------------------------------


def open_sockets() -> set[str]:
    """The sockets this process holds, by inode ("socket:[1234]")."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:"):
            held.add(target)
    return held


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every thread and socket a test opens (clients, helpers) must be gone once its fixtures are torn down.

    Threads and sockets of fake upstreams that outlive the test (module
    fixtures) are left alone; their number must not grow, though.
    """
    threads_before = set(threading.enumerate())
    sockets_before = len(open_sockets())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [
            thread
            for thread in threading.enumerate()
            if thread not in threads_before and thread.is_alive() and not is_fake_upstream_thread(thread)
        ]
        sockets_after = len(open_sockets())
        if not leaked and sockets_after <= sockets_before:
            return
        if time.monotonic() >= deadline:
            pytest.fail(
                f"left behind by the test: threads {leaked}, "
                f"{sockets_after - sockets_before} more open sockets than before it"
            )
        gc.collect()  # a dropped but unclosed socket is a leak; let the check see only those
        time.sleep(0.05)


# -- upstream and relay -----------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """The fake upstream feeding the module's relay."""
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def relay(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Relay]:
    """One relay for the whole module, with the module's RELAY_ENV settings."""
    env: dict[str, str] = getattr(request.module, "RELAY_ENV", {})
    name = request.module.__name__.rsplit(".", 1)[-1]
    running = Relay(tmp_path_factory.mktemp(name), upstream.url, env).start()
    yield running
    running.stop()


@pytest.fixture
def fresh_upstream() -> Iterator[FakeUpstream]:
    """A fake upstream of the test's own, for tests that break it or need their own relay."""
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def launch_relay(tmp_path: Path) -> Iterator[Callable[..., Relay]]:
    """Start relays with special settings; all of them are stopped when the test ends."""
    relays: list[Relay] = []

    def launch(upstream: FakeUpstream | str, env: dict[str, str] | None = None, *, wait_upstream: bool = True,
               config: str = "gunicorn.conf.py") -> Relay:
        """`upstream`: a fake upstream, or a URL ("" for the demo feed); `config`: gunicorn's -c."""
        url = upstream if isinstance(upstream, str) else upstream.url
        relay = Relay(tmp_path / f"relay{len(relays)}", url, env, config)
        relays.append(relay)
        return relay.start(wait_upstream=wait_upstream)

    yield launch
    for relay in relays:
        relay.stop()


# -- clients ----------------------------------------------------------------


@pytest.fixture
def ws() -> Iterator[Callable[..., WsClient]]:
    """Open /ws clients: ws(relay, topics=..., since=...); all are closed when the test ends."""
    clients: list[WsClient] = []

    def open_client(relay: Relay, path: str = "/ws", *, headers: dict[str, str] | None = None, **params: Any) -> WsClient:
        client = WsClient(relay.ws_url(path, **params), headers=headers)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


@pytest.fixture
def sse() -> Iterator[Callable[..., SseClient]]:
    """Open /sse streams: sse(relay, headers=..., topics=...); all are closed when the test ends."""
    streams: list[SseClient] = []

    def open_stream(relay: Relay, *, headers: dict[str, str] | None = None, **params: Any) -> SseClient:
        stream = SseClient("127.0.0.1", relay.port, relay.target("/sse", **params), headers=headers)
        streams.append(stream)
        return stream

    yield open_stream
    for stream in streams:
        stream.close()
