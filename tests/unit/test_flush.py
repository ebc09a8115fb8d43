"""The flush pacing rule: at once while idle, else spaced by the floor and by the last flush's cost."""

import pytest

from handlers.flush import FLUSH_SHARE_MAX, FlushPacer


def test_the_first_flush_may_start_at_once():
    assert FlushPacer().delay_s(now_s=0.0) == 0.0


def test_without_a_floor_an_event_after_a_cheap_flush_goes_out_at_once():
    pacer = FlushPacer(floor_s=0.0)
    pacer.flushed(start_s=10.0, end_s=10.0004)  # 100 clients: ~0.4 ms
    assert pacer.delay_s(now_s=10.002) == 0.0  # the next event, 2 ms later (100 x 500)


def test_an_expensive_flush_spaces_the_next_by_its_cost_over_the_share():
    pacer = FlushPacer(floor_s=0.0)
    cost = pacer.flushed(start_s=10.0, end_s=10.005)  # 1000 clients: ~5 ms
    assert cost == pytest.approx(0.005)
    assert pacer.next_start_s() == pytest.approx(10.0 + 0.005 / FLUSH_SHARE_MAX)
    assert pacer.delay_s(now_s=10.006) == pytest.approx(0.0125 - 0.006)
    assert pacer.delay_s(now_s=10.013) == 0.0


def test_a_floor_spaces_cheap_flushes_and_yields_to_a_larger_cost():
    pacer = FlushPacer(floor_s=0.010)
    pacer.flushed(start_s=1.0, end_s=1.0001)
    assert pacer.delay_s(now_s=1.004) == pytest.approx(0.006)
    pacer.flushed(start_s=2.0, end_s=2.008)
    assert pacer.delay_s(now_s=2.010) == pytest.approx(0.010)


def test_a_clock_that_steps_back_gives_no_negative_cost():
    pacer = FlushPacer()
    assert pacer.flushed(start_s=5.0, end_s=4.0) == 0.0
    assert pacer.delay_s(now_s=5.0) == 0.0
