"""/health and /metrics answer at once while Redis stalls (a cluster follower reads the stream's newest seq
for its lag, and the upstream subscriptions, from Redis)."""

from __future__ import annotations

import time

import redis
from support.cluster import cluster_env, start_pair


def test_health_and_metrics_answer_at_once_on_a_follower_while_redis_stalls(private_redis, fresh_upstream,
                                                                             launch_relay):
    """An outside audit: with Redis paused (CLIENT PAUSE), a follower's every /health and /metrics took 5.0 s
    (its Redis socket time-out) and answered ok. Its own Redis reads now wait at most a quarter second."""
    env = cluster_env("rh", private_redis.url, UPSTREAM_SUBSCRIBE="polygon")
    _leader, follower = start_pair(launch_relay, fresh_upstream, env)
    admin = redis.Redis.from_url(private_redis.url)
    try:
        admin.execute_command("CLIENT", "PAUSE", "4000", "ALL")
        took = []
        for path in ("/health", "/metrics", "/health"):
            started = time.monotonic()
            assert follower.get(path, timeout=10).status_code == 200
            took.append(time.monotonic() - started)
        assert max(took) < 1.5, took  # before: 5.0 s each
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()


def test_a_follower_whose_stream_reads_redis_refuses_is_degraded_and_says_why(private_redis, fresh_upstream,
                                                                             launch_relay):
    """An outside audit replaced the stream key with a string: the follower read nothing, and /health said ok
    with bus.ok true and the WRONGTYPE refusal only in bus.last_error."""
    from support.waiting import wait_until

    env = cluster_env("rh", private_redis.url)
    _leader, follower = start_pair(launch_relay, fresh_upstream, env)
    admin = redis.Redis.from_url(private_redis.url)
    try:
        admin.delete("rh:events")
        admin.set("rh:events", "junk")
        wait_until(lambda: any("refuses" in r and "WRONGTYPE" in r for r in follower.health()["reasons"]), 10,
                   "the follower to say Redis refuses its reads", describe=lambda: follower.health()["reasons"])
        assert follower.health()["status"] == "degraded"
        assert follower.get("/health", params={"strict": "1"}).status_code == 503
    finally:
        admin.delete("rh:events")
        admin.close()
