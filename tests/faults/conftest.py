"""Fixtures of the fault suite: the integration suite's relay, upstream, clients and leak check,
a real ClickHouse server, and a relay launcher that can prepare the data directory first.

tests/ is put on sys.path (this folder is a package under it), so the
integration conftest is imported as a module and its fixtures and reporting
hooks are re-exported here unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integration.conftest import (  # noqa: E402,F401  (fixtures and hooks, re-exported)
    fresh_upstream,
    no_leaks,
    pytest_runtest_makereport,
    pytest_runtest_setup,
    sse,
    ws,
)
from support.clickhouse import ClickHouseServer, clickhouse_server  # noqa: E402,F401
from support.relay import Relay  # noqa: E402
from support.upstream import FakeUpstream  # noqa: E402

from faults.harness import StoreProbe  # noqa: E402


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator[Callable[..., Relay]]:
    """start_relay(upstream, env, prepare=fn): `prepare(relay)` runs before gunicorn starts."""
    relays: list[Relay] = []

    def start(upstream: FakeUpstream, env: dict[str, str], *, prepare: Callable[[Relay], None] | None = None,
              wait_upstream: bool = True) -> Relay:
        relay = Relay(tmp_path / f"relay{len(relays)}", upstream.url, env)
        relays.append(relay)
        if prepare is not None:
            prepare(relay)
        return relay.start(wait_upstream=wait_upstream)

    yield start
    for relay in relays:
        relay.stop()


@pytest.fixture
def store(clickhouse_server: ClickHouseServer) -> Iterator[Callable[[], tuple[str, StoreProbe]]]:  # noqa: F811
    """store() -> (CLICKHOUSE_URL of a database no other test uses, a probe reading it directly)."""
    probes: list[StoreProbe] = []

    def make() -> tuple[str, StoreProbe]:
        url = clickhouse_server.fresh_url()
        probes.append(StoreProbe(clickhouse_server, url))
        return url, probes[-1]

    yield make
    for probe in probes:
        probe.close()
    if not clickhouse_server.running:  # a test that stopped it and failed before starting it again
        clickhouse_server.start()

