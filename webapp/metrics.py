"""Prometheus metrics, one registry per app so tests can build many apps.

Two kinds, by where the number lives:

- what happens on a path (a delivery, a flush, an insert, a refusal) is a
  Counter or Histogram incremented where it happens;
- what a part keeps anyway (its own counts, sizes and flags) is read from the
  part when /metrics is scraped, by one collector over `FROM_PARTS`: nothing
  is copied into a gauge ahead of time, and no absolute count is diffed into
  counter increments.
"""

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (re-exported for the route)
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# *_created series double the output and nobody graphs them
disable_created_metrics()

PREFIX = "relayhouse_"
COUNTER, GAUGE = "counter", "gauge"

# The parts' own state, read at scrape time: name (after relayhouse_; a counter's samples get
# _total) -> (type, help, label names). webapp/health.py `metric_values` gives each its value.
FROM_PARTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "events_in": (COUNTER, "Events numbered by this relay", ("source",)),
    "upstream_frames": (COUNTER, "Frames received from the upstream", ()),
    "upstream_connected": (GAUGE, "1 while the upstream connection is up", ()),
    "upstream_subscriptions": (GAUGE, "Patterns the upstream is subscribed to by the relay (UPSTREAM_SUBSCRIBE)", ()),
    "upstream_reconnects": (COUNTER, "Upstream reconnect attempts", ()),
    "clients": (GAUGE, "Connected clients", ("transport",)),
    "clients_by_mode": (GAUGE, "Connected clients by delivery mode: live (every event), rate (max_hz), "
                        "conflated (slow, on_slow=conflate)", ("mode",)),
    "cache_items": (GAUGE, "Events held in the cache", ()),
    "last_seq": (GAUGE, "Last seq assigned", ()),
    "store_ok": (GAUGE, "1 while the store accepts writes", ()),
    "store_pending_events": (GAUGE, "Events waiting for the next store batch", ()),
    "spool_bytes": (GAUGE, "Bytes in the write spool", ()),
    "spool_events": (GAUGE, "Events in the write spool awaiting the store", ()),
    "spool_full": (GAUGE, "1 while the spool cannot take more", ()),
    "store_dropped_events": (GAUGE, "Events neither spooled nor stored (spool full during an outage)", ()),
    "store_dead_letter_events": (GAUGE, "Events the store refused for good, written to DATA_DIR/dead-letter", ()),
    "seq_reservation_sync_writes": (COUNTER, "Times the ingest wrote the seq reservation to DATA_DIR itself, on the "
                                    "hub, because the background extension was late or failed", ()),
    "leader": (GAUGE, "1 while this worker holds the upstream (always 1 without Redis)", ()),
    "bus_ok": (GAUGE, "1 while the event bus (Redis) answers", ()),
    "bus_lag_events": (GAUGE, "Events this worker is behind on the stream (leader: numbered, not yet read back; "
                       "follower: the stream's newest minus its last read; -1 unknown)", ()),
    "bus_gaps": (GAUGE, "Seq jumps seen on the bus (events trimmed before this worker read them)", ()),
    "snapshot_queued_bytes": (GAUGE, "Bytes of resumes' snapshots this worker holds queued for its clients (a resume "
                              "with since waits while they pass SNAPSHOT_QUEUE_MAX_BYTES)", ()),
    "bus_resyncs": (COUNTER, "Bus gaps after which this worker closed its clients (reason resync) to resume from "
                    "the store", ()),
    "bus_reader_waits": (COUNTER, "Times the leader's publisher waited for a reader more than half of STREAM_MAXLEN "
                         "behind (so the stream's cap trims nothing unread)", ()),
    "bus_unreadable_entries": (COUNTER, "Stream entries that could not be read (skipped)", ()),
    "handshakes_in_flight": (GAUGE, "Connections of this worker between accept and the end of their first request "
                             "(at most HANDSHAKE_CONCURRENCY per listener)", ()),
    "handshakes_in_flight_max": (GAUGE, "The most handshakes one listener of this worker ran at once since it started", ()),
    "accept_waiting": (GAUGE, "Accepted connections waiting for a handshake slot (no greenlet yet)", ()),
    "accept_waiting_max": (GAUGE, "The most connections one listener of this worker held waiting since it started", ()),
    "handshakes_slow": (COUNTER, "Handshakes that held their slot past HANDSHAKE_SLOT_MAX_S (a slow client): the "
                        "slot went to the next waiting connection, the handshake went on", ()),
    "accept_dropped": (COUNTER, "Accepted connections closed without a handshake: expired (waited past "
                       "ACCEPT_WAIT_TIMEOUT_S, answered 503), gone (the client closed while waiting)", ("reason",)),
}

