"""The degraded verdict: each part's fact gives its reason, and a healthy relay has none."""

from dataclasses import replace

import pytest

from handlers.health import HealthFacts, degraded_reasons

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
