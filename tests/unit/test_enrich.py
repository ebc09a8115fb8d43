"""Enrichment is bounded on every side: query slots, cached topics, and the ingest queue in front of it."""

import gevent
import gevent.event

from webapp.enrich import Enricher
from webapp.ingest import Ingest
from webapp.metrics import Metrics
from webapp.store.base import QueryResult, StoreError


class SlowStore:
    """Answers `SELECT ... %(topic)s` with one row, after `gate` opens (never, unless the test opens it)."""

    def __init__(self, answer_at_once=False):
        self.gate = gevent.event.Event()
        if answer_at_once:
            self.gate.set()
        self.running = 0
        self.most_running = 0
        self.asked = []

    def query(self, sql, timeout_s, max_rows):
        self.asked.append(sql)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            self.gate.wait()
        finally:
            self.running -= 1
        return QueryResult([("t", "String")], [[sql.rsplit("'", 2)[1]]], False, 0.1)


def enricher(store, timeout_ms=5, **kw):
    return Enricher(store, "SELECT %(topic)s AS t", ttl_ms=60_000, timeout_ms=timeout_ms, metrics=Metrics(), **kw)


def test_no_more_queries_run_at_once_than_the_concurrency_and_the_rest_go_without():
    store = SlowStore()
    e = enricher(store, concurrency=3)
    out = e.values_for({f"T.{i}" for i in range(50)})
    gevent.sleep(0.01)
    assert out == {} and store.most_running == 3 and e.busy == 47


def test_the_cache_keeps_the_most_recently_used_topics():
    store = SlowStore(answer_at_once=True)
    e = enricher(store, cache_max=2)
    e.values_for({"A"})
    e.values_for({"B"})
    assert e.values_for({"A"}) == {"A": {"t": "A"}}  # A is now the most recent
    e.values_for({"C"})  # evicts B
    assert e.cached_topics == 2 and e.evicted == 1
    asked = len(store.asked)
    e.values_for({"A", "C"})
    assert len(store.asked) == asked  # both still cached
    e.values_for({"B"})
    assert len(store.asked) == asked + 1  # B was forgotten: asked again


def test_without_waiting_a_missing_topic_is_asked_for_but_not_waited_on():
    store = SlowStore()
    e = enricher(store)
    with gevent.Timeout(1):
        assert e.values_for({"A"}, wait=False) == {}
    gevent.sleep(0)
    assert store.running == 1


def test_a_full_ingest_queue_stops_waiting_for_enrichment_and_loses_no_frame():
    store = SlowStore()  # never answers
    published = []
    ingest = Ingest(published.extend, Metrics(), topic_fields=("sym",), max_frame_bytes=1 << 20,
                    enricher=enricher(store, concurrency=1000), queue_max=10)
    frames = [(b'{"sym": "S%d", "n": %d}' % (i, i), False) for i in range(200)]
    ingest.submit_frames(frames, 1000)
    runner = gevent.spawn(ingest.run)
    with gevent.Timeout(5):
        while len(published) < 200:
            gevent.sleep(0.001)
    runner.kill()
    assert [e.seq for e in published] == list(range(1, 201))
    assert [e.data["n"] for e in published] == list(range(200))
    assert ingest.unenriched >= 190  # only the last few frames, under the bound, waited (5 ms each)


def test_an_ingest_run_that_dies_while_waiting_leaves_its_frame_queued_for_the_next_run():
    store = SlowStore()
    published = []
    slow = Enricher(store, "SELECT %(topic)s AS t", ttl_ms=60_000, timeout_ms=5_000, metrics=Metrics())
    ingest = Ingest(published.extend, Metrics(), topic_fields=("sym",), max_frame_bytes=1 << 20, enricher=slow)
    ingest.submit_frames([(b'{"sym": "A", "n": 0}', False)], 1000)
    first = gevent.spawn(ingest.run)
    gevent.sleep(0.01)  # waiting for the enrichment
    first.kill(ValueError("a bug"))
    assert published == [] and ingest.queued == 1
    store.gate.set()
    second = gevent.spawn(ingest.run)
    with gevent.Timeout(5):
        while not published:
            gevent.sleep(0.001)
    gevent.sleep(0.01)
    second.kill()
    assert [(e.seq, e.data["n"], e.enrichment) for e in published] == [(1, 0, {"t": "A"})]


class Session:
    """A connection at the store's boundary: answers after `delay_s` (a minute for topics named
    `slow*`), fails for topics named `bad*`, and records any use it must never see (two greenlets at once, a query after close)."""

    def __init__(self, store):
        self.store = store
        self.in_use = False
        self.closed = False
        self.queries = 0

    def query(self, sql, timeout_s, max_rows):
        if self.in_use or self.closed:
            self.store.misuse.append((self, "in use" if self.in_use else "closed"))
        self.in_use = True
        try:
            topic = sql.rsplit("'", 2)[1]
            gevent.sleep(60 if topic.startswith("slow") else self.store.delay_s)
            self.queries += 1
            if topic.startswith("bad"):
                raise StoreError(f"no enrichment for {topic}")
            return QueryResult([("t", "String")], [[topic]], False, 0.1)
        finally:
            self.in_use = False

    def close(self):
        self.closed = True


class SessionStore:
    """A store with per-caller connections (like the ClickHouse server backend)."""

    def __init__(self, delay_s=0.002):
        self.delay_s = delay_s
        self.sessions: list[Session] = []
        self.misuse = []

    def query_session(self):
        self.sessions.append(Session(self))
        return self.sessions[-1]

    def query(self, sql, timeout_s, max_rows):
        raise AssertionError("a store with sessions is asked through them")


def refresh_all(e, topics):
    """Ask for every topic until each is cached (those that found every slot busy are asked again)."""
    with gevent.Timeout(10):
        while e.cached_topics < len(topics):
            e.values_for(set(topics), wait=False)
            gevent.sleep(0.001)


def test_refreshes_keep_at_most_concurrency_connections_each_used_by_one_refresh_at_a_time():
    store = SessionStore()
    e = enricher(store, concurrency=3)
    refresh_all(e, [f"T.{i}" for i in range(60)])
    assert len(store.sessions) == 3 and e.connects == 3 and e.connections == 3
    assert sum(s.queries for s in store.sessions) == 60 and store.misuse == []
    assert not any(s.closed for s in store.sessions)


def test_a_connection_whose_query_failed_is_closed_and_never_used_again():
    store = SessionStore()
    e = enricher(store, concurrency=1, timeout_ms=5_000)  # each answer is waited for
    assert e.values_for({"A"}) == {"A": {"t": "A"}}
    first = store.sessions[0]
    assert e.values_for({"bad.1"}) == {} and e.errors == 1
    assert first.closed and e.connections == 0
    assert e.values_for({"B"}) == {"B": {"t": "B"}}
    assert len(store.sessions) == 2 and store.sessions[1] is not first and first.queries == 2
    assert store.misuse == []


def test_closing_closes_the_kept_connections_and_the_running_ones():
    store = SessionStore()
    e = enricher(store, concurrency=4, timeout_ms=5_000)
    assert e.values_for({"A", "B"}) == {"A": {"t": "A"}, "B": {"t": "B"}}  # two connections, kept
    e.values_for({"slow.1"}, wait=False)
    gevent.sleep(0.01)  # one refresh holds one of them, waiting for the answer; the other is idle
    assert len(store.sessions) == 2 and e.connections == 2 and not any(s.closed for s in store.sessions)
    assert [s.in_use for s in store.sessions].count(True) == 1
    with gevent.Timeout(5):
        e.close()
    assert all(s.closed for s in store.sessions) and e.connections == 0
