"""Every supervised loop, made to raise by the test-only fault hook, comes back and loses nothing (issue 14).

The relay runs with RELAYHOUSE_FAULT_HOOKS=1, which adds POST /debug/fault:
it raises FaultInjected inside the named running loop at the point where that
loop waits, as a bug in it would surface. For each loop the test checks, from
the outside: the crash is counted in /metrics and shown in /health, the same
worker process carries on (no restart of the worker for a restartable loop),
and every event the fake upstream delivered reaches the clients and the store
once, in order, on consecutive seqs. The one loop whose policy is to exit the
worker (boot) is shown to do exactly that, and the fresh worker then serves.
"""

from __future__ import annotations

import pytest
from support.waiting import wait_until

from faults.harness import (
    assert_in_order_once,
    assert_store_holds,
    metric_value,
    pumped_client,
    store_env,
    worker_pid,
)

RATE_PER_S = 500


def fault_env(url: str, **extra: str) -> dict[str, str]:
    return store_env(url, RELAYHOUSE_FAULT_HOOKS="1", TASK_BACKOFF_MAX_MS="300", **extra)


def inject(relay, task: str) -> None:
    answer = relay.request("POST", "/debug/fault", json={"task": task})
    assert answer.status_code == 200, answer.text


def crashes(relay, task: str) -> float:
    return metric_value(relay.get("/metrics").text, "relayhouse_task_crashes_total", f'task="{task}"')


def task_back(relay, task: str, count: int = 1) -> dict:
    def back():
        status = relay.health()["tasks"].get(task, {})
        return status if status.get("crashes") == count and status.get("state") == "running" else None

    return wait_until(back, 15, f"task {task} to be running again after {count} crash(es)",
                      describe=lambda: str(relay.health()["tasks"]))


@pytest.mark.parametrize("task", ["hub", "writer", "upstream", "ingest"])
def test_a_loop_that_raises_is_restarted_and_no_event_is_lost(task, fresh_upstream, start_relay, store, ws):
    url, probe = store()
    extra = {}
    if task == "ingest":  # the ingest loop exists only with enrichment
        extra["ENRICH_SQL"] = f"SELECT count() AS n FROM {url.rsplit('/', 1)[1]}.events WHERE topic = %(topic)s"
    relay = start_relay(fresh_upstream, fault_env(url, **extra))
    pid = worker_pid(relay.proc.pid)
    with pumped_client(ws, relay, fresh_upstream, RATE_PER_S) as (client, pump):
        client.wait_for_events(200, timeout_s=20)
        if task == "upstream":
            # data still in the socket's buffer when the connection is dropped is the upstream's to
            # resend; so the upstream is quiet while its reader is crashed and reconnects
            sent = pump.pause()
            client.wait_for_events(sent, timeout_s=20)
        inject(relay, task)
        task_back(relay, task)
        if task == "upstream":
            wait_until(lambda: relay.health()["upstream"]["connected"], 10, "the upstream to be reconnected")
            pump.resume()
        client.wait_for_events(len(pump.sent) + 200, timeout_s=20)
        sent = pump.pause()
    assert worker_pid(relay.proc.pid) == pid, "a restartable loop must not cost the worker"
    assert crashes(relay, task) == 1
    status = relay.health()["tasks"][task]
    assert status["last_error"].startswith("FaultInjected"), status
    events = client.wait_for_events(sent, timeout_s=20)
    assert_in_order_once(events[:sent], pump.sent, f"/ws client after {task} crashed", first_seq=1)
    probe.wait_count(sent, timeout_s=20)
    assert_store_holds(probe, [(seq, seq - 1) for seq in range(1, sent + 1)])


def test_a_crash_of_the_boot_exits_the_worker_and_the_fresh_worker_serves(fresh_upstream, start_relay, store,
                                                                           clickhouse_server, ws):
    url, probe = store()
    clickhouse_server.stop()  # the boot waits for the store: it is running when the fault comes
    try:
        relay = start_relay(fresh_upstream, fault_env(url), wait_upstream=False)
        first = worker_pid(relay.proc.pid)
        wait_until(lambda: relay.health()["tasks"].get("boot", {}).get("state") == "running", 10, "the boot")
        inject(relay, "boot")
        wait_until(lambda: worker_pid(relay.proc.pid) != first, 30, "gunicorn to start a fresh worker")
    finally:
        clickhouse_server.start()
    relay.wait_ready(timeout_s=60)
    assert "task boot crashed" in relay.log_text()
    assert "cannot be restarted safely" in relay.log_text()
    with pumped_client(ws, relay, fresh_upstream, RATE_PER_S) as (client, pump):
        client.wait_for_events(100, timeout_s=20)
        sent = pump.pause()
    assert_in_order_once(client.wait_for_events(sent, timeout_s=20)[:sent], pump.sent, "/ws client", first_seq=1)


def test_the_fault_route_does_not_exist_without_the_test_only_variable(fresh_upstream, start_relay, store):
    url, _probe = store()
    relay = start_relay(fresh_upstream, store_env(url))
    assert relay.request("POST", "/debug/fault", json={"task": "hub"}).status_code == 404
    assert set(relay.health()["tasks"]) >= {"hub", "boot", "writer", "upstream"}


def test_the_demo_feeds_emitter_is_supervised_too(fresh_upstream, start_relay):
    relay = start_relay(fresh_upstream, {"CLICKHOUSE_URL": "none", "UPSTREAM_URL": "", "DEMO_RATE": "200",
                                          "RELAYHOUSE_FAULT_HOOKS": "1", "TASK_BACKOFF_MAX_MS": "300"})
    wait_until(lambda: relay.health()["last_seq"] > 20, 10, "demo events")
    inject(relay, "demo")
    task_back(relay, "demo")
    after = relay.health()["last_seq"]
    wait_until(lambda: relay.health()["last_seq"] > after + 20, 10, "demo events after the restart")
    assert crashes(relay, "demo") == 1
