"""handlers.resume: what a client resuming after `since` gets, and what it is told is gone."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.resume import MAX_HOLES, ResumePlan, add_hole, last_hole_end, plan_resume

EPOCH = "e-2025-11-26"


def plan(since, *, last_seq=100, available_from=90, epoch=EPOCH) -> ResumePlan:
    return plan_resume(since, epoch, EPOCH, last_seq, available_from)


def test_a_client_already_at_the_head_is_owed_nothing_and_is_recovered():
    assert plan(100) == ResumePlan(after_seq=100, recovered=True)
    assert plan(100, available_from=None) == ResumePlan(after_seq=100, recovered=True)


def test_a_client_whose_since_is_still_available_gets_everything_after_it():
    assert plan(95) == ResumePlan(after_seq=95, recovered=True)


def test_a_client_resuming_right_before_the_oldest_available_loses_nothing():
    assert plan(89, available_from=90) == ResumePlan(after_seq=89, recovered=True)


def test_a_client_older_than_the_cache_is_told_the_inclusive_missing_range():
    assert plan(50, available_from=90) == ResumePlan(
        after_seq=50, recovered=False, missing=(51, 89))


def test_a_single_missing_event_is_a_range_of_one():
    assert plan(88, available_from=90) == ResumePlan(
        after_seq=88, recovered=False, missing=(89, 89))


def test_when_nothing_can_be_served_everything_after_since_is_missing():
    assert plan(50, available_from=None) == ResumePlan(
        after_seq=50, recovered=False, missing=(51, 100))


def test_availability_beyond_the_last_seq_means_nothing_can_be_served():
    assert plan(50, available_from=101) == ResumePlan(
        after_seq=50, recovered=False, missing=(51, 100))


def test_a_client_from_another_epoch_gets_what_is_available_of_ours_unrecovered():
    assert plan(50, epoch="e-older") == ResumePlan(after_seq=0, recovered=False, missing=(1, 89))


def test_another_epoch_is_unrecovered_even_when_nothing_is_missing():
    assert plan(50, epoch="e-older", available_from=1) == ResumePlan(
        after_seq=0, recovered=False)


def test_a_client_that_sends_no_epoch_is_taken_to_be_in_ours():
    assert plan(95, epoch=None) == ResumePlan(after_seq=95, recovered=True)


def test_a_since_beyond_anything_numbered_is_treated_as_another_epoch():
    assert plan(150) == ResumePlan(after_seq=0, recovered=False, missing=(1, 89))
    assert plan(101, available_from=1) == ResumePlan(after_seq=0, recovered=False)


def test_a_client_asking_from_zero_gets_everything_if_it_is_all_available():
    assert plan(0, available_from=1) == ResumePlan(after_seq=0, recovered=True)
    assert plan(0, available_from=40) == ResumePlan(
        after_seq=0, recovered=False, missing=(1, 39))


def test_a_relay_that_has_numbered_nothing_owes_nothing():
    assert plan(0, last_seq=0, available_from=None) == ResumePlan(after_seq=0, recovered=True)
    assert plan(5, last_seq=0, available_from=None) == ResumePlan(
        after_seq=0, recovered=False)


@settings(max_examples=200, deadline=None)
@given(
    since=st.integers(0, 60),
    last_seq=st.integers(0, 50),
    available_from=st.none() | st.integers(1, 55),
    same_epoch=st.booleans(),
)
def test_missing_and_served_seqs_split_exactly_what_the_client_is_owed(
        since, last_seq, available_from, same_epoch):
    result = plan_resume(since, EPOCH if same_epoch else "other", EPOCH, last_seq,
                         available_from)
    owed = set(range(result.after_seq + 1, last_seq + 1))
    missing = set(range(result.missing[0], result.missing[1] + 1)) if result.missing else set()
    served = {s for s in owed if available_from is not None and s >= available_from}
    assert missing | served == owed
    assert not missing & served
    if result.missing:
        assert result.missing[0] <= result.missing[1]
    assert result.recovered == (not missing and same_epoch and since <= last_seq)
    assert result.after_seq == (since if same_epoch and since <= last_seq else 0)


# -- ranges dropped from persistence (holes in the store) ------------------------------------------


def test_holes_merge_when_they_touch_or_overlap_and_stay_sorted():
    holes = add_hole([], 10, 20)
    holes = add_hole(holes, 21, 25)  # adjacent: one range
    holes = add_hole(holes, 40, 45)
    holes = add_hole(holes, 1, 3)  # older, arriving late
    holes = add_hole(holes, 44, 50)  # overlapping
    assert holes == [(1, 3), (10, 25), (40, 50)]


def test_only_the_newest_holes_are_kept():
    holes = []
    for n in range(MAX_HOLES + 5):
        holes = add_hole(holes, 10 * n, 10 * n + 1)
    assert len(holes) == MAX_HOLES and holes[0] == (50, 51) and holes[-1][0] == 10 * (MAX_HOLES + 4)


@pytest.mark.parametrize(("first", "last", "expected"), [
    (1, 9, None),  # before any hole
    (1, 10, 10),  # touches the first hole's start
    (1, 100, 50),  # spans all: up to the last hole's end
    (12, 18, 18),  # inside a hole: cut at the range's end
    (26, 39, None),  # between holes
    (46, 60, 50),
    (51, 99, None),  # after every hole
])
def test_last_hole_end_is_the_highest_dropped_seq_within_the_range(first, last, expected):
    assert last_hole_end([(10, 25), (40, 50)], first, last) == expected


@given(st.lists(st.tuples(st.integers(1, 500), st.integers(0, 20)), max_size=30),
       st.integers(1, 600), st.integers(0, 100))
@settings(max_examples=300, deadline=None)
def test_last_hole_end_matches_a_seq_by_seq_check(ranges, first, span):
    holes = []
    for lo, width in ranges:
        holes = add_hole(holes, lo, lo + width)
    dropped = {seq for lo, hi in holes for seq in range(lo, hi + 1)}
    last = first + span
    in_range = [seq for seq in range(first, last + 1) if seq in dropped]
    assert last_hole_end(holes, first, last) == (max(in_range) if in_range else None)

