"""Redis at maxmemory: the lease renews, every append is refused with OOM, and the leader says so (issue 14).

Each test runs a redis-server of its own on a free port (the shared one on
6379 is never reconfigured), with `maxmemory-policy noeviction` and, to make
it refuse, `maxmemory 1`. At maxmemory Redis still renews the lease (PEXPIRE
is allowed) and serves reads, but refuses the append script's XADD: the
leader stays the leader, its outbox fills and the upstream is held. The relay
does not step down (the next leader would meet the same Redis and the
hand-over would lose the outbox); it turns /health degraded with the OOM
reason once that lasts BUS_STUCK_GRACE_S, logs one ERROR line per 10 s, and
once memory is freed (`maxmemory 0`) every event the upstream sent reaches
the client once, in order, on consecutive seqs.

POST /publish on the leader is answered differently from a follower's: while
the outbox is full at once (503), and while Redis refuses with room in the
outbox after 2 x LEADER_LEASE_MS (503, "got no seq"), and such a frame is
never published afterwards.
"""

from __future__ import annotations

import time

from support.events import unique_sym
from support.waiting import wait_until

from faults.harness import assert_in_order_once, pumped_client, worker_pid
from faults.test_redis_refusals import cluster_env, no_crashes, own_redis  # noqa: F401  (own_redis: a fixture)
from handlers.health import BUS_STUCK_GRACE_S

LEASE_MS = 3000  # the OOM lasts longer than two leases: the lease must be renewed all through it
OUTBOX_MAX = 500
RATE_PER_S = 1000
OOM_S = 8.0


def oom(client) -> None:
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")


def reasons(relay) -> list[str]:
    return relay.health()["reasons"]


def test_redis_at_maxmemory_makes_the_leader_degraded_and_once_freed_nothing_is_lost(own_redis, fresh_upstream,  # noqa: F811
                                                                                     start_relay, ws):
    relay = start_relay(fresh_upstream, cluster_env(own_redis, LEADER_LEASE_MS=str(LEASE_MS),
                                                    BUS_OUTBOX_MAX=str(OUTBOX_MAX)))
    wait_until(lambda: relay.health()["role"] == "leader", 15, "the relay to lead")
    pid = worker_pid(relay.proc.pid)
    leader = relay.health()["bus"]["worker"]
    with pumped_client(ws, relay, fresh_upstream, RATE_PER_S) as (client, pump):
        client.wait_for_events(200, timeout_s=20)
        assert relay.health()["status"] == "ok", reasons(relay)
        log_from = relay.log_size()
        oom(own_redis)
        refused_at = time.monotonic()
        wait_until(lambda: relay.health()["bus"]["outbox"]["full"], 10, "the outbox to fill",
                   describe=lambda: str(relay.health()["bus"]))
        # full: a POST /publish on the leader is refused at once, not after the 6 s deadline
        started = time.monotonic()
        response = relay.request("POST", "/publish", json={"ev": "T", "sym": unique_sym(), "n": -1}, timeout=30)
        assert response.status_code == 503 and "outbox is full" in response.json()["error"], response.text
        assert time.monotonic() - started < LEASE_MS / 1000, "a full outbox answers at once, not at the 6 s deadline"
        wait_until(lambda: any("bus outbox full" in r for r in reasons(relay))
                   and any(r.startswith("Redis appends failing") and "OutOfMemoryError" in r for r in reasons(relay)),
                   BUS_STUCK_GRACE_S + 10, "/health to say degraded with the OOM reason",
                   describe=lambda: str(relay.health()["reasons"]))
        while time.monotonic() - refused_at < OOM_S:
            # a refusal is an answer: the reads and the lease work, Redis is not "unavailable"
            assert "bus (Redis) unavailable" not in reasons(relay)
            time.sleep(0.2)
        health = relay.health()
        assert health["status"] == "degraded", health["reasons"]
        assert health["role"] == "leader" and health["bus"]["lease_holder"] == leader  # renewed past 2 leases
        assert health["bus"]["outbox"]["events"] <= OUTBOX_MAX + 2000, health["bus"]["outbox"]  # held
        own_redis.config_set("maxmemory", "0")
        wait_until(lambda: relay.health()["status"] == "ok", 20, "/health to be ok again",
                   describe=lambda: str(relay.health()["reasons"]))
        client.wait_for_events(len(pump.sent) + 200, timeout_s=30)
        sent = pump.pause()
    events = client.wait_for_events(sent, timeout_s=30)
    assert_in_order_once(events[:sent], pump.sent, "/ws client across Redis at maxmemory", first_seq=1)
    said = [line for line in relay.log_text(log_from).splitlines() if "OutOfMemoryError" in line]
    # one ERROR line per 10 s while appends fail (the publisher retries every 0.2 s: ~40 attempts)
    assert 1 <= len(said) <= 2, said
    outbox = relay.health()["bus"]["outbox"]
    assert outbox["append_failures"] >= 10 and outbox["discarded"] == 0, outbox
    assert worker_pid(relay.proc.pid) == pid
    no_crashes(relay)


def test_a_publish_on_the_leader_while_redis_refuses_gets_a_503_at_the_deadline_and_never_appears(
        own_redis, fresh_upstream, start_relay, ws):  # noqa: F811
    relay = start_relay(fresh_upstream, cluster_env(own_redis, LEADER_LEASE_MS=str(LEASE_MS)))
    wait_until(lambda: relay.health()["role"] == "leader", 15, "the relay to lead")
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()

    def publish(n: int):
        return relay.request("POST", "/publish", json={"ev": "T", "sym": sym, "n": n}, timeout=30)

    before = publish(1)
    assert before.status_code == 200, before.text
    oom(own_redis)
    started = time.monotonic()
    ghost = publish(-1)  # the outbox is empty: the frame is in the append the publisher retries
    waited_s = time.monotonic() - started
    assert ghost.status_code == 503 and ghost.headers["Content-Type"].startswith("application/json")
    assert "got no seq within 6 s" in ghost.json()["error"], ghost.text  # not "may still be published"
    assert 2 * LEASE_MS / 1000 <= waited_s < 2 * LEASE_MS / 1000 + 5, waited_s
    own_redis.config_set("maxmemory", "0")
    after = publish(2)
    assert after.status_code == 200 and after.json()["seqs"] == [before.json()["seqs"][-1] + 1], after.text
    events = client.wait_for_events(2, timeout_s=10)
    time.sleep(0.5)  # anything published after the 503 would come now, before or after n=2
    assert [e["data"]["n"] for e in client.events] == [1, 2], client.events
    assert [e["seq"] for e in events] == [before.json()["seqs"][0], after.json()["seqs"][0]]
    no_crashes(relay)
