"""/history's `missing`: the store's holes within the span an answer covers (webapp/routes/history.py)."""

from types import SimpleNamespace

from handlers.events import make_event
from webapp.routes.history import missing_within


def rt(holes=(), lost=None, last_seq=100):
    return SimpleNamespace(store_holes=lambda: list(holes), lost_range=lost, last_seq=last_seq)


def events(*seqs):
    return [make_event(seq, 0, "t", {}) for seq in seqs]


def test_a_hole_after_since_is_reported_up_to_the_relays_last_seq_when_the_answer_ends_before_limit():
    assert missing_within(rt(holes=[(20, 29)], lost=(90, 100)), 10, events(11, 12, 30), 100, False) \
        == [(20, 29), (90, 100)]


def test_an_answer_cut_at_limit_reports_only_holes_before_its_last_event():
    assert missing_within(rt(holes=[(20, 29), (50, 60)]), 10, events(11, 30, 31), 3, False) == [(20, 29)]


def test_the_most_recent_limit_reports_from_its_first_event_and_clips_ranges():
    assert missing_within(rt(holes=[(5, 40), (95, 99)]), None, events(30, 41, 42), 3, False) == [(30, 40), (95, 99)]


def test_a_timed_answer_reports_only_within_its_own_events_and_nothing_without_any():
    assert missing_within(rt(holes=[(5, 40)]), 10, events(30, 45), 100, True) == [(30, 40)]
    assert missing_within(rt(holes=[(5, 40)]), 10, [], 100, True) == []
    assert missing_within(rt(holes=[(5, 40)]), None, [], 100, False) == []
    assert missing_within(rt(), 10, events(11), 100, False) == []
