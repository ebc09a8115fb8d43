"""fill_from_store with a store stand-in: pages, the per-worker bound on concurrent resumes, and a client that
left before or during its turn (webapp/streams.py)."""

from __future__ import annotations

from types import SimpleNamespace

import gevent
import gevent.lock

from handlers.events import make_event
from handlers.topics import compile_patterns
from webapp.streams import Opening, fill_from_store


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


class Writer:
    """The store writer's part a resume looks at: events it holds that the store lacks (ascending)."""

    def __init__(self, store: PagedStore, held: list):
        self.store, self.held, self.hurried = store, held, 0

    def stored_through(self, seq: int) -> bool:
        return not (self.held and self.held[0].seq <= seq)

    def hurry(self) -> None:
        self.hurried += 1

    def write(self) -> None:
        self.store.events += self.held
        self.held = []


def writing(store: PagedStore, stored: int, total: int) -> Writer:
    """The store has rows 1..`stored`; the writer holds the rest up to `total`."""
    held = store.events[stored:total]
    del store.events[stored:]
    return Writer(store, held)


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


def test_a_resume_the_store_cannot_take_in_time_reports_its_whole_range_missing(monkeypatch):
    """The store down: what the writer holds waits in its spool. The resume is told, not given a hole."""
    monkeypatch.setattr("webapp.streams.STORED_WAIT_MIN_S", 0.2)
    store = PagedStore(1000)
    rt = runtime(store)
    rt.writer = writing(store, 990, 1000)
    rt.settings.store_batch_ms = 10
    filled = fill_from_store(rt, opening(11, 1000), compile_patterns(["*"]))
    assert filled.events == [] and filled.missing == (11, 1000) and not filled.recovered
    assert filled.from_store is None and store.limits == []


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
