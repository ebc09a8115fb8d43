"""One authority in a cluster (contract §8, §10): seqs are given where the stream is appended, the
store is written from the stream by the lease holder only, and a leader that is paused, cut off from
Redis, or sees Redis restart does no harm; POST /publish works on any worker; an epoch reset reaches
every worker and every kind of client.

Relays are separate gunicorn processes sharing a Redis (a private redis-server where the test breaks
it, else the shared one under a key prefix of the test's own) and a real ClickHouse server.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis
from support.clickhouse import clickhouse_server  # noqa: F401
from support.cluster import (
    SHARED_REDIS,
    Pump,
    StallingProxy,
    UpstreamWatch,
    cluster_env,
    role,
    start_pair,
    worker_of,
)
from support.events import trades, unique_sym
from support.waiting import wait_until

LEASE_S = 1.5


def assert_in_order_without_gap_or_duplicate(events: list[dict]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap or a duplicate in seq"
    ns = [e["data"]["n"] for e in events]
    assert len(set(ns)) == len(ns), "an event arrived twice"


def assert_store_matches(store, events: list[dict]) -> None:
    """Raw exactly-once (no FINAL), and every event a client saw is stored under its seq with its data."""
    last = events[-1]["seq"]
    wait_until(lambda: store.execute("SELECT max(seq) FROM events")[0][0] >= last, 20, "the store to catch up")
    count, unique = store.execute("SELECT count(), uniqExact(seq) FROM events")[0]
    assert count == unique, f"{count - unique} duplicate rows in the store"
    rows = dict(store.execute("SELECT seq, data FROM events WHERE seq >= %(a)s AND seq <= %(b)s",
                              {"a": events[0]["seq"], "b": last}))
    for event in events:
        assert event["seq"] in rows, f"seq {event['seq']} seen by a client is not in the store"
        assert json.loads(rows[event["seq"]]) == event["data"], f"seq {event['seq']} is stored with other data"


@pytest.mark.parametrize("disruption", ["sigstop", "stalled_redis", "redis_restart"])
def test_a_paused_or_cut_off_leader_leaves_one_numbering_and_one_store_writer(
        disruption, private_redis, fresh_upstream, launch_relay, ws, clickhouse_server):  # noqa: F811
    """SIGSTOP the leader for twice the lease; or stall its Redis connection; or restart Redis —
    while the upstream keeps sending and clients on the other relay keep reading. Afterwards: the store
    is raw exactly-once and holds every seq a client saw with that client's data, no client saw a
    duplicate or a gap, and two upstream connections were never open at once (for SIGSTOP: outside
    the pause, during which the stopped process cannot close its socket)."""
    url = clickhouse_server.fresh_url()
    env = cluster_env("rh", private_redis.url, CLICKHOUSE_URL=url, STORE_BATCH_MS="500")
    proxy = StallingProxy(private_redis.port) if disruption == "stalled_redis" else None
    try:
        leader_env = {**env, "REDIS_URL": proxy.url()} if proxy else env
        leader, follower = start_pair(launch_relay, fresh_upstream, leader_env, follower_env=env)
        leader_pid = worker_of(leader)
        sym = unique_sym()
        clients = [ws(follower, topics=f"T.{sym}", snapshot=0) for _ in range(2)]
        for client in clients:
            client.read_snapshot()
        watch = UpstreamWatch(fresh_upstream)
        pump = Pump(fresh_upstream, sym, interval_s=0.033)  # ~300 events/s
        exempt = (0.0, 0.0)
        try:
            pump.wait_for_more(300, "300 events through the first leader")
            started = time.monotonic()
            if disruption == "sigstop":
                os.kill(leader_pid, signal.SIGSTOP)
            elif disruption == "stalled_redis":
                proxy.stall()
            else:
                private_redis.stop()
            try:
                if disruption == "redis_restart":
                    wait_until(lambda: not follower.health()["bus"]["ok"], 10, "the follower to see Redis down")
                    time.sleep(2 * LEASE_S)  # Redis stays down for twice the lease
                    private_redis.start()
                wait_until(lambda: time.monotonic() - started >= 2 * LEASE_S
                           and fresh_upstream.open_connections() and role(follower) == "leader"
                           or (disruption == "redis_restart" and role(leader) == "leader"
                               and time.monotonic() - started >= 2 * LEASE_S),
                           20, "a leader after twice the lease")
            finally:
                if disruption == "sigstop":
                    os.kill(leader_pid, signal.SIGCONT)
                elif disruption == "stalled_redis":
                    proxy.resume()
            resumed = time.monotonic()
            if disruption == "sigstop":
                # the resumed process finds its lease gone and closes its upstream connection
                wait_until(lambda: len(fresh_upstream.open_connections()) == 1, 5,
                           "the paused leader to drop its upstream connection once resumed")
                exempt = (started, time.monotonic())
                assert exempt[1] - resumed < 5
            wait_until(lambda: role(leader) in ("leader", "follower") and role(follower) in ("leader", "follower")
                       and {role(leader), role(follower)} == {"leader", "follower"}, 15, "one leader, one follower")
            pump.wait_for_more(300, "300 events after the disruption")
        finally:
            pump.stop()
        assert watch.stop() >= 1
        assert watch.most_open_outside(*exempt) == 1, "two upstream connections were open at once"
        sent = pump.sent
        for client in clients:
            client.wait_until(lambda c=client: any(e["data"]["n"] == sent[-1] for e in c.events), 20,
                              "the last event sent")
            assert_in_order_without_gap_or_duplicate(client.events)
        store = clickhouse_server.client(database=url.rsplit("/", 1)[1])
        try:
            assert_store_matches(store, clients[0].events)
        finally:
            store.disconnect()
    finally:
        if proxy is not None:
            proxy.close()


def test_publish_on_a_follower_reaches_every_worker_with_the_seqs_it_answered(prefix, fresh_upstream,
                                                                              launch_relay, ws):
    leader, follower = start_pair(launch_relay, fresh_upstream, cluster_env(prefix))
    sym = unique_sym()
    clients = [ws(relay, topics=f"T.{sym}", snapshot=0) for relay in (leader, follower)]
    for client in clients:
        client.read_snapshot()
    fresh_upstream.emit(trades(0, 10, sym=sym), batch=10)
    for client in clients:
        client.wait_for_seq(10)
    response = follower.request("POST", "/publish", json=trades(10, 13, sym=sym))
    assert response.status_code == 200, response.text
    seqs = response.json()["seqs"]
    assert seqs == [11, 12, 13]
    for client in clients:
        got = client.wait_for_seq(13)
        assert [(e["seq"], e["data"]["n"]) for e in got[-3:]] == [(11, 10), (12, 11), (13, 12)]
    # the leader's own /publish gets its seqs from the same counter
    response = leader.request("POST", "/publish", json=trades(13, 14, sym=sym)[0])
    assert response.json() == {"seqs": [14]}
    for client in clients:
        assert client.wait_for_seq(14)[-1]["data"]["n"] == 13


def test_publish_with_no_leader_answering_is_a_503_and_the_event_never_appears(prefix, fresh_upstream,
                                                                                launch_relay, ws):
    keys = redis.Redis.from_url(SHARED_REDIS)
    try:
        keys.set(f"{prefix}:leader", "a-leader-that-never-answers", px=60_000)
        relay = launch_relay(fresh_upstream, cluster_env(prefix), wait_upstream=False)
        wait_until(lambda: role(relay) == "follower", 10, "the relay to follow")
        response = relay.request("POST", "/publish", json={"ev": "T", "sym": "GHOST", "n": -1}, timeout=20)
        assert response.status_code == 503
        assert "did not answer" in response.json()["error"]
        # the leader is gone for good: this relay takes over, and must not publish what it refused
        keys.delete(f"{prefix}:leader")
        wait_until(lambda: fresh_upstream.open_connections(), 10, "the relay to take over")
        client = ws(relay, snapshot=0)
        client.read_snapshot()
        fresh_upstream.emit(trades(0, 5, sym="REAL"), batch=5)
        events = client.wait_for_events(5)
        assert [e["data"]["sym"] for e in events] == ["REAL"] * 5
        assert relay.get("/cache/recent").json()["events"][0]["data"]["sym"] == "REAL"
    finally:
        keys.close()


def test_an_epoch_reset_reaches_followers_and_no_client_skips_across_it(prefix, fresh_upstream, launch_relay,
                                                                         ws, sse):
    """The stream and the counter are wiped between leaders (no store): the new leader starts a
    new epoch at seq 1. A follower that read the old epoch delivers the new one; resuming with the
    old epoch is not `recovered`; nor is an SSE resume naming the old epoch in its Last-Event-ID."""
    env = cluster_env(prefix)
    first, follower = start_pair(launch_relay, fresh_upstream, env)
    sym = unique_sym()
    client = ws(follower, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    stream = sse(follower, topics=f"T.{sym}", snapshot=0)
    fresh_upstream.emit(trades(0, 100, sym=sym), batch=20)
    client.wait_for_seq(100)
    old = stream.events(100)
    old_epoch = follower.health()["epoch"]
    follower_pid = worker_of(follower)
    os.kill(follower_pid, signal.SIGSTOP)  # so that it cannot be the next leader, with its memory of seq 100
    try:
        os.killpg(first.proc.pid, signal.SIGKILL)
        wait_until(lambda: not fresh_upstream.open_connections(), 10, "the dead leader's connection to close")
        keys = redis.Redis.from_url(SHARED_REDIS)
        try:
            keys.delete(*keys.scan_iter(f"{prefix}:*"))  # Redis lost everything, and there is no store
        finally:
            keys.close()
        second = launch_relay(fresh_upstream, env)
        wait_until(lambda: role(second) == "leader", 10, "a new leader")
        fresh_upstream.emit(trades(100, 250, sym=sym), batch=30)
    finally:
        os.kill(follower_pid, signal.SIGCONT)
    new_epoch = wait_until(lambda: (e := follower.health()["epoch"]) != old_epoch and e, 10, "the new epoch")
    assert new_epoch == second.health()["epoch"]
    # a connected /ws client gets the new epoch's events, seq 1 onwards
    client.wait_until(lambda: len(client.events) >= 250, 10, "the new epoch's events")
    assert [e["seq"] for e in client.events] == list(range(1, 101)) + list(range(1, 151))
    assert [e["data"]["n"] for e in client.events] == list(range(250))
    # a connected /sse client too, with the new epoch's seqs as ids
    new = stream.events(150)
    assert [e["seq"] for e in new] == list(range(1, 151))
    assert stream.messages[-1].id == "150"
    # a client that kept the old epoch and resumes with `<epoch>:<seq>` is not skipped past seq 100
    assert old[-1]["seq"] == 100
    resumed = sse(follower, topics=f"T.{sym}", headers={"Last-Event-ID": f"{old_epoch}:100"})
    assert [e["data"]["n"] for e in resumed.events(150)] == list(range(100, 250))
    # /ws resuming in the old epoch: what there is of the new one, and not `recovered`
    snapshot = ws(follower, topics=f"T.{sym}", since=100, epoch=old_epoch).read_snapshot()
    assert snapshot["recovered"] is False and snapshot["epoch"] == new_epoch
    assert [e["seq"] for e in snapshot["events"]] == list(range(1, 151))


def test_a_stopping_leader_holds_its_lease_until_its_store_flush_is_done(prefix, fresh_upstream, launch_relay,
                                                                          clickhouse_server):  # noqa: F811
    """SIGTERM: the leader flushes while it still holds (and renews) the lease, and releases it only
    after; the follower then takes over, and the store is exactly-once across the hand-over."""
    url = clickhouse_server.fresh_url()
    # a long batch time: at SIGTERM the leader's writer holds everything since the start
    env = cluster_env(prefix, CLICKHOUSE_URL=url, STORE_BATCH_MS="60000", STORE_BATCH_ROWS="1000000")
    leader, follower = start_pair(launch_relay, fresh_upstream, env)
    sym = unique_sym()
    fresh_upstream.emit(trades(0, 20000, sym=sym), batch=500)
    wait_until(lambda: follower.health()["last_seq"] >= 20000, 20, "every event through the stream")
    holder = leader.health()["bus"]["worker"]
    keys = redis.Redis.from_url(SHARED_REDIS)
    try:
        offset = leader.log_size()
        leader.send_signal(signal.SIGTERM)
        while True:  # Redis first, then the log: a release seen here was preceded by the log line
            current = keys.get(f"{prefix}:leader")
            if current is None or current.decode() != holder:
                assert "store flushed (complete)" in leader.log_text(offset), "the lease went before the flush"
                break
            assert leader.running or keys.get(f"{prefix}:leader") is None, "exited holding the lease"
            time.sleep(0.001)
    finally:
        keys.close()
    leader.wait_exit(15)
    wait_until(lambda: role(follower) == "leader", 10, "the follower to take over")
    store = clickhouse_server.client(database=url.rsplit("/", 1)[1])
    try:
        wait_until(lambda: store.execute("SELECT count() FROM events")[0][0] >= 20000, 10, "every event stored")
        assert store.execute("SELECT count(), uniqExact(seq), min(seq), max(seq) FROM events")[0] == (
            20000, 20000, 1, 20000)
    finally:
        store.disconnect()
