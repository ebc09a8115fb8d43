"""Enrichment: ENRICH_SQL run per topic on the store, cached for ENRICH_TTL_MS, never waited on past ENRICH_TIMEOUT_MS."""

import logging
import time

import gevent

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
                 query_timeout_s: float = 5.0):
        self.store = store
        self.sql = sql
        self.ttl_ms = ttl_ms
        self.timeout_s = timeout_ms / 1000.0
        self.query_timeout_s = query_timeout_s
        self.uses_topic = "topic" in placeholder_names(sql)
        self.metrics = metrics
        self._cache: dict[str, Cached] = {}
        self._inflight: dict[str, gevent.Greenlet] = {}
        self.errors = 0
        self.timeouts = 0

    def values_for(self, topics: set[str]) -> dict[str, dict | None]:
        now = int(time.time() * 1000)
        waiting = []
        for topic in topics:
            state = freshness(self._cache.get(topic), now, self.ttl_ms)
            if state != FRESH and topic not in self._inflight:
                self._inflight[topic] = gevent.spawn(self._refresh, topic)
            if state == MISSING:
                waiting.append(self._inflight[topic])
        if waiting:
            done = gevent.joinall(waiting, timeout=self.timeout_s)
            if len(done) < len(waiting):
                self.timeouts += len(waiting) - len(done)
                self.metrics.enrich_errors.labels("timeout").inc(len(waiting) - len(done))
        out = {}
        for topic in topics:
            entry = self._cache.get(topic)
            if entry is not None and entry.value:
                out[topic] = entry.value
        return out

    def _refresh(self, topic: str) -> None:
        try:
            statement = check_read_only_sql(render_params(self.sql, {"topic": topic} if self.uses_topic else {}))
            result = self.store.query(statement, self.query_timeout_s, 1)
            self._cache[topic] = Cached(int(time.time() * 1000), row_to_enrichment(result.columns, result.rows))
        except (SqlError, StoreError) as exc:
            self.errors += 1
            self.metrics.enrich_errors.labels("error").inc()
            if self.errors <= 3 or self.errors % 1000 == 0:
                log.warning("enrichment for %r failed (%d so far): %s", topic, self.errors, exc)
            # remember the failure for a TTL so a broken query is not retried per event
            self._cache[topic] = Cached(int(time.time() * 1000), None)
        finally:
            self._inflight.pop(topic, None)

