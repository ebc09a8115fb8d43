"""/history: stored events by topic patterns, seq and time ranges; every value bound by the driver."""

from flask import Blueprint, request

from handlers.params import MAX_SEQ, int_param
from handlers.resume import add_hole
from webapp.auth import CLIENT, access, request_scope, scoped_topics
from webapp.responses import events_response, json_error
from webapp.routes import NO_STORE, runtime, store_failure
from webapp.store.base import StoreError, topic_condition

bp = Blueprint("history", __name__)

MAX_TS_MS = 253_402_300_799_999  # 9999-12-31


@bp.get("/history")
@access(CLIENT)
def history():
    rt = runtime()
    args = request.args
    limit = int_param(args, "limit", 100, 1, rt.settings.history_max_limit)
    since = int_param(args, "since", None, 0, MAX_SEQ)
    from_ts = int_param(args, "from_ts", None, 0, MAX_TS_MS)
    to_ts = int_param(args, "to_ts", None, 0, MAX_TS_MS)
    patterns = scoped_topics(args, request_scope(request, rt.settings))
    if from_ts is not None and to_ts is not None and from_ts > to_ts:
        return json_error(400, "'from_ts' is after 'to_ts'")
    if rt.store is None:
        return json_error(503, NO_STORE)
    params: dict = {"limit": limit}
    where = [topic_condition(patterns, params)]
    if since is not None:
        params["since"] = since
        where.append("seq > %(since)s")
    if from_ts is not None:
        params["from_ts"] = from_ts
        where.append("ts >= %(from_ts)s AND date >= toDate(intDiv(%(from_ts)s, 1000))")
    if to_ts is not None:
        params["to_ts"] = to_ts
        where.append("ts <= %(to_ts)s AND date <= toDate(intDiv(%(to_ts)s, 1000))")
    # with since: the first `limit` after it; without: the most recent `limit`
    order = "ASC" if since is not None else "DESC"
    clauses = "WHERE " + " AND ".join(where) + f" ORDER BY seq {order} LIMIT %(limit)s"
    try:
        events = rt.store.select_events(clauses, params)
    except StoreError as exc:
        return store_failure(exc, refused_status=500)
    events = events if order == "ASC" else events[::-1]
    return events_response(events, missing_within(rt, since, events, limit, timed=from_ts is not None
                                                  or to_ts is not None))


def missing_within(rt, since: int | None, events: list, limit: int, timed: bool) -> list[tuple[int, int]]:
    """The seq ranges the store lacks for good (dead letters, drops while the spool was full, a crash's
    numbered-but-lost seqs, a cluster's recorded holes) within what this answer covers: after `since` (or
    from its first event) up to its last event when it is cut at `limit` or by time, else up to the
    relay's last seq. A range may or may not have held events of the asked topics. A resume said so; a
    /history over the same seqs went on silently (an outside audit)."""
    if events:
        low = since + 1 if since is not None and not timed else events[0].seq
        high = events[-1].seq if timed or (since is not None and len(events) >= limit) else rt.last_seq
    elif since is not None and not timed:
        low, high = since + 1, rt.last_seq
    else:
        return []
    ranges = list(rt.store_holes())
    if rt.lost_range:  # saved among the holes too (webapp/recovery.py): merged, not listed twice
        ranges = add_hole(ranges, *rt.lost_range)
    return sorted((max(lo, low), min(hi, high)) for lo, hi in ranges if lo <= high and hi >= low)
