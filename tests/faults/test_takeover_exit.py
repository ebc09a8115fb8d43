"""The take-over of the lead, made to raise by the test-only fault hook, exits the worker; the fresh one leads
and loses nothing (issue 14, the EXIT policy of webapp/tasks.py).

`take_over` is started with policy EXIT (webapp/leader.py): a half-done
take-over (the writer re-fed, the store's maximum being read, the seq space
about to be seeded) cannot be resumed safely, so the worker exits — SIGTERM to
itself: the lease is released, clients are closed with 1001 — and gunicorn
starts a fresh worker, which stands for the lease and takes over from scratch.

To have the take-over running when the fault comes, it is made to wait: Redis
loses the relay's keys (a restart without persistence: stream, seq counter and
lease gone) while ClickHouse is down, so the worker, elected again, must learn
from the store where the seqs continue and waits for it. The fresh worker
then continues the seq space after the store's maximum, in the same epoch:
every event the upstream delivered is in the store once, on consecutive seqs,
and a client of the fresh worker gets the new ones in order.
"""

from __future__ import annotations

import redis
from support.cluster import SHARED_REDIS, cluster_env, prefix  # noqa: F401  (prefix: a fixture)
from support.waiting import wait_until

from faults.harness import Pump, assert_in_order_once, assert_store_holds, store_env, worker_pid

RATE_PER_S = 500


def take_over_state(relay) -> str | None:
    return relay.health()["tasks"].get("take_over", {}).get("state")


def forget_the_relays_keys(prefix: str) -> int:  # noqa: F811
    """What a Redis restarted without persistence shows: none of the relay's keys."""
    client = redis.Redis.from_url(SHARED_REDIS)
    try:
        keys = list(client.scan_iter(f"{prefix}:*"))
        return client.delete(*keys) if keys else 0
    finally:
        client.close()


def test_a_crash_of_the_take_over_exits_the_worker_and_the_fresh_worker_leads_without_a_lost_event(
        fresh_upstream, start_relay, store, clickhouse_server, ws, prefix):  # noqa: F811
    url, probe = store()
    env = store_env(url, RELAYHOUSE_FAULT_HOOKS="1", TASK_BACKOFF_MAX_MS="300", **cluster_env(prefix))
    relay = start_relay(fresh_upstream, env)
    wait_until(lambda: relay.health()["role"] == "leader", 10, "the relay to lead")
    first = worker_pid(relay.proc.pid)
    pump = Pump(fresh_upstream, "TKOVR", RATE_PER_S, per_frame=10).start()
    try:
        before = ws(relay, topics="T.TKOVR", snapshot=0)
        before.read_snapshot()
        before.wait_for_events(200, timeout_s=20)
        stored = pump.pause()
        probe.wait_count(stored, timeout_s=20)  # all of it stored: nothing is left to the old worker

        clickhouse_server.stop()
        try:
            assert forget_the_relays_keys(prefix) > 0
            # the lease is gone: the worker steps down, stands again, is elected, and its take-over
            # waits for the store (neither Redis nor the stream knows where the seqs continue)
            wait_until(lambda: take_over_state(relay) == "running" and "store unavailable at start"
                       in relay.log_text(), 20, "the take-over to wait for the store",
                       describe=lambda: str(relay.health()["tasks"].get("take_over")))
            answer = relay.request("POST", "/debug/fault", json={"task": "take_over"})
            assert answer.status_code == 200, answer.text
            wait_until(lambda: worker_pid(relay.proc.pid) != first, 30, "gunicorn to start a fresh worker")
        finally:
            clickhouse_server.start()
        relay.wait_ready(timeout_s=60)  # the fresh worker took over: it leads and holds the upstream
        log = relay.log_text()
        assert "task take_over crashed" in log and "FaultInjected" in log
        assert "cannot be restarted safely" in log
        assert relay.health()["role"] == "leader"

        after = ws(relay, topics="T.TKOVR", snapshot=0)
        after.read_snapshot()
        pump.resume()
        after.wait_for_events(200, timeout_s=20)
        sent = pump.pause()
    finally:
        pump.stop()
    # the new seqs continue after the store's maximum: none reused, none skipped
    assert_in_order_once(after.wait_for_events(sent - stored, timeout_s=20)[:sent - stored], pump.sent[stored:],
                         "/ws client of the fresh worker", first_seq=stored + 1)
    probe.wait_count(sent, timeout_s=20)
    assert_store_holds(probe, [(seq, seq - 1) for seq in range(1, sent + 1)])
