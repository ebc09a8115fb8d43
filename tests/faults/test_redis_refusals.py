"""Redis that answers "no" (READONLY after a failover, OOM at maxmemory) and cluster loops that raise (issue 14).

Each test runs a redis-server of its own on a free port (the shared one on
6379 is never reconfigured) and one relay clustered on it. A refusal is a
failure kind like a lost connection: the reader, the lease loop and the
publisher retry, /health shows it, and once Redis accepts writes again every
event the upstream delivered reaches the client once, in order, with no task
crash and the same worker process.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.relay import free_port
from support.waiting import wait_until

from faults.harness import assert_in_order_once, metric_value, pumped_client, worker_pid

RATE_PER_S = 300


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port, socket_timeout=5)

    def pings() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(pings, 10, "the test's redis-server to answer")
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def cluster_env(client: redis.Redis, **extra: str) -> dict[str, str]:
    port = client.connection_pool.connection_kwargs["port"]
    return {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "REDIS_PREFIX": "rh-" + secrets.token_hex(3),
            "CLICKHOUSE_URL": "none", "LEADER_LEASE_MS": "10000", "STARTUP_GRACE_S": "0",
            "RELAYHOUSE_FAULT_HOOKS": "1", "TASK_BACKOFF_MAX_MS": "300", **extra}


def no_crashes(relay) -> None:
    tasks = relay.health()["tasks"]
    assert all(status["crashes"] == 0 for status in tasks.values()), tasks


def refuse_and_recover(relay, fresh_upstream, ws, refuse, accept, expect: str) -> None:
    pid = worker_pid(relay.proc.pid)
    with pumped_client(ws, relay, fresh_upstream, RATE_PER_S) as (client, pump):
        client.wait_for_events(100, timeout_s=20)
        refuse()
        # (a replica's first answer to the blocked reader is "UNBLOCKED ... master -> replica": refused too)
        wait_until(lambda: f"refused: {expect}" in (relay.health()["bus"]["last_error"] or ""), 10,
                   f"the relay to see Redis refuse with {expect}", describe=lambda: str(relay.health()["bus"]))
        time.sleep(1.5)  # events keep coming while Redis refuses them
        accept()
        wait_until(lambda: relay.health()["bus"]["ok"], 15, "the bus to be ok again")
        client.wait_for_events(len(pump.sent) + 100, timeout_s=20)
        sent = pump.pause()
    events = client.wait_for_events(sent, timeout_s=20)
    assert_in_order_once(events[:sent], pump.sent, "/ws client across the refusal", first_seq=1)
    assert worker_pid(relay.proc.pid) == pid
    no_crashes(relay)


def test_redis_at_maxmemory_refuses_writes_and_nothing_dies_or_is_lost(own_redis, fresh_upstream, start_relay, ws):
    relay = start_relay(fresh_upstream, cluster_env(own_redis))

    def refuse():
        own_redis.config_set("maxmemory-policy", "noeviction")
        own_redis.config_set("maxmemory", "1")

    refuse_and_recover(relay, fresh_upstream, ws, refuse, lambda: own_redis.config_set("maxmemory", "0"),
                       "OutOfMemoryError")


def test_redis_turned_replica_answers_readonly_and_nothing_dies_or_is_lost(own_redis, fresh_upstream, start_relay,
                                                                            ws):
    relay = start_relay(fresh_upstream, cluster_env(own_redis))
    nowhere = free_port()  # a master that never answers: the data set stays, writes are refused
    refuse_and_recover(relay, fresh_upstream, ws, lambda: own_redis.execute_command("REPLICAOF", "127.0.0.1", nowhere),
                       lambda: own_redis.execute_command("REPLICAOF", "NO", "ONE"), "ReadOnlyError")


@pytest.mark.parametrize("task", ["reader", "lease", "publisher"])
def test_a_cluster_loop_that_raises_is_restarted_and_no_event_is_lost(task, own_redis, fresh_upstream, start_relay,
                                                                      ws):
    relay = start_relay(fresh_upstream, cluster_env(own_redis))
    pid = worker_pid(relay.proc.pid)
    with pumped_client(ws, relay, fresh_upstream, RATE_PER_S) as (client, pump):
        client.wait_for_events(100, timeout_s=20)
        assert relay.request("POST", "/debug/fault", json={"task": task}).status_code == 200
        wait_until(lambda: relay.health()["tasks"][task]["crashes"] == 1
                   and relay.health()["tasks"][task]["state"] == "running", 15, f"{task} to be back")
        client.wait_for_events(len(pump.sent) + 100, timeout_s=20)
        sent = pump.pause()
    events = client.wait_for_events(sent, timeout_s=20)
    assert_in_order_once(events[:sent], pump.sent, f"/ws client after {task} crashed", first_seq=1)
    assert worker_pid(relay.proc.pid) == pid and relay.health()["role"] == "leader"
    assert metric_value(relay.get("/metrics").text, "relayhouse_task_crashes_total", f'task="{task}"') == 1
