"""When held connections are frozen out of the cyclic collector's reach, and when they are thawed."""

from handlers.heldgc import FREEZE_MIN_TAKEN, THAW_MIN_CLOSED, gc_step


def test_nothing_happens_while_few_connections_came_or_went():
    assert gc_step(taken=FREEZE_MIN_TAKEN - 1, closed=THAW_MIN_CLOSED - 1, frozen=0) is None


def test_enough_new_connections_are_frozen():
    assert gc_step(taken=FREEZE_MIN_TAKEN, closed=0, frozen=50_000) == "freeze"


def test_a_quarter_of_the_frozen_connections_closed_calls_for_a_thaw():
    assert gc_step(taken=0, closed=2_500, frozen=10_000) == "thaw"
    assert gc_step(taken=0, closed=2_499, frozen=10_000) is None


def test_a_thaw_comes_before_another_freeze():
    assert gc_step(taken=5_000, closed=3_000, frozen=10_000) == "thaw"


def test_a_few_closes_of_a_small_crowd_do_not_thaw():
    assert gc_step(taken=0, closed=THAW_MIN_CLOSED - 1, frozen=100) is None
