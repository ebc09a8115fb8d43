"""Latest-value-wins delivery (contract §12) with plain events and a clock passed in."""

import pytest

from handlers.conflate import Conflator, Latest, RateError, Release, parse_max_hz
from handlers.events import make_event


def ev(seq, topic):
    return make_event(seq, 0, topic, {"n": seq})


def seqs(release):
    return None if release is None else [e.seq for e in release.events]


def test_latest_keeps_the_newest_event_of_each_topic_in_seq_order_and_counts_the_rest():
    latest = Latest()
    latest.offer([ev(1, "a"), ev(2, "b"), ev(3, "a")])
    latest.offer([ev(4, "c"), ev(5, "a")])
    release = latest.take()
    assert [e.seq for e in release.events] == [2, 4, 5]
    assert release.conflated == 2
    assert latest.take() == Release([], 0)


def test_topics_are_never_merged_with_each_other():
    latest = Latest()
    latest.offer([ev(1, "T.AAPL"), ev(2, "T.AAP"), ev(3, "Q.AAPL")])
    assert [e.topic for e in latest.take().events] == ["T.AAPL", "T.AAP", "Q.AAPL"]


def test_a_quiet_rate_releases_the_first_event_at_once():
    c = Conflator(2.0)
    c.offer([ev(1, "a")])
    assert seqs(c.take(100.0)) == [1]


def test_events_within_one_interval_wait_and_only_the_newest_goes():
    c = Conflator(2.0)  # one release per 0.5 s
    c.offer([ev(1, "a")])
    assert seqs(c.take(10.0)) == [1]
    c.offer([ev(2, "a"), ev(3, "b")])
    assert c.take(10.1) is None
    c.offer([ev(4, "a")])
    assert c.take(10.49) is None
    assert c.due_at() == pytest.approx(10.5)
    release = c.take(10.5)
    assert seqs(release) == [3, 4] and release.conflated == 1


def test_a_quiet_topic_still_gets_its_newest_event_one_interval_later():
    c = Conflator(4.0)
    c.offer([ev(1, "a")])
    c.take(0.0)
    c.offer([ev(2, "a"), ev(3, "a")])  # then nothing more arrives
    assert c.due_at() == pytest.approx(0.25)
    assert seqs(c.take(0.25)) == [3]
    assert c.due_at() is None and c.take(5.0) is None


def test_no_topic_goes_out_more_than_max_hz_times_a_second():
    c = Conflator(5.0)
    sent = {"a": [], "b": []}
    seq = 0
    for tick in range(1000):  # 1 ms ticks for 1 s, both topics every tick
        now = tick / 1000
        seq += 2
        c.offer([ev(seq - 1, "a"), ev(seq, "b")])
        release = c.take(now)
        for e in release.events if release else []:
            sent[e.topic].append(now)
    assert len(sent["a"]) == len(sent["b"]) == 5
    assert all(b - a >= 0.2 - 1e-9 for a, b in zip(sent["a"], sent["a"][1:], strict=False))


def test_releases_keep_seq_order_across_topics():
    c = Conflator(10.0)
    out = []
    for i in range(1, 200):
        c.offer([ev(i, "abc"[i % 3])])
        release = c.take(i * 0.013)
        out += seqs(release) or []
    assert out == sorted(out) and len(set(out)) == len(out)


@pytest.mark.parametrize("raw, want", [("2", 2.0), ("0.5", 0.5), (1000, 1000.0), ("1e2", 100.0), (None, None), ("", None)])
def test_max_hz_accepts_numbers_in_range(raw, want):
    assert parse_max_hz(raw) == want


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "1e9", "nan", "inf", 0, 1001, True, [2], {"x": 1}, "9" * 40,
                                 "1_0", " 1", "+2", "\u0663", "1000.0001"])
def test_max_hz_refuses_what_is_not_a_rate_in_range(raw):
    with pytest.raises(RateError, match="max_hz"):
        parse_max_hz(raw)


def test_the_interval_runs_from_when_a_release_was_written():
    c = Conflator(2.0)
    c.offer([ev(1, "a")])
    assert seqs(c.take(0.0)) == [1]
    c.sent(0.009)  # its writes ended 9 ms after the decision
    c.offer([ev(2, "a")])
    assert c.due_at() == pytest.approx(0.509)
    assert c.take(0.5) is None
    assert seqs(c.take(0.509)) == [2]
    c.sent(0.0)  # an end before the decision moves nothing back
    c.offer([ev(3, "a")])
    assert c.take(1.0) is None and seqs(c.take(1.009)) == [3]


def test_a_refused_max_hz_text_is_quoted_as_given():
    with pytest.raises(RateError, match=r"got '1000.0001'"):
        parse_max_hz("1000.0001")


def test_past_max_held_topics_a_release_goes_at_once_whatever_the_interval():
    c = Conflator(1e-300, max_held=3)  # an interval without end
    c.offer([ev(1, "a"), ev(2, "b"), ev(3, "c")])
    assert c.take(0.0) is not None  # the first release is due at once anyway
    c.offer([ev(4, "a"), ev(5, "b"), ev(6, "c")])
    assert c.take(1.0) is None and c.due_at() > 1e299
    c.offer([ev(7, "d")])  # a 4th topic
    assert c.due_at() <= 1.0
    assert seqs(c.take(1.0)) == [4, 5, 6, 7]
