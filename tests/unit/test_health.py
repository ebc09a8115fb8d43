"""The degraded verdict: each part's fact gives its reason, and a healthy relay has none."""

from dataclasses import replace

import pytest

from handlers.health import BUS_STUCK_GRACE_S, HealthFacts, degraded_reasons

HEALTHY = HealthFacts(leading=True, upstream_connected=True, in_grace=False, shutting_down=False, ready=True,
                      store_ok=True, spooled=0, bus_ok=True, follower_without_leader=False)


def test_a_healthy_relay_has_no_reason_to_be_degraded():
    assert degraded_reasons(HEALTHY) == ()


@pytest.mark.parametrize(("change", "reason"), [
    ({"upstream_connected": False}, "upstream disconnected"),
    ({"shutting_down": True}, "shutting down"),
    ({"ready": False}, "starting: seq base not known yet"),
    ({"store_ok": False}, "store failing"),
    ({"spooled": 12}, "12 events spooled"),
    ({"bus_ok": False}, "bus (Redis) unavailable"),
    ({"follower_without_leader": True}, "no leader known"),
    ({"tasks_down": ("writer", "hub")}, "restarting: writer, hub"),
    ({"outbox_full_s": 7.4}, "bus outbox full for 7 s: the upstream is held"),
    ({"append_failing_s": 12.0, "append_error": "refused: OutOfMemoryError: command not allowed"},
     "Redis appends failing for 12 s: refused: OutOfMemoryError: command not allowed"),
    ({"readers_wait_s": 9.2}, "bus publisher waiting 9 s for a reader more than half of STREAM_MAXLEN behind"),
    ({"bus_refused": "ResponseError: WRONGTYPE Operation against a key holding the wrong kind of value"},
     "bus (Redis) refuses: ResponseError: WRONGTYPE Operation against a key holding the wrong kind of value"),
])
def test_each_failing_part_is_its_own_reason(change, reason):
    assert degraded_reasons(replace(HEALTHY, **change)) == (reason,)


def test_a_disconnected_upstream_is_not_a_reason_during_the_start_up_grace_or_on_a_follower():
    assert degraded_reasons(replace(HEALTHY, upstream_connected=False, in_grace=True)) == ()
    assert degraded_reasons(replace(HEALTHY, upstream_connected=False, leading=False)) == ()
    assert degraded_reasons(replace(HEALTHY, follower_without_leader=True, in_grace=True)) == ()


def test_several_reasons_are_all_given():
    facts = replace(HEALTHY, store_ok=False, spooled=3, upstream_connected=False)
    assert degraded_reasons(facts) == ("upstream disconnected", "store failing", "3 events spooled")


def test_a_momentary_fill_or_refusal_is_not_a_reason_until_the_grace_has_passed():
    short = BUS_STUCK_GRACE_S - 0.1
    assert degraded_reasons(replace(HEALTHY, outbox_full_s=short, append_failing_s=short, append_error="x")) == ()
    assert degraded_reasons(replace(HEALTHY, outbox_full_s=BUS_STUCK_GRACE_S)) == (
        "bus outbox full for 3 s: the upstream is held",)


def test_redis_at_maxmemory_gives_both_reasons_while_the_lease_and_the_reads_still_work():
    facts = replace(HEALTHY, outbox_full_s=30.0, append_failing_s=31.0,
                    append_error="refused: OutOfMemoryError: command not allowed when used memory > 'maxmemory'.")
    assert degraded_reasons(facts) == (
        "bus outbox full for 30 s: the upstream is held",
        "Redis appends failing for 31 s: refused: OutOfMemoryError: command not allowed when used memory > "
        "'maxmemory'.")
