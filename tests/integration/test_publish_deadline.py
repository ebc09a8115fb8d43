"""POST /publish waits for the leader 2 x LEADER_LEASE_MS (not a hard-coded 5 s), then answers a JSON 503."""

from __future__ import annotations

import time

import redis
from support.cluster import SHARED_REDIS, cluster_env, prefix, role  # noqa: F401  (prefix: a fixture)
from support.waiting import wait_until

LEASE_MS = 3000  # the deadline is 6 s: past the 5 s it used to be, so the test tells them apart


def test_a_leader_that_never_answers_gets_a_503_at_twice_the_lease(prefix, fresh_upstream, launch_relay):  # noqa: F811
    keys = redis.Redis.from_url(SHARED_REDIS)
    try:
        keys.set(f"{prefix}:leader", "a-leader-that-never-answers", px=60_000)
        relay = launch_relay(fresh_upstream, cluster_env(prefix, LEADER_LEASE_MS=str(LEASE_MS)), wait_upstream=False)
        wait_until(lambda: role(relay) == "follower", 10, "the relay to follow")
        started = time.monotonic()
        response = relay.request("POST", "/publish", json={"ev": "T", "sym": "GHOST", "n": -1}, timeout=30)
        waited_s = time.monotonic() - started
        assert response.status_code == 503
        assert response.headers["Content-Type"].startswith("application/json")
        error = response.json()["error"]
        assert "did not answer within 6 s" in error and "LEADER_LEASE_MS" in error, error
        assert 2 * LEASE_MS / 1000 <= waited_s < 2 * LEASE_MS / 1000 + 5, waited_s
        assert keys.llen(f"{prefix}:publish") == 1  # never served; a leader that comes later drops it (deadline)
    finally:
        keys.close()
