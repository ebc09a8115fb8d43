"""handlers.cache: a count- and age-bounded event cache whose clock is passed in."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.cache import EventCache, field_text
from handlers.events import Event, make_event
from handlers.topics import compile_patterns, topic_of

T0 = 1_764_124_800_000
EV_SYM = ("ev", "sym")
PROPERTY = settings(max_examples=200, deadline=None)


def event(seq: int, ts: int = T0, data=None, raw: bool = False) -> Event:
    if data is None:
        data = {"ev": "T", "sym": "AAPL", "p": 191.2, "s": 100, "t": ts}
    return make_event(seq, ts, topic_of(data, EV_SYM), data, raw)


def filled(*events: Event, max_items: int = 100, ttl_s: int = 60) -> EventCache:
    cache = EventCache(max_items=max_items, ttl_s=ttl_s)
    cache.add(list(events), now_ms=max((e.ts for e in events), default=T0))
    return cache


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


# -- stats ----------------------------------------------------------------------------


def test_an_empty_cache_reports_zeros_and_no_seqs():
    assert EventCache(max_items=10, ttl_s=60).stats(T0) == {
        "items": 0, "valid_items": 0, "max_items": 10, "ttl_seconds": 60, "bytes": 0,
        "added": 0, "evicted": 0, "expired": 0, "hits": 0, "misses": 0,
        "oldest_seq": None, "newest_seq": None,
    }


def test_stats_carry_exactly_the_contract_fields():
    assert list(filled(event(1)).stats(T0)) == [
        "items", "valid_items", "max_items", "ttl_seconds", "bytes", "added", "evicted",
        "expired", "hits", "misses", "oldest_seq", "newest_seq",
    ]


def test_stats_count_items_and_the_bytes_of_their_json():
    events = [event(1), event(2, data={"ev": "Q", "sym": "MSFT"}), event(3, data="raw", raw=True)]
    assert filled(*events, max_items=10, ttl_s=60).stats(T0) == {
        "items": 3, "valid_items": 3, "max_items": 10, "ttl_seconds": 60,
        "bytes": sum(len(e.json) for e in events),
        "added": 3, "evicted": 0, "expired": 0, "hits": 0, "misses": 0,
        "oldest_seq": 1, "newest_seq": 3,
    }


# -- age --------------------------------------------------------------------------------


def test_an_event_is_valid_for_exactly_its_ttl():
    cache = filled(event(1, ts=T0), ttl_s=10)
    assert seqs(cache.recent(50, T0 + 10_000)) == [1]
    assert cache.recent(50, T0 + 10_001) == []


def test_expired_events_are_invisible_before_they_are_purged():
    first, second = event(1, ts=T0), event(2, ts=T0 + 5_000)
    cache = filled(first, second, ttl_s=10)
    now = T0 + 10_001
    assert seqs(cache.recent(50, now)) == [2]
    assert cache.get(1, now) is None
    assert cache.oldest_seq(now) == 2
    assert cache.stats(now) == {
        "items": 2, "valid_items": 1, "max_items": 100, "ttl_seconds": 10,
        "bytes": len(first.json) + len(second.json),
        "added": 2, "evicted": 0, "expired": 0, "hits": 0, "misses": 1,
        "oldest_seq": 2, "newest_seq": 2,
    }


def test_adding_purges_what_has_expired_and_counts_it():
    cache = filled(event(1, ts=T0), event(2, ts=T0 + 5_000), ttl_s=10)
    cache.add([event(3, ts=T0 + 10_001)], now_ms=T0 + 10_001)
    assert len(cache) == 2
    assert cache.stats(T0 + 10_001)["expired"] == 1
    assert seqs(cache.recent(50, T0 + 10_001)) == [2, 3]


def test_when_everything_has_expired_there_is_no_oldest_or_newest_seq():
    cache = filled(event(1), event(2), ttl_s=1)
    later = T0 + 1_001
    assert cache.oldest_seq(later) is None
    stats = cache.stats(later)
    assert (stats["items"], stats["valid_items"], stats["oldest_seq"], stats["newest_seq"]) == (
        2, 0, None, None)


def test_an_event_added_already_expired_is_counted_added_then_expired():
    cache = EventCache(max_items=10, ttl_s=10)
    cache.add([event(1, ts=T0)], now_ms=T0 + 60_000)
    assert len(cache) == 0
    assert (cache.stats(T0 + 60_000)["added"], cache.stats(T0 + 60_000)["expired"]) == (1, 1)


# -- count ------------------------------------------------------------------------------


def test_past_max_items_the_oldest_are_evicted_first():
    cache = EventCache(max_items=3, ttl_s=60)
    cache.add([event(s) for s in range(1, 6)], now_ms=T0)
    assert seqs(cache.recent(50, T0)) == [3, 4, 5]
    assert cache.stats(T0)["evicted"] == 2


def test_eviction_happens_one_add_at_a_time_as_well():
    cache = EventCache(max_items=2, ttl_s=60)
    for s in range(1, 5):
        cache.add([event(s)], now_ms=T0)
    assert seqs(cache.recent(50, T0)) == [3, 4]
    stats = cache.stats(T0)
    assert (stats["added"], stats["evicted"], stats["items"]) == (4, 2, 2)


def test_eviction_keeps_the_byte_count_right():
    cache = EventCache(max_items=2, ttl_s=60)
    events = [event(s, data={"ev": "T", "sym": "X" * s}) for s in range(1, 6)]
    cache.add(events, now_ms=T0)
    assert cache.stats(T0)["bytes"] == len(events[3].json) + len(events[4].json)


# -- get ----------------------------------------------------------------------------------


def test_get_counts_hits_and_misses():
    cache = filled(event(1), event(2), ttl_s=10)
    assert cache.get(2, T0) == event(2)
    assert cache.get(3, T0) is None
    assert cache.get(1, T0 + 10_001) is None
    stats = cache.stats(T0)
    assert (stats["hits"], stats["misses"]) == (1, 2)


# -- recent ---------------------------------------------------------------------------------


def test_recent_gives_the_latest_events_ascending():
    cache = filled(*[event(s) for s in range(1, 11)])
    assert seqs(cache.recent(3, T0)) == [8, 9, 10]
    assert seqs(cache.recent(50, T0)) == list(range(1, 11))


def test_recent_filters_by_topic_before_limiting():
    cache = filled(
        event(1, data={"ev": "T", "sym": "AAPL"}), event(2, data={"ev": "Q", "sym": "AAPL"}),
        event(3, data={"ev": "T", "sym": "MSFT"}), event(4, data={"ev": "Q", "sym": "MSFT"}),
        event(5, data={"ev": "T", "sym": "AAPL"}),
    )
    assert seqs(cache.recent(2, T0, compile_patterns(["T.*"]))) == [3, 5]
    assert seqs(cache.recent(50, T0, compile_patterns(["Q.MSFT", "T.AAPL"]))) == [1, 4, 5]


def test_recent_returns_the_events_themselves():
    events = [event(1), event(2)]
    assert filled(*events).recent(50, T0) == events


# -- search ---------------------------------------------------------------------------------

ROWS = [
    event(1, data={"ev": "T", "sym": "AAPL", "p": 191.2, "s": 100, "c": [12, 37],
                   "meta": {"venue": {"mic": "XNAS"}}, "halted": False, "note": None}),
    event(2, data={"ev": "Q", "sym": "MSFT", "bp": 485.05, "s": "100", "halted": True}),
    event(3, data={"ev": "T", "sym": "aapl", "p": 191, "s": 200, "note": "Café CRÈME"}),
    event(4, data="AAPL raw text, not json", raw=True),
    event(5, data={"ev": "T", "sym": "NVDA", "p": 180.5, "s": 100,
                   "meta": {"venue": {"mic": "XNYS"}, "ids": [7, 8]}}),
]


def search(**kwargs) -> list[int]:
    return seqs(filled(*ROWS).search(T0, kwargs.pop("limit", 50), **kwargs))


@pytest.mark.parametrize(("q", "found"), [
    ("aapl", [1, 3, 4]),
    ("AAPL", [1, 3, 4]),
    ('"sym":"msft"', [2]),
    ('"topic":"t.nvda"', [5]),
    ('"raw":true', [4]),
    ("xnas", [1]),
    ("café crème", [3]),
    ("CAFÉ", [3]),
    ("crème", [3]),
    ("Crème", [3]),
    ("nothing like this", []),
])
def test_q_is_a_case_insensitive_substring_of_the_event_json(q, found):
    assert search(q=q) == found


@pytest.mark.parametrize(("field", "value", "found"), [
    ("sym", "AAPL", [1]),
    ("sym", "aapl", [3]),
    ("s", "100", [1, 2, 5]),
    ("p", "191.2", [1]),
    ("p", "191", [3]),
    ("bp", "485.05", [2]),
    ("halted", "true", [2]),
    ("halted", "false", [1]),
    ("note", "null", [1]),
    ("note", "Café CRÈME", [3]),
    ("note", "café crème", []),
    ("meta.venue.mic", "XNAS", [1]),
    ("meta.venue", '{"mic":"XNYS"}', [5]),
    ("meta.ids.1", "8", [5]),
    ("c", "[12,37]", [1]),
    ("c.0", "12", [1]),
    ("c.2", "12", []),
    ("sym", "AAP", []),
    ("missing", "null", []),
    ("meta.venue.mic.deeper", "XNAS", []),
])
def test_field_and_value_match_exactly_on_a_dotted_path_in_data(field, value, found):
    assert search(field=field, value=value) == found


def test_a_field_without_a_value_matches_nothing_rather_than_absent_fields():
    assert search(field="note") == []


def test_search_combines_q_field_and_topics():
    match = compile_patterns(["T.*"])
    assert search(q="aapl", field="s", value="100", match=match) == [1]
    assert search(q="100", match=match) == [1, 5]


def test_search_gives_the_most_recent_matches_ascending():
    assert search(field="s", value="100", limit=2) == [2, 5]
    assert search(q="aapl", limit=1) == [4]


def test_search_without_criteria_is_recent():
    assert search(limit=3) == [3, 4, 5]


def test_search_skips_expired_events():
    cache = filled(event(1, ts=T0), event(2, ts=T0 + 5_000), ttl_s=10)
    assert seqs(cache.search(T0 + 10_001, 50, q="aapl")) == [2]


# -- field_text -------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "path", "text"), [
    ({"a": "AAPL"}, ["a"], "AAPL"),
    ({"a": 100}, ["a"], "100"),
    ({"a": 1.5}, ["a"], "1.5"),
    ({"a": 2**70}, ["a"], "1180591620717411303424"),
    ({"a": True}, ["a"], "true"),
    ({"a": None}, ["a"], "null"),
    ({"a": {"b": [1, {"c": "x"}]}}, ["a", "b", "1", "c"], "x"),
    ({"a": {"b": 1, "c": [2]}}, ["a"], '{"b":1,"c":[2]}'),
    ({"a": "Ünïcödé"}, ["a"], "Ünïcödé"),
    ({"a": 1}, ["b"], None),
    ({"a": 1}, ["a", "b"], None),
    ({"a": [1, 2]}, ["a", "2"], None),
    ({"a": [1, 2]}, ["a", "-1"], None),
    ({"a": [1, 2]}, ["a", "x"], None),
    ({"a": [1, 2]}, ["a", "²"], None),
    ({"a": [1, 2]}, ["a", "١"], None),
    ("AAPL", ["a"], None),
    ([{"a": 1}], ["0", "a"], "1"),
    (None, ["a"], None),
])
def test_field_text_writes_the_value_at_a_path_as_json_without_string_quotes(data, path, text):
    assert field_text(data, path) == text


# -- events_after -----------------------------------------------------------------------------


def test_events_after_gives_every_later_event_ascending():
    cache = filled(*[event(s) for s in range(10, 16)])
    assert seqs(cache.events_after(12, T0)) == [13, 14, 15]
    assert seqs(cache.events_after(0, T0)) == [10, 11, 12, 13, 14, 15]
    assert cache.events_after(15, T0) == []
    assert cache.events_after(99, T0) == []


def test_events_after_filters_by_topic_and_skips_expired():
    cache = filled(
        event(1, ts=T0, data={"ev": "T", "sym": "AAPL"}),
        event(2, ts=T0 + 5_000, data={"ev": "Q", "sym": "AAPL"}),
        event(3, ts=T0 + 6_000, data={"ev": "T", "sym": "AAPL"}),
        ttl_s=10,
    )
    assert seqs(cache.events_after(0, T0 + 6_000, compile_patterns(["T.*"]))) == [1, 3]
    assert seqs(cache.events_after(0, T0 + 10_001)) == [2, 3]


# -- oldest and newest --------------------------------------------------------------------------


def test_oldest_and_newest_seq():
    cache = filled(event(4), event(5), event(6))
    assert (cache.oldest_seq(T0), cache.newest_seq()) == (4, 6)
    empty = EventCache(max_items=10, ttl_s=10)
    assert (empty.oldest_seq(T0), empty.newest_seq()) == (None, None)


# -- configure ----------------------------------------------------------------------------------


def test_shrinking_max_items_evicts_at_once():
    cache = filled(*[event(s) for s in range(1, 11)], max_items=100)
    cache.configure(T0, max_items=4)
    assert seqs(cache.recent(50, T0)) == [7, 8, 9, 10]
    stats = cache.stats(T0)
    assert (stats["max_items"], stats["items"], stats["evicted"]) == (4, 4, 6)


def test_shrinking_the_ttl_expires_at_once():
    cache = filled(event(1, ts=T0), event(2, ts=T0 + 20_000), event(3, ts=T0 + 40_000),
                   ttl_s=60)
    cache.configure(T0 + 40_000, ttl_s=30)
    assert seqs(cache.recent(50, T0 + 40_000)) == [2, 3]
    stats = cache.stats(T0 + 40_000)
    assert (stats["ttl_seconds"], stats["items"], stats["expired"]) == (30, 2, 1)


def test_configuring_one_bound_keeps_the_other():
    cache = EventCache(max_items=10, ttl_s=60)
    cache.configure(T0, ttl_s=5)
    assert (cache.max_items, cache.ttl_s) == (10, 5)
    cache.configure(T0, max_items=3)
    assert (cache.max_items, cache.ttl_s) == (3, 5)
    cache.configure(T0)
    assert (cache.max_items, cache.ttl_s) == (3, 5)


def test_growing_the_bounds_brings_nothing_back():
    cache = filled(*[event(s) for s in range(1, 6)], max_items=2)
    cache.configure(T0, max_items=100, ttl_s=3600)
    assert seqs(cache.recent(50, T0)) == [4, 5]


# -- clear ----------------------------------------------------------------------------------------


def test_clear_returns_how_many_were_held_and_empties_the_cache():
    cache = filled(event(1), event(2), event(3))
    assert cache.clear() == 3
    assert len(cache) == 0
    assert cache.recent(50, T0) == []
    assert cache.stats(T0) == {
        "items": 0, "valid_items": 0, "max_items": 100, "ttl_seconds": 60, "bytes": 0,
        "added": 3, "evicted": 0, "expired": 0, "hits": 0, "misses": 0,
        "oldest_seq": None, "newest_seq": None,
    }


def test_clearing_an_empty_cache_returns_zero_and_the_cache_keeps_working():
    cache = EventCache(max_items=10, ttl_s=60)
    assert cache.clear() == 0
    cache.add([event(1)], now_ms=T0)
    assert seqs(cache.recent(50, T0)) == [1]


# -- invariants under random use ------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 6), st.integers(0, 3_000)),
        st.tuples(st.just("configure"), st.none() | st.integers(1, 5),
                  st.none() | st.integers(1, 8)),
        st.tuples(st.just("clear")),
        st.tuples(st.just("get"), st.integers(0, 60)),
        st.tuples(st.just("wait"), st.integers(0, 6_000)),
    ),
    max_size=40,
)


class Model:
    """The obvious, slow cache the real one must agree with."""

    def __init__(self, max_items: int, ttl_s: int):
        self.events: list[Event] = []
        self.max_items, self.ttl_s = max_items, ttl_s
        self.added = self.evicted = self.expired = self.hits = self.misses = 0
        self.cleared = 0

    def cutoff(self, now: int) -> int:
        return now - self.ttl_s * 1000

    def bound(self, now: int) -> None:
        while self.events and self.events[0].ts < self.cutoff(now):
            self.events.pop(0)
            self.expired += 1
        while len(self.events) > self.max_items:
            self.events.pop(0)
            self.evicted += 1

    def valid(self, now: int) -> list[Event]:
        return [e for e in self.events if e.ts >= self.cutoff(now)]

    def stats(self, now: int) -> dict:
        valid = self.valid(now)
        return {
            "items": len(self.events), "valid_items": len(valid),
            "max_items": self.max_items, "ttl_seconds": self.ttl_s,
            "bytes": sum(len(e.json) for e in self.events),
            "added": self.added, "evicted": self.evicted, "expired": self.expired,
            "hits": self.hits, "misses": self.misses,
            "oldest_seq": valid[0].seq if valid else None,
            "newest_seq": valid[-1].seq if valid else None,
        }


@PROPERTY
@given(st.integers(1, 8), st.integers(1, 5), OPS)
def test_the_cache_agrees_with_a_plain_model_under_any_sequence_of_use(max_items, ttl_s, ops):
    cache, model = EventCache(max_items, ttl_s), Model(max_items, ttl_s)
    now, next_seq = T0, 1
    for op in ops:
        if op[0] == "add":
            _, count, advance = op
            now += advance
            batch = [event(next_seq + i, ts=now) for i in range(count)]
            next_seq += count
            cache.add(batch, now)
            model.events += batch
            model.added += count
            model.bound(now)
        elif op[0] == "configure":
            _, ttl, most = op
            cache.configure(now, ttl_s=ttl, max_items=most)
            model.ttl_s = ttl or model.ttl_s
            model.max_items = most or model.max_items
            model.bound(now)
        elif op[0] == "clear":
            assert cache.clear() == len(model.events)
            model.cleared += len(model.events)
            model.events = []
        elif op[0] == "get":
            wanted = [e for e in model.valid(now) if e.seq == op[1]]
            assert cache.get(op[1], now) == (wanted[0] if wanted else None)
            model.hits += bool(wanted)
            model.misses += not wanted
        else:
            now += op[1]

        held = cache.recent(1000, now)
        assert held == model.valid(now)
        assert seqs(held) == sorted(set(seqs(held)))
        assert len(cache) <= cache.max_items
        stats = cache.stats(now)
        assert stats == model.stats(now)
        assert stats["added"] == stats["items"] + stats["evicted"] + stats["expired"] + model.cleared
        assert cache.oldest_seq(now) == stats["oldest_seq"]
        if held:
            since = held[len(held) // 2].seq
            assert cache.events_after(since, now) == [e for e in held if e.seq > since]


def test_events_already_held_are_not_added_twice():
    from handlers.cache import EventCache
    from handlers.events import make_event

    cache = EventCache(max_items=10, ttl_s=60)
    cache.add([make_event(1, 0, "t", {}), make_event(2, 0, "t", {})], now_ms=0)
    cache.add([make_event(2, 0, "t", {}), make_event(3, 0, "t", {})], now_ms=0)
    assert [e.seq for e in cache.recent(10, 0)] == [1, 2, 3]
    assert cache.stats(0)["added"] == 3


def sym_event(seq: int, ev: str, sym: str, ts: int = T0) -> Event:
    return event(seq, ts, {"ev": ev, "sym": sym, "p": seq})


def test_latest_holds_the_newest_unexpired_event_of_each_matching_topic_ascending():
    cache = filled(sym_event(1, "T", "AAPL", T0 - 61_000), sym_event(2, "T", "MSFT"), sym_event(3, "T", "AAPL"),
                   sym_event(4, "Q", "AAPL"), sym_event(5, "T", "MSFT"))
    now = T0 + 1000
    assert seqs(cache.latest(now)) == [3, 4, 5]
    assert seqs(cache.latest(now, compile_patterns(("T.*",)))) == [3, 5]
    assert seqs(cache.latest(now, limit=2)) == [4, 5]  # the two topics that changed last
    assert cache.latest(now, compile_patterns(("X",))) == []


def test_the_cache_keeps_its_bytes_under_max_bytes_oldest_first_and_the_newest_always():
    """Bounded by count alone, 2,000 events of 1 MB took a worker to 2.65 GB (an outside audit)."""
    cache = EventCache(1000, 3600, max_bytes=1000)
    small = [make_event(seq, T0, "t", {"pad": "x" * 80}) for seq in range(1, 31)]
    cache.add(small, T0)
    stats = cache.stats(T0)
    assert stats["bytes"] <= 1000 and stats["newest_seq"] == 30 and stats["evicted"] == 30 - stats["items"]
    big = make_event(31, T0, "t", {"pad": "y" * 5000})
    cache.add([big], T0)
    assert cache.stats(T0)["items"] == 1 and cache.get(31, T0) is big  # the newest stays, alone
