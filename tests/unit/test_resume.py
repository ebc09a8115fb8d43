"""handlers.resume: what a client resuming after `since` gets, and what it is told is gone."""

from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.resume import ResumePlan, plan_resume

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
