"""/health and /metrics: read-only views over each part's state. The degraded verdict itself is
decided in handlers/health.py; nothing here changes a part."""

import logging
import time

import gevent

from handlers import roles
from handlers.health import HealthFacts, degraded_reasons
from webapp import accept, clientgate
from webapp.bus.redis import FAILURES as REDIS_FAILURES
from webapp.store.writer import STALLED_S

log = logging.getLogger(__name__)

VERSION = "0.3.0"


def store_health(rt) -> dict:
    if rt.store is None:
        return {"backend": "none", "ok": True, "pending": 0, "spooled": 0, "spooled_bytes": 0}
    w = rt.writer
    # a store that hangs rather than refuses: failing for /health long before the driver's I/O time-out
    stalled_s = w.store_stalled_s()
    stalled = f"the store has not answered for {stalled_s:.0f} s" if stalled_s >= STALLED_S else None
    # the spool's events wait for the store: behind a backlog, or in the batch whose insert hangs (counted
    # once it is a stall: every batch is in the spool while it is inserted). Before, a hung insert's batch
    # showed as neither pending nor spooled
    backlog = w._backlog or (w._unconfirmed and stalled is not None)
    return {
        "backend": rt.store_backend,
        "ok": w.ok and stalled is None and rt.boot_error is None and rt.state_error is None,
        "stalled_s": round(stalled_s, 3),
        "pending": len(w.pending),
        "spooled": rt.spool.events if backlog else 0,
        "spooled_bytes": rt.spool.bytes if backlog else 0,
        "spool_full": w.spool_full,
        "dropped": w.dropped,
        "written": w.written,
        "dead_letter": {"events": w.dead_letter_events, "batches": w.dead_letter_batches,
                        "last": w.dead_letter_last, "dir": w.dead_letter_dir},
        "last_error": stalled or w.last_error or rt.boot_error or rt.state_error,
        # times the ingest wrote the seq reservation itself (the background extension was late or failed)
        "reservation_sync_writes": rt.seq_state.sync_writes if rt.seq_state else 0,
    }


def metric_values(rt) -> dict:
    """Each part's own state as /metrics shows it (webapp.metrics.FROM_PARTS names and describes them),
    read at scrape time: nothing is copied ahead of a scrape."""
    store = store_health(rt)
    lag = stream_lag(rt)
    upstream = rt.upstream.state
    return {
        "events_in": dict(rt.ingest.numbered),
        "upstream_frames": rt.ingest.upstream_frames,
        "upstream_connected": upstream.connected,
        "upstream_subscriptions": len(subscriptions_health(rt)["subscriptions"]),
        "upstream_reconnects": upstream.reconnects,
        "clients": dict(rt.hub.clients_by_kind),
        "clients_by_mode": rt.hub.mode_counts(),
        "cache_items": len(rt.cache),
        "last_seq": rt.last_seq,
        "store_ok": store["ok"],
        "store_pending_events": store["pending"],
        "spool_bytes": rt.spool.bytes if rt.spool else 0,
        "spool_events": store["spooled"],
        "spool_full": store.get("spool_full", False),
        "store_dropped_events": store.get("dropped", 0),
        "store_dead_letter_events": store["dead_letter"]["events"] if "dead_letter" in store else 0,
        "seq_reservation_sync_writes": store.get("reservation_sync_writes", 0),
        "leader": rt.role in ("single", "leader"),
        "bus_ok": rt.bus.ok,
        "bus_lag_events": -1 if lag is None else lag,
        "bus_gaps": rt.bus.gaps,
        "snapshot_queued_bytes": rt.snapshots.queued(),
        "bus_resyncs": rt.resyncs,
        "bus_reader_waits": getattr(rt.bus, "waits_for_readers", 0),
        "bus_unreadable_entries": getattr(rt.bus, "unreadable", 0),  # the memory bus reads nothing it could not
        **accept.stats(),  # the worker's listeners (gunicorn's servers), not the app's
    }


def render_metrics(rt) -> bytes:
    return rt.metrics.render()


def stream_lag(rt) -> int | None:
    """Events this worker is behind on the stream (None when that cannot be known now).

    The leader: events it numbered that have not come back from the stream.
    A follower: the stream's newest seq minus the last one it read (one
    XREVRANGE; not asked while Redis is known to be down).
    """
    if not rt.clustered:
        return 0
    bus = rt.bus
    if rt.role == roles.LEADER:
        return roles.leader_lag(bus.assigned_seq, bus.last_seq, bus.outbox_events)
    if not bus.ok:
        return None
    try:
        answered, newest = within(HEALTH_REDIS_S, bus.newest)
    except REDIS_FAILURES as exc:
        log.debug("stream lag: %s", exc)
        return None
    if not answered:
        return None  # Redis stalled: /health answers now (it waited for the 5 s socket time-out, saying ok)
    return roles.follower_lag(newest, bus.last_seq, bus.epoch)


