"""/cache: recent events, search, by seq, stats, clear and runtime limits."""

from flask import Blueprint, request

from handlers import jsonx
from handlers.entitlements import pattern_within
from handlers.params import MAX_SEQ, ParamError, int_param
from handlers.topics import compile_patterns
from webapp.auth import ADMIN, CLIENT, access, request_scope, scoped_topics
from webapp.responses import event_response, events_response, json_error, json_response
from webapp.routes import not_json_content, runtime

bp = Blueprint("cache", __name__, url_prefix="/cache")

TTL_RANGE = (1, 31_536_000)
MAX_ITEMS_RANGE = (1, 10_000_000)


@bp.get("/stats")
@access(CLIENT)
def stats():
    rt = runtime()
    return json_response(rt.cache.stats(rt.now_ms()))


@bp.get("/recent")
@access(CLIENT)
def recent():
    rt = runtime()
    limit = int_param(request.args, "limit", 50, 1, 1000)
    matcher = compile_patterns(scoped_topics(request.args, request_scope(request, rt.settings)))
    return events_response(rt.cache.recent(limit, rt.now_ms(), matcher))


@bp.get("/latest")
@access(CLIENT)
def latest():
    """The newest cached event of each topic matching `topics` (contract §12), ascending seq."""
    rt = runtime()
    limit = int_param(request.args, "limit", None, *MAX_ITEMS_RANGE)  # default: every topic held
    matcher = compile_patterns(scoped_topics(request.args, request_scope(request, rt.settings)))
    return events_response(rt.cache.latest(rt.now_ms(), matcher, limit))


@bp.get("/search")
@access(CLIENT)
def search():
    rt = runtime()
    args = request.args
    limit = int_param(args, "limit", 50, 1, 1000)
    matcher = compile_patterns(scoped_topics(args, request_scope(request, rt.settings)))
    q = args.get("q") or None
    field, value = args.get("field") or None, args.get("value")
    if field is not None and value is None:
        raise ParamError("'value' is required with 'field'")
    if value is not None and field is None:
        raise ParamError("'field' is required with 'value'")
    if field is not None and any(part == "" for part in field.split(".")):
        raise ParamError("'field' must be a dotted path inside an event's data, like sym or bid.p")
    return events_response(rt.cache.search(rt.now_ms(), limit, matcher, q=q, field=field, value=value))


@bp.get("/events/<seq>")
@access(CLIENT)
def event_by_seq(seq: str):
    rt = runtime()
    number = int_param({"seq": seq}, "seq", None, 0, MAX_SEQ)
    event = rt.cache.get(number, rt.now_ms())
    scope = request_scope(request, rt.settings)
    if event is None or (scope is not None and not pattern_within(event.topic, scope)):
        return json_error(404, f"event {number} is not in the cache")
    return event_response(event)


@bp.delete("")
@access(ADMIN)
def clear():
    return json_response({"cleared": runtime().cache.clear()})


@bp.get("/config")
@access(CLIENT)
def get_config():
    cache = runtime().cache
    return json_response({"ttl_seconds": cache.ttl_s, "max_items": cache.max_items})


@bp.put("/config")
@access(ADMIN)
def put_config():
    rt = runtime()
    refused = not_json_content()
    if refused is not None:
        return refused
    try:
        body = jsonx.loads(request.get_data(cache=False))  # strictly, as /publish: deep nesting was a 500
    except jsonx.NotJSON:
        body = None
    if not isinstance(body, dict):
        return json_error(400, "body must be a JSON object with ttl_seconds and/or max_items")
    unknown = sorted(set(body) - {"ttl_seconds", "max_items"})
    if unknown:
        return json_error(400, f"unknown keys: {', '.join(unknown)}")
    if not body:
        return json_error(400, "give ttl_seconds and/or max_items")
    changes = {}
    for key, (lo, hi) in (("ttl_seconds", TTL_RANGE), ("max_items", MAX_ITEMS_RANGE)):
        if key in body:
            value = body[key]
            if type(value) is not int or not lo <= value <= hi:
                return json_error(400, f"'{key}' must be an integer in {lo}..{hi}")
            changes[key] = value
    rt.cache.configure(rt.now_ms(), ttl_s=changes.get("ttl_seconds"), max_items=changes.get("max_items"))
    return json_response({"ttl_seconds": rt.cache.ttl_s, "max_items": rt.cache.max_items})
