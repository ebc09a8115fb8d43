"""fill_from_store with a store stand-in: pages, the per-worker bound on concurrent resumes, and a client that
left before or during its turn (webapp/streams.py)."""

from __future__ import annotations

from types import SimpleNamespace

import gevent
import gevent.lock

from handlers.events import make_event
from handlers.topics import compile_patterns
from webapp.streams import Opening, fill_from_store, held_down_to


class PagedStore:
    """Rows 1..n; each select waits a moment (a store reading in its thread) and is recorded."""

    def __init__(self, n: int):
        self.events = [make_event(seq, 0, "T.X", {"n": seq}) for seq in range(1, n + 1)]
        self.running = self.most_at_once = 0
        self.limits: list[int] = []

    def select_events(self, clauses: str, params: dict) -> list:
        assert "ORDER BY seq DESC LIMIT %(limit)s" in clauses
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.limits.append(params["limit"])
        try:
            gevent.sleep(0.01)
            rows = [e for e in reversed(self.events) if params["first"] <= e.seq <= params["last"]]
            return rows[:params["limit"]]
        finally:
            self.running -= 1

    def min_seq(self) -> int:
        return 1

    def max_seq(self) -> int:
        return max((e.seq for e in self.events), default=0)


def runtime(store: PagedStore, *, max_events: int = 100_000, page: int = 100, concurrency: int = 2):
    return SimpleNamespace(store=store, settings=SimpleNamespace(resume_max_events=max_events, resume_page_events=page),
                           resume_gate=gevent.lock.BoundedSemaphore(concurrency), store_holes=lambda: [],
                           lost_range=None, clustered=False, feeding_writer=False, writer=None)


def opening(first: int, last: int) -> Opening:
    return Opening("e", last, False, (first, last), [], (first, last))


def test_a_resume_is_read_a_page_at_a_time_and_comes_out_whole_and_in_order():
    store = PagedStore(1000)
    filled = fill_from_store(runtime(store, page=150), opening(11, 1000), compile_patterns(["*"]))
    assert [e.seq for e in filled.events] == list(range(11, 1001))
    assert filled.recovered and filled.missing is None
    assert store.limits == [150] * 7  # 990 rows: six whole pages, then one that comes back short


def test_the_limit_keeps_the_newest_and_reports_the_rest_missing_across_pages():
    store = PagedStore(1000)
    filled = fill_from_store(runtime(store, max_events=250, page=100), opening(1, 1000), compile_patterns(["*"]))
    assert [e.seq for e in filled.events] == list(range(751, 1001))
    assert filled.missing == (1, 750) and not filled.recovered
    assert store.limits == [100, 100, 50]


def test_no_more_resumes_read_the_store_at_once_than_the_gate_allows():
    store = PagedStore(500)
    rt = runtime(store, page=100, concurrency=2)
    jobs = [gevent.spawn(fill_from_store, rt, opening(1, 500), compile_patterns(["*"])) for _ in range(6)]
    gevent.joinall(jobs, raise_error=True)
    assert all([e.seq for e in job.value.events] == list(range(1, 501)) for job in jobs)
    assert store.most_at_once == 2


def test_a_client_gone_before_its_turn_or_between_pages_reads_no_further():
    store = PagedStore(1000)
    rt = runtime(store, page=100)
    assert fill_from_store(rt, opening(1, 1000), compile_patterns(["*"]), lambda: True).from_store is None
    assert store.limits == []
    looks = []
    fill_from_store(rt, opening(1, 1000), compile_patterns(["*"]), lambda: looks.append(1) or len(looks) > 3)
    assert store.limits == [100, 100, 100]


def test_no_patterns_select_no_topic_in_the_store_and_star_selects_every_one():
    from webapp.store.base import topic_condition

    assert topic_condition((), {}) == "0"  # a subscription TOKEN_TOPICS emptied
    assert topic_condition(("*",), {}) == "1"
    params: dict = {}
    assert "has(%(topics_exact)s, topic)" in topic_condition(("T.A",), params) and params["topics_exact"] == ["T.A"]


