"""Enrichment is bounded on every side: query slots, cached topics, and the ingest queue in front of it."""

import gevent
import gevent.event

from webapp.enrich import Enricher
from webapp.ingest import Ingest
from webapp.metrics import Metrics
from webapp.store.base import QueryResult


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


def enricher(store, **kw):
    return Enricher(store, "SELECT %(topic)s AS t", ttl_ms=60_000, timeout_ms=5, metrics=Metrics(), **kw)


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
