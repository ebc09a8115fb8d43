"""How the Redis bus takes a failed call of its reader, lease loop or take-over: a refusal is an answer, silence is not."""

import logging

import redis

from webapp.bus.redis import RedisBus


def bus() -> RedisBus:
    # construction connects nothing: a unix socket where nothing listens is never dialled here
    return RedisBus("unix:///nonexistent/redis.sock", "rh-test", "worker-1", lambda events: None,
                    lease_ms=3000, stream_maxlen=1000)


def test_a_refusal_keeps_the_bus_ok_and_is_said_once_per_interval(caplog):
    b = bus()
    with caplog.at_level(logging.ERROR, logger="webapp.bus.redis"):
        for _ in range(20):
            b._failed(redis.exceptions.ReadOnlyError("You can't write against a read only replica."))
    assert b.ok  # Redis answered: /health must not flap to "unavailable" between the reader's good reads
    assert b.last_error.startswith("refused: ReadOnlyError")
    assert sum("Redis refused" in r.getMessage() for r in caplog.records) == 1


def test_no_answer_makes_the_bus_not_ok_and_is_said_once_per_outage(caplog):
    b = bus()
    with caplog.at_level(logging.ERROR, logger="webapp.bus.redis"):
        for _ in range(5):
            b._failed(redis.ConnectionError("Connection refused"))
    assert not b.ok
    assert b.last_error.startswith("unavailable: ConnectionError")
    assert sum("Redis unavailable" in r.getMessage() for r in caplog.records) == 1
