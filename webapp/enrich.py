"""Enrichment: ENRICH_SQL run per topic on the store, cached for ENRICH_TTL_MS, never waited on past ENRICH_TIMEOUT_MS.

Bounded on every side: at most ENRICH_CONCURRENCY queries run at once (a topic
that finds them all busy goes without, and is asked again with a later event),
the per-topic cache keeps the ENRICH_CACHE_MAX most recently used topics, and
the ingest queue in front of it (webapp/ingest.py) stops waiting when full.

On a ClickHouse server the queries run on connections kept between refreshes,
at most ENRICH_CONCURRENCY of them: a connection is made only when every kept
one is in use, is used by one refresh (one greenlet) at a time, and is closed,
never reused, once a query on it failed. On chDB every query already goes to
the store's one query lane (a session on a thread of its own): nothing to keep.
"""

import logging
import time
from collections import OrderedDict

import gevent
import gevent.pool

from handlers.enrich import FRESH, MISSING, Cached, freshness, row_to_enrichment
from handlers.sql import SqlError, check_read_only_sql, placeholder_names, render_params
from webapp.metrics import Metrics
from webapp.store.base import Store, StoreError

log = logging.getLogger(__name__)


class Enricher:
    """Per-topic results: fresh ones are used at once, stale ones are used while a
    refresh runs, missing ones are fetched with a bounded wait. Errors are counted
    and leave the event without enrichment; they never stop the feed."""

    def __init__(self, store: Store, sql: str, ttl_ms: int, timeout_ms: int, metrics: Metrics,
                 query_timeout_s: float = 5.0, cache_max: int = 10_000, concurrency: int = 4):
        self.store = store
        self.sql = sql
        self.ttl_ms = ttl_ms
        self.timeout_s = timeout_ms / 1000.0
        self.query_timeout_s = query_timeout_s
        self.uses_topic = "topic" in placeholder_names(sql)
        self.metrics = metrics
        self.cache_max = cache_max
        self._cache: OrderedDict[str, Cached] = OrderedDict()  # least recently used first
        self._queries = gevent.pool.Pool(concurrency)
        self._inflight: dict[str, gevent.Greenlet] = {}
        self._connect = getattr(store, "query_session", None)  # None: the store has no per-caller connection
        self._idle: list = []  # kept connections no refresh holds now
        self.connections = 0  # open now, held or idle (never above the concurrency)
        self.connects = 0  # made since start
        self._closed = False
        self.errors = 0
        self.timeouts = 0
        self.busy = 0  # topics that found every query slot taken
        self.evicted = 0

    def values_for(self, topics: set[str], wait: bool = True) -> dict[str, dict | None]:
        """The cached result of each topic; missing ones are fetched, waited for (bounded) only when `wait`."""
        now = int(time.time() * 1000)
        waiting = []
        for topic in topics:
            state = freshness(self._cache.get(topic), now, self.ttl_ms)
            if state != FRESH and topic not in self._inflight:
                if self._queries.full():
                    self.busy += 1
                    self.metrics.enrich_errors.labels("busy").inc()
                    continue
                self._inflight[topic] = self._queries.spawn(self._refresh, topic)
            if state == MISSING and wait and topic in self._inflight:
                waiting.append(self._inflight[topic])
        if waiting:
            done = gevent.joinall(waiting, timeout=self.timeout_s)
            if len(done) < len(waiting):
                self.timeouts += len(waiting) - len(done)
                self.metrics.enrich_errors.labels("timeout").inc(len(waiting) - len(done))
        out = {}
        for topic in topics:
            entry = self._cache.get(topic)
            if entry is not None:
                self._cache.move_to_end(topic)
                if entry.value:
                    out[topic] = entry.value
        return out

    def _remember(self, topic: str, entry: Cached) -> None:
        self._cache[topic] = entry
        self._cache.move_to_end(topic)
        while len(self._cache) > self.cache_max:
            self._cache.popitem(last=False)
            self.evicted += 1

    @property
    def cached_topics(self) -> int:
        return len(self._cache)

    def _refresh(self, topic: str) -> None:
        try:
            statement = check_read_only_sql(render_params(self.sql, {"topic": topic} if self.uses_topic else {}))
            result = self._query(statement)
            self._remember(topic, Cached(int(time.time() * 1000), row_to_enrichment(result.columns, result.rows)))
        except (SqlError, StoreError) as exc:
            self.errors += 1
            self.metrics.enrich_errors.labels("error").inc()
            if self.errors <= 3 or self.errors % 1000 == 0:
                log.warning("enrichment for %r failed (%d so far): %s", topic, self.errors, exc)
            # remember the failure for a TTL so a broken query is not retried per event
            self._remember(topic, Cached(int(time.time() * 1000), None))
        finally:
            self._inflight.pop(topic, None)

    def _query(self, statement: str):
        if self._connect is None:
            return self.store.query(statement, self.query_timeout_s, 1)
        if self._idle:
            session = self._idle.pop()
        else:
            session = self._connect()
            self.connections += 1
            self.connects += 1
        try:
            result = session.query(statement, self.query_timeout_s, 1)
        except BaseException:  # a failure, a time-out, a kill: the connection is in no known state
            self._discard(session)
            raise
        if self._closed:
            self._discard(session)
        else:
            self._idle.append(session)
        return result

    def _discard(self, session) -> None:
        self.connections -= 1
        session.close()

    def close(self, timeout_s: float = 2.0) -> None:
        """Shutdown: stop the refreshes still running (each closes its connection), close the kept ones."""
        self._closed = True
        self._queries.kill(timeout=timeout_s)
        while self._idle:
            self._discard(self._idle.pop())