HEALTH_REDIS_S = 0.25
"""How long /health and /metrics wait for a Redis read of their own (redis-py drops a connection a time-out
cut off mid-reply)."""


def within(seconds: float, fn, *args):
    """(True, fn(*args)) if it returns within `seconds`, else (False, None)."""
    with gevent.Timeout(seconds, False):
        return True, fn(*args)
    return False, None


def bus_health(rt) -> dict:
    if not rt.clustered:
        return {"backend": "memory", "ok": True}
    bus = rt.bus
    return {
        "backend": "redis",
        "ok": bus.ok,
        "worker": bus.lease.holder,
        "lease_holder": rt.leadership.holder_cached,
        "last_seq": bus.last_seq,
        "lag": stream_lag(rt),
        "published": bus.published,
        "gaps": bus.gaps,
        "resyncs": rt.resyncs,
        "waits_for_readers": bus.waits_for_readers,
        "unreadable": bus.unreadable,
        "outbox": bus.outbox.status(),
        "last_error": bus.last_error,
    }


def bus_refusal(rt) -> str | None:
    """What Redis answered this worker's last bus call when it refused it (a follower whose stream key was
    not a stream read nothing and said ok: an outside audit); None when the last call went through. The
    reader clears it with each read that works."""
    error = getattr(rt.bus, "last_error", None) if rt.clustered else None
    return error[len("refused:"):].strip()[:200] if error and error.startswith("refused:") else None


def leader_known(rt) -> bool:
    return rt.leadership is not None and rt.leadership.holder_cached is not None


def outbox_facts(rt, now: float) -> dict:
    """How long the leader's outbox has been full and its appends failing (HealthFacts' words for them)."""
    if not rt.clustered or rt.role != roles.LEADER:
        return {}
    outbox = rt.bus.outbox
    full_s, failing_s = outbox.stuck_for(now)
    return {"outbox_full_s": full_s, "append_failing_s": failing_s, "append_error": outbox.append_error,
            "readers_wait_s": rt.bus.readers_wait_s()}


def subscriptions_health(rt) -> dict:
    answered, view = within(HEALTH_REDIS_S, rt.subs.view)  # a follower reads the cluster's view from Redis
    if not answered:
        view = {"subscribed": [], "clients": {}}
    return {"subscriptions": view["subscribed"], "subscription_clients": view["clients"],
            "managed_subscriptions": rt.subs.enabled}


def health(rt) -> dict:
    s = rt.upstream.state
    now = time.time()
    in_grace = now - rt.started_at < rt.settings.startup_grace_s
    store = store_health(rt)
    leading = rt.role in ("single", "leader")
    reasons = degraded_reasons(HealthFacts(
        leading=leading, upstream_connected=s.connected, in_grace=in_grace, shutting_down=rt.shutting_down,
        ready=rt.ready.is_set(), store_ok=store["ok"], spooled=store["spooled"], bus_ok=rt.bus.ok,
        bus_refused=bus_refusal(rt),
        follower_without_leader=rt.clustered and rt.role == "follower" and not leader_known(rt),
        tasks_down=tuple(rt.tasks.restarting), **outbox_facts(rt, now)))
    return {
        "status": "degraded" if reasons else "ok",
        "reasons": list(reasons),
        "version": VERSION,
        "uptime_s": round(now - rt.started_at, 3),
        "now": now,
        "epoch": rt.stream_epoch,
        "last_seq": rt.last_seq,
        "ready": rt.ready.is_set(),
        "role": rt.role,
        "bus": bus_health(rt),
        "upstream": {
            "url": s.url,
            "demo": rt.demo is not None,
            "connected": s.connected,
            "reconnects": s.reconnects,
            "last_message_at": s.last_message_at,
            "last_error": s.last_error,
            "events": rt.ingest.upstream_events,
            "parse_errors": rt.ingest.parse_errors,
            "oversize_frames": rt.ingest.oversize_frames,
            "statuses": list(rt.upstream_statuses),
            **subscriptions_health(rt),
        },
        "store": store,
        "tasks": rt.tasks.status(),
        "enrich": None if rt.enricher is None else {
            "queued": rt.ingest.queued, "unenriched": rt.ingest.unenriched, "busy": rt.enricher.busy,
            "errors": rt.enricher.errors, "timeouts": rt.enricher.timeouts,
            "cached_topics": rt.enricher.cached_topics, "connections": rt.enricher.connections},
        "clients": rt.hub.client_count,
        "accepting_clients": clientgate.is_open(),  # false: the lease holder with LEADER_ACCEPTS=false
        "clients_by_transport": dict(rt.hub.clients_by_kind),
        "clients_by_mode": rt.hub.mode_counts(),
        "delivered": rt.delivered,
        "cache": {"items": len(rt.cache)},
    }