def test_prefixes_are_matched_one_has_per_length_in_bytes():
    """An OR per prefix cost ClickHouse 18.16 seconds at 900 of them (docs/benchmarks.md): one has() per length."""
    from webapp.store.base import topic_condition

    params: dict = {}
    condition = topic_condition(("T.*", "Q.*", "é*", "T.A", "TRADES.*"), params)
    assert condition == ("(has(%(topics_exact)s, topic) OR has(%(topic_prefixes_2)s, substring(topic, 1, 2))"
                         " OR has(%(topic_prefixes_7)s, substring(topic, 1, 7)))")
    assert params == {"topics_exact": ["T.A"], "topic_prefixes_2": ["T.", "Q.", "é"], "topic_prefixes_7": ["TRADES."]}


class Spool:
    """The spool's part a resume reads: rows of events, ascending; `drained` rows are gone when read."""

    def __init__(self, rows: list[list]):
        self.rows = {row_id: events for row_id, events in enumerate(rows, 1)}
        self.drained: set[int] = set()

    def rows_between(self, first: int, last: int) -> list[tuple[int, int, int]]:
        return [(row_id, events[0].seq, events[-1].seq) for row_id, events in sorted(self.rows.items(), reverse=True)
                if events[-1].seq >= first and events[0].seq <= last]

    def row(self, row_id: int) -> list | None:
        return None if row_id in self.drained else self.rows.get(row_id)


class Writer:
    """The store writer's part a resume looks at: events it holds that the store lacks (ascending), the
    first `spooled` of them in its spool (rows of 5), the rest in memory."""

    def __init__(self, store: PagedStore, held: list, spooled: int = 0):
        self.store, self.held, self.hurried = store, held, 0
        self.spool = Spool([held[i:i + 5] for i in range(0, spooled, 5)])
        self.memory = held[spooled:]

    def stored_through(self, seq: int) -> bool:
        return not (self.held and self.held[0].seq <= seq)

    def hurry(self) -> None:
        self.hurried += 1

    def write(self) -> None:
        self.store.events += self.held
        self.held = []

    def unspooled(self, first: int, last: int) -> list:
        return [e for e in self.memory if first <= e.seq <= last]

    hung = False

    def stalled(self) -> bool:
        return self.hung

    def store_stalled_s(self) -> float:
        return 6.0 if self.hung else 0.0


def writing(store: PagedStore, stored: int, total: int, spooled: int = 0) -> Writer:
    """The store has rows 1..`stored`; the writer holds the rest up to `total`."""
    held = store.events[stored:total]
    del store.events[stored:]
    return Writer(store, held, spooled)


def test_a_resume_waits_for_the_writer_s_batch_below_the_cache_instead_of_skipping_it():
    """An outside check: with 2,500 events/s and a cache of 200, a resume got seqs to 40,219 from the store and
    40,230 on from the cache, never the 10 between: they were in the writer's batch, not yet in the store."""
    store = PagedStore(1000)
    rt = runtime(store)
    rt.writer = writer = writing(store, 990, 1000)
    rt.settings.store_batch_ms = 100
    gevent.spawn_later(0.1, writer.write)
    filled = fill_from_store(rt, opening(11, 1000), compile_patterns(["*"]))
    assert [e.seq for e in filled.events] == list(range(11, 1001))
    assert filled.recovered and filled.missing is None and writer.hurried == 1


def store_down(monkeypatch, stored: int = 990, spooled: int = 5, **settings):
    """The store has 1..`stored` and takes nothing more; the writer holds the rest to 1000, `spooled` of it spooled."""
    monkeypatch.setattr("webapp.streams.STORED_WAIT_MIN_S", 0.2)
    store = PagedStore(1000)
    rt = runtime(store, **settings)
    rt.writer = writing(store, stored, 1000, spooled)
    rt.settings.store_batch_ms = 10
    return store, rt


def test_a_resume_the_store_has_not_taken_is_served_from_the_writer_s_spool_and_memory(monkeypatch):
    """The store down: what the writer holds waits in its spool and memory, and a resume is served from them
    (before: it was told 11..1000 were missing). The part below the spool comes from the store, which has it."""
    store, rt = store_down(monkeypatch)
    filled = fill_from_store(rt, opening(11, 1000), compile_patterns(["*"]))
    assert [e.seq for e in filled.events] == list(range(11, 1001))
    assert filled.recovered and filled.missing is None and filled.from_store is None
    assert store.limits  # 11..990 from the store
    store.limits.clear()
    filled = fill_from_store(rt, opening(993, 1000), compile_patterns(["*"]))  # within the spool: no store read
    assert [e.seq for e in filled.events] == list(range(993, 1001)) and filled.recovered
    assert store.limits == []


