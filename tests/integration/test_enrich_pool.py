"""Enrichment on a real ClickHouse 18.16 server keeps at most ENRICH_CONCURRENCY connections, never reuses
one whose query failed, and closes them all at shutdown — counted by the server itself.

The enrichment runs in a process patched like a gunicorn gevent worker
(enrich_pool_probe.py), so refreshes really overlap; the probe watches
system.processes (the client port of every enrichment query) and
system.metrics (TCPConnection) on connections of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.clickhouse import ClickHouseServer, clickhouse_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("enrich_pool_probe.py")
CONCURRENCY = 3
TOPICS = 30


@pytest.fixture(scope="module")
def report(clickhouse_server: ClickHouseServer) -> dict:  # noqa: F811
    result = subprocess.run([sys.executable, str(PROBE), clickhouse_server.fresh_url(), str(CONCURRENCY), str(TOPICS)],
                            capture_output=True, text=True, timeout=180, cwd=ROOT, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_thirty_refreshes_run_on_at_most_concurrency_connections(report):
    pooled = report["pooled"]
    assert pooled["seen"] == TOPICS  # the server ran every refresh, and the probe saw each one
    # the server's view: the client ports its enrichment queries came from, and its open connections
    assert len(pooled["ports"]) == CONCURRENCY
    assert pooled["tcp_extra"] == CONCURRENCY
    # the relay's view, at the driver boundary: connections made and open
    assert pooled["made"] == CONCURRENCY and pooled["open"] == CONCURRENCY


def test_a_connection_whose_query_failed_is_not_used_again(report):
    failed = report["failed"]
    assert [sorted(a) for a in failed["answers"]] == [["1"], ["2"], [], ["3"]] and failed["errors"] == 1
    ports = failed["ports"]
    assert ports["1"] == ports["2"], "a connection whose query went well is kept"
    assert ports["3"] != ports["1"], "the connection whose query failed was used again"
    assert failed["made"] == 2 and failed["first_closed"]


def test_shutdown_closes_every_kept_connection(report):
    assert report["closed"] == {"all_disconnected": True, "tcp_extra": 0}
