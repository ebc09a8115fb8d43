"""Prometheus metrics, one registry per app so tests can build many apps."""

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (re-exported for the route)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# *_created series double the output and nobody graphs them
disable_created_metrics()


class Metrics:
    """Every metric the relay exports; names are prefixed relayhouse_."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events_in = Counter("relayhouse_events_in", "Events numbered by this relay", ["source"], registry=r)
        self.frames_in = Counter("relayhouse_upstream_frames", "Frames received from the upstream", registry=r)
        self.parse_errors = Counter("relayhouse_upstream_parse_errors", "Upstream frames that were not JSON (kept as raw events)", registry=r)
        self.oversize_frames = Counter("relayhouse_upstream_oversize_frames", "Upstream frames skipped for exceeding UPSTREAM_MAX_FRAME_BYTES", registry=r)
        self.upstream_connected = Gauge("relayhouse_upstream_connected", "1 while the upstream connection is up", registry=r)
        self.upstream_subscriptions = Gauge("relayhouse_upstream_subscriptions", "Patterns the upstream is subscribed to "
                                            "by the relay (UPSTREAM_SUBSCRIBE)", registry=r)
        self.upstream_reconnects = Counter("relayhouse_upstream_reconnects", "Upstream reconnect attempts", registry=r)
        self.events_out = Counter("relayhouse_events_out", "Event deliveries to clients", ["transport"], registry=r)
        self.frames_out = Counter("relayhouse_frames_out", "Frames written to clients", ["transport"], registry=r)
        self.clients = Gauge("relayhouse_clients", "Connected clients", ["transport"], registry=r)
        self.queue_drops = Counter("relayhouse_queue_drops", "Events dropped from a slow client's backlog", ["transport"], registry=r)
        self.slow_consumers = Counter("relayhouse_slow_consumer_closes", "Clients closed for falling behind", ["transport"], registry=r)
        self.conflated_events = Counter("relayhouse_conflated_events", "Events replaced by a newer one of their topic before "
                                        "delivery (max_hz, on_slow=conflate); once per group of clients sharing a rate", registry=r)
        self.clients_by_mode = Gauge("relayhouse_clients_by_mode", "Connected clients by delivery mode: live (every event), "
                                     "rate (max_hz), conflated (slow, on_slow=conflate)", ["mode"], registry=r)
        self.client_errors = Counter("relayhouse_client_frame_errors", "Client frames that could not be used", registry=r)
        self.cache_items = Gauge("relayhouse_cache_items", "Events held in the cache", registry=r)
        self.last_seq = Gauge("relayhouse_last_seq", "Last seq assigned", registry=r)
        self.store_rows = Counter("relayhouse_store_rows_written", "Events inserted into the store", registry=r)
        self.store_batch_rows = Histogram("relayhouse_store_batch_rows", "Events per store insert", registry=r,
                                          buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000))
        self.store_insert_seconds = Histogram("relayhouse_store_insert_seconds", "Store insert latency", registry=r,
                                              buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
        self.store_ok = Gauge("relayhouse_store_ok", "1 while the store accepts writes", registry=r)
        self.store_pending = Gauge("relayhouse_store_pending_events", "Events waiting for the next store batch", registry=r)
        self.spool_bytes = Gauge("relayhouse_spool_bytes", "Bytes in the write spool", registry=r)
        self.spool_events = Gauge("relayhouse_spool_events", "Events in the write spool awaiting the store", registry=r)
        self.spool_full = Gauge("relayhouse_spool_full", "1 while the spool cannot take more", registry=r)
        self.store_dropped = Gauge("relayhouse_store_dropped_events", "Events neither spooled nor stored (spool full during an outage)", registry=r)
        self.query_errors = Counter("relayhouse_query_errors", "/query and /history failures", ["kind"], registry=r)
        self.enrich_errors = Counter("relayhouse_enrich_errors", "Enrichment queries that failed or timed out", ["kind"], registry=r)
        self.leader = Gauge("relayhouse_leader", "1 while this worker holds the upstream (always 1 without Redis)", registry=r)
        self.bus_ok = Gauge("relayhouse_bus_ok", "1 while the event bus (Redis) answers", registry=r)
        self.bus_lag = Gauge("relayhouse_bus_lag_events", "Events this worker is behind on the stream (leader: numbered, not yet "
                             "read back; follower: the stream's newest minus its last read; -1 unknown)", registry=r)
        self.bus_unreadable = Counter("relayhouse_bus_unreadable_entries", "Stream entries that could not be read "
                                      "(skipped)", registry=r)
        self.bus_gaps = Gauge("relayhouse_bus_gaps", "Seq jumps seen on the bus (events trimmed before this worker read them)", registry=r)
        self.task_crashes = Counter("relayhouse_task_crashes", "Background loops that died of an exception (then restarted, "
                                    "or the worker exited)", ["task"], registry=r)
        self.dead_letter_events = Gauge("relayhouse_store_dead_letter_events", "Events the store refused for good, written to "
                                        "DATA_DIR/dead-letter", registry=r)
        self.bound_hits = Counter("relayhouse_bound_hits", "Inputs refused or cut short by a configured bound", ["bound"], registry=r)
        self.flush_seconds = Histogram(
            "relayhouse_hub_flush_seconds", "Time to hand one batch to every client", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )

    def delivered(self, transport: str, frames: int, events: int) -> None:
        self.frames_out.labels(transport).inc(frames)
        self.events_out.labels(transport).inc(events)

    def render(self) -> bytes:
        return generate_latest(self.registry)