def test_a_resume_from_the_spool_keeps_the_newest_within_the_limit_and_its_topics(monkeypatch):
    _, rt = store_down(monkeypatch, stored=900, spooled=80, max_events=30)
    filled = fill_from_store(rt, opening(901, 1000), compile_patterns(["*"]))
    assert [e.seq for e in filled.events] == list(range(971, 1001))
    assert filled.missing == (901, 970) and not filled.recovered
    filled = fill_from_store(rt, opening(901, 1000), compile_patterns(["T.Y"]))
    assert filled.events == [] and filled.recovered  # nothing of T.Y in the range, and none missing


def test_a_resume_the_spool_cannot_vouch_for_reports_its_whole_range_missing(monkeypatch):
    """What the spool and memory hold must reach the newest seq asked for without a gap, and every row must
    still be there when read; else (as before) the range is reported missing, never given with a hole."""
    store, rt = store_down(monkeypatch)
    rt.writer.memory = [e for e in rt.writer.memory if e.seq != 998]  # 998 in neither (a batch between the two)
    filled = fill_from_store(rt, opening(11, 1000), compile_patterns(["*"]))
    assert [e.seq for e in filled.events] == [999, 1000]  # what is held without a gap up to the newest
    assert filled.missing == (11, 998) and not filled.recovered  # the store has not taken 998: it waits
    assert filled.from_store is None and store.limits == []
    rt.writer.memory = rt.writer.memory[:-1]  # 1000 in neither: nothing can be vouched for
    filled = fill_from_store(rt, opening(11, 1000), compile_patterns(["*"]))
    assert filled.events == [] and filled.missing == (11, 1000)
    store, rt = store_down(monkeypatch)
    rt.writer.spool.drained.add(1)  # 991..995 went into the store after the rows were listed
    filled = fill_from_store(rt, opening(11, 1000), compile_patterns(["*"]))
    assert filled.events == [] and filled.missing == (11, 1000)
    store, rt = store_down(monkeypatch)
    rt.store_holes = lambda: [(996, 997)]  # dropped for good: held in the sense that a resume reports it
    filled = fill_from_store(rt, opening(993, 1000), compile_patterns(["*"]))
    assert [e.seq for e in filled.events] == [998, 999, 1000] and filled.missing == (993, 997)


def test_a_store_whose_call_has_hung_is_not_read_the_part_older_than_the_spool_is_missing_at_once(monkeypatch):
    """A read would wait the driver's I/O time-out on a store that hangs (an outside audit: 35 s)."""
    store, rt = store_down(monkeypatch)
    rt.writer.hung = True
    filled = fill_from_store(rt, opening(11, 1000), compile_patterns(["*"]))
    assert [e.seq for e in filled.events] == list(range(991, 1001))
    assert filled.missing == (11, 990) and store.limits == []


def test_the_lowest_seq_spans_cover_without_a_gap_up_to_the_newest():
    assert held_down_to([(991, 995), (996, 996), (997, 1000)], 1000) == 991
    assert held_down_to([(991, 995), (997, 1000)], 1000) == 997
    assert held_down_to([(991, 995), (996, 999)], 1000) is None  # the newest is not held
    assert held_down_to([(1001, 1005), (990, 1002), (980, 985)], 1000) == 990
    assert held_down_to([(995, 995), (990, 996), (996, 1000)], 1000) == 990
    assert held_down_to([], 5) is None


def test_a_follower_s_resume_waits_for_the_leader_s_writer_through_the_store():
    """A cluster's follower does not write the store (its writer is fed nothing): it asks the store for its
    newest seq until the leader's batch is in."""
    store = PagedStore(1000)
    rt = runtime(store)
    rt.clustered, rt.settings.store_batch_ms = True, 100
    leader = writing(store, 990, 1000)
    rt.writer = Writer(PagedStore(0), [])  # the follower's own, idle
    gevent.spawn_later(0.1, leader.write)
    filled = fill_from_store(rt, opening(11, 1000), compile_patterns(["*"]))
    assert [e.seq for e in filled.events] == list(range(11, 1001)) and filled.missing is None