# a value: a number (True/False count as 1/0), or for a labelled metric {label value: number}
Value = float | bool | Mapping[str, float]


def family(name: str, value: Value | None) -> Metric:
    """The metric family of FROM_PARTS[name] holding `value` (no sample when None: for describe())."""
    kind, doc, labels = FROM_PARTS[name]
    made = (CounterMetricFamily if kind == COUNTER else GaugeMetricFamily)(PREFIX + name, doc, labels=labels)
    if value is None:
        return made
    if labels:
        for label, number in value.items():
            made.add_metric([label], float(number))
    else:
        made.add_metric([], float(value))
    return made


class PartsCollector(Collector):
    """Every FROM_PARTS metric, from `read()` (one call per scrape, so the values are of one moment)."""

    def __init__(self, read: Callable[[], Mapping[str, Value]]):
        self._read = read

    def describe(self) -> Iterable[Metric]:
        # names only: the registry checks them against the other metrics without reading the parts
        return [family(name, None) for name in FROM_PARTS]

    def collect(self) -> Iterable[Metric]:
        values = self._read()
        return [family(name, values[name]) for name in FROM_PARTS]


class Metrics:
    """Every metric the relay exports; names are prefixed relayhouse_."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.parse_errors = Counter("relayhouse_upstream_parse_errors", "Upstream frames that were not JSON (kept as raw events)", registry=r)
        self.oversize_frames = Counter("relayhouse_upstream_oversize_frames", "Upstream frames skipped for exceeding UPSTREAM_MAX_FRAME_BYTES", registry=r)
        self.events_out = Counter("relayhouse_events_out", "Event deliveries to clients", ["transport"], registry=r)
        self.frames_out = Counter("relayhouse_frames_out", "Frames written to clients", ["transport"], registry=r)
        self.queue_drops = Counter("relayhouse_queue_drops", "Events dropped from a slow client's backlog", ["transport"], registry=r)
        self.slow_consumers = Counter("relayhouse_slow_consumer_closes", "Clients closed for falling behind", ["transport"], registry=r)
        self.conflated_events = Counter("relayhouse_conflated_events", "Events replaced by a newer one of their topic before "
                                        "delivery (max_hz, on_slow=conflate); once per group of clients sharing a rate", registry=r)
        self.client_errors = Counter("relayhouse_client_frame_errors", "Client frames that could not be used", registry=r)
        self.store_rows = Counter("relayhouse_store_rows_written", "Events inserted into the store", registry=r)
        self.store_batch_rows = Histogram("relayhouse_store_batch_rows", "Events per store insert", registry=r,
                                          buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000))
        self.store_insert_seconds = Histogram("relayhouse_store_insert_seconds", "Store insert latency", registry=r,
                                              buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
        self.query_errors = Counter("relayhouse_query_errors", "/query and /history failures", ["kind"], registry=r)
        self.enrich_errors = Counter("relayhouse_enrich_errors", "Enrichment queries that failed or timed out", ["kind"], registry=r)
        self.task_crashes = Counter("relayhouse_task_crashes", "Background loops that died of an exception (then restarted, "
                                    "or the worker exited)", ["task"], registry=r)
        self.bound_hits = Counter("relayhouse_bound_hits", "Inputs refused or cut short by a configured bound", ["bound"], registry=r)
        self.flush_seconds = Histogram(
            "relayhouse_hub_flush_seconds", "Time to hand one batch to every client", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )

    def read_parts(self, read: Callable[[], Mapping[str, Value]]) -> None:
        """Export FROM_PARTS from `read()` at every scrape (see PartsCollector)."""
        self.registry.register(PartsCollector(read))

    def delivered(self, transport: str, frames: int, events: int) -> None:
        self.frames_out.labels(transport).inc(frames)
        self.events_out.labels(transport).inc(events)

    def render(self) -> bytes:
        return generate_latest(self.registry)
