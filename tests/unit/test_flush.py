"""The flush pacing rule: at once while idle or within the share's credit, else when the credit allows."""

import pytest

from handlers.flush import FLUSH_BURST_S, FLUSH_SHARE_MAX, FlushPacer


def test_the_first_flush_may_start_at_once():
    assert FlushPacer().delay_s(now_s=0.0) == 0.0


def test_without_a_floor_an_event_after_a_cheap_flush_goes_out_at_once():
    pacer = FlushPacer(floor_s=0.0)
    pacer.flushed(start_s=10.0, cost_s=0.0004)  # 100 clients: ~0.4 ms
    assert pacer.delay_s(now_s=10.002) == 0.0  # the next event, 2 ms later (100 x 500)


def test_one_slow_flush_at_light_load_does_not_hold_the_next_event_back():
    # 100 x 500: a flush that took 2 ms (twice its usual cost); the rule of one flush's
    # cost over the share would hold the event 2 ms later until 10.005
    pacer = FlushPacer(floor_s=0.0)
    for i in range(50):  # a second of cheap flushes before it: the credit is full
        pacer.flushed(start_s=9.0 + i * 0.02, cost_s=0.0008)
    pacer.flushed(start_s=10.0, cost_s=0.002)
    assert pacer.delay_s(now_s=10.002) == 0.0


def test_without_credit_an_expensive_flush_spaces_the_next_by_its_cost_over_the_share():
    pacer = FlushPacer(floor_s=0.0, burst_s=0.0)  # the rule before the credit
    assert pacer.flushed(start_s=10.0, cost_s=0.005) == pytest.approx(0.005)  # 1000 clients: ~5 ms
    assert pacer.next_start_s() == pytest.approx(10.0 + 0.005 / FLUSH_SHARE_MAX)
    assert pacer.delay_s(now_s=10.006) == pytest.approx(0.0125 - 0.006)
    assert pacer.delay_s(now_s=10.013) == 0.0


def test_a_load_above_the_share_is_held_to_it_once_the_credit_is_spent():
    pacer = FlushPacer(floor_s=0.0)
    now, spent, flushes = 0.0, 0.0, 0
    while now < 2.0:  # events always waiting; each flush costs 5 ms of the worker
        now += pacer.delay_s(now)
        spent += pacer.flushed(start_s=now, cost_s=0.005)
        flushes += 1
        now += 0.005
    assert spent <= FLUSH_SHARE_MAX * 2.0 + FLUSH_BURST_S + 0.005 + 1e-9  # the last flush starts before 2 s
    assert spent >= FLUSH_SHARE_MAX * 2.0 - 0.005
    assert flushes < 2.0 / 0.005 / 2  # batches: far fewer flushes than back to back


def test_the_credit_never_grows_past_its_burst():
    pacer = FlushPacer(floor_s=0.0, burst_s=0.010)
    pacer.flushed(start_s=0.0, cost_s=0.0)
    assert pacer.credit_s(now_s=3600.0) == pytest.approx(0.010)
    pacer.flushed(start_s=3600.0, cost_s=0.030)  # a long idle does not pay for a 30 ms flush
    assert pacer.delay_s(now_s=3600.0) == pytest.approx(0.020 / FLUSH_SHARE_MAX)


def test_a_floor_spaces_cheap_flushes_and_the_credit_still_bounds_expensive_ones():
    pacer = FlushPacer(floor_s=0.010, burst_s=0.0)
    pacer.flushed(start_s=1.0, cost_s=0.0001)
    assert pacer.delay_s(now_s=1.004) == pytest.approx(0.006)
    pacer.flushed(start_s=2.0, cost_s=0.008)
    assert pacer.delay_s(now_s=2.010) == pytest.approx(0.010)


def test_a_negative_cost_counts_as_none():
    pacer = FlushPacer()
    assert pacer.flushed(start_s=5.0, cost_s=-1.0) == 0.0
    assert pacer.delay_s(now_s=5.0) == 0.0


def test_a_clock_that_steps_back_grows_no_credit():
    pacer = FlushPacer(floor_s=0.0, burst_s=0.0)
    pacer.flushed(start_s=5.0, cost_s=0.004)
    assert pacer.credit_s(now_s=4.0) == pytest.approx(-0.004)
    assert pacer.delay_s(now_s=4.0) == pytest.approx(1.0 + 0.004 / FLUSH_SHARE_MAX)
