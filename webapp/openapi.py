"""The OpenAPI 3 description of every HTTP route, served at /openapi.json.

Every rule of the app's URL map is here with its methods, parameters, request
body and every status it can answer, each with the schema of what the app
really sends (tests/integration/test_openapi.py walks the URL map, and runs
schemathesis over the live app against this document). The WebSocket routes
are described as far as HTTP goes: their refusals before the upgrade, and the
101; their frames are in docs/api.md and docs/polygon.md.
"""

from typing import Any

from handlers.clients import LIMIT_DEFAULT, LIMIT_MAX, MODES, PATTERNS_SHOWN
from webapp.health import VERSION
from webapp.settings import Settings

MAX_SEQ = 2**63 - 1
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31, as /history checks
MARKETS = ["stocks", "options", "forex", "crypto", "indices"]

JSON = "application/json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def _ok(description: str, schema: dict, media: str = JSON) -> dict:
    return {"description": description, "content": {media: {"schema": schema}}}


def _int(name: str, where: str, lo: int, hi: int, doc: str, *, required: bool = False) -> dict:
    parameter = {"name": name, "in": where, "required": required, "description": doc,
                 "schema": {"type": "integer", "minimum": lo, "maximum": hi}}
    if where == "query" and not required:
        parameter["allowEmptyValue"] = True  # `limit=` is taken as not given, like every optional parameter
    return parameter


def _str(name: str, doc: str, *, required: bool = False, max_length: int | None = None) -> dict:
    schema: dict[str, Any] = {"type": "string"}
    if max_length is not None:
        schema["maxLength"] = max_length
    parameter = {"name": name, "in": "query", "required": required, "description": doc, "schema": schema}
    if not required:
        parameter["allowEmptyValue"] = True
    return parameter


TOPICS = _str("topics", "comma-separated topic patterns: an exact topic, a prefix ending in *, or * "
                        "(default *); a * elsewhere, an empty pattern, over 1000 patterns or one over "
                        "256 characters is refused with 400")

UNAUTHORIZED = _error("API_TOKENS is set and no valid token was given")
ADMIN_UNAUTHORIZED = _error("ADMIN_TOKEN is set and the bearer token is missing or wrong")
ADMIN_FORBIDDEN = _error("ADMIN_TOKEN is unset and the peer is not loopback")
BAD = _error("a malformed or out-of-range parameter or body, named in the message")
TOO_LARGE = _error("the body exceeds MAX_BODY_BYTES (publish: UPSTREAM_MAX_FRAME_BYTES)")
BODY_TIMEOUT = _error("the request body did not arrive within BODY_TIMEOUT_S; the connection is closed")
NO_STORE = _error("no store (CLICKHOUSE_URL=none) or the store is unreachable")
NOT_READY = _error("the relay is starting (seq base not known yet) or shutting down")
TOPICS_FORBIDDEN = _error("TOKEN_TOPICS limits this token and a pattern of topics= is outside its patterns")
QUERY_FORBIDDEN = _error("TOKEN_TOPICS limits this token to some topics: SQL would read them all")
URI_TOO_LONG = _error("the request line is over 4094 bytes (gunicorn's limit): use POST /query for long SQL")

CLIENT = [{"bearer": []}, {"token": []}]  # only when API_TOKENS is set; open otherwise
ADMIN = [{"bearer": []}]  # ADMIN_TOKEN; with it unset, loopback peers only
OPEN: list = []


def _schemas() -> dict[str, Any]:
    nullable_int = {"type": "integer", "nullable": True}
    nullable_str = {"type": "string", "nullable": True}
    return {
        "Error": {"type": "object", "required": ["error"], "additionalProperties": False,
                  "properties": {"error": {"type": "string", "minLength": 1}}},
        "Event": {
            "type": "object", "required": ["seq", "ts", "topic", "data"], "additionalProperties": False,
            "properties": {
                "seq": {"type": "integer", "minimum": 1}, "ts": {"type": "integer", "minimum": 0},
                "topic": {"type": "string"},
                "data": {"description": "the upstream element unchanged (any JSON; text or base64 when raw)"},
                "raw": {"type": "boolean", "enum": [True], "description": "the frame was not JSON"},
                "enrichment": {"type": "object", "description": "present only when enrichment produced something"},
            },
        },
        "EventList": {"type": "object", "required": ["events"], "additionalProperties": False,
                      "properties": {"events": {"type": "array", "items": _ref("Event")}}},
        "CacheConfig": {
            "type": "object", "required": ["ttl_seconds", "max_items"], "additionalProperties": False,
            "properties": {"ttl_seconds": {"type": "integer", "minimum": 1, "maximum": 31_536_000},
                           "max_items": {"type": "integer", "minimum": 1, "maximum": 10_000_000}}},
        "CacheConfigChange": {
            "type": "object", "minProperties": 1, "additionalProperties": False,
            "properties": {"ttl_seconds": {"type": "integer", "minimum": 1, "maximum": 31_536_000},
                           "max_items": {"type": "integer", "minimum": 1, "maximum": 10_000_000}}},
        "CacheStats": {
            "type": "object", "additionalProperties": False,
            "required": ["items", "valid_items", "max_items", "ttl_seconds", "bytes", "added", "evicted",
                         "expired", "hits", "misses", "oldest_seq", "newest_seq"],
            "properties": {
                **{name: {"type": "integer", "minimum": 0} for name in (
                    "items", "valid_items", "max_items", "ttl_seconds", "bytes", "added", "evicted", "expired",
                    "hits", "misses")},
                "oldest_seq": nullable_int, "newest_seq": nullable_int,
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "version", "uptime_s", "now", "epoch", "last_seq", "ready", "role", "bus",
                         "upstream", "store", "clients", "clients_by_transport", "delivered", "cache"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded"]},
                "reasons": {"type": "array", "items": {"type": "string"},
                            "description": "why the relay is degraded, in words (empty when ok)"},
                "version": {"type": "string"}, "uptime_s": {"type": "number"}, "now": {"type": "number"},
                "epoch": {"type": "string"}, "last_seq": {"type": "integer"}, "ready": {"type": "boolean"},
                "role": {"type": "string", "enum": ["starting", "single", "follower", "candidate", "leader",
                                                    "stepping_down", "stopped"]},
                "bus": {"type": "object", "required": ["backend", "ok"], "properties": {
                    "backend": {"type": "string", "enum": ["memory", "redis"]}, "ok": {"type": "boolean"},
                    "worker": {"type": "string"}, "lease_holder": nullable_str, "last_seq": {"type": "integer"},
                    "lag": nullable_int, "published": {"type": "integer"}, "gaps": {"type": "integer"},
                    "last_error": nullable_str}},
                "upstream": {"type": "object",
                             "required": ["url", "demo", "connected", "reconnects", "last_message_at", "last_error",
                                          "events", "parse_errors", "oversize_frames"],
                             "properties": {
                                 "url": {"type": "string"}, "demo": {"type": "boolean"},
                                 "connected": {"type": "boolean"}, "reconnects": {"type": "integer"},
                                 "last_message_at": {"type": "number", "nullable": True},
                                 "last_error": nullable_str, "events": {"type": "integer"},
                                 "parse_errors": {"type": "integer"}, "oversize_frames": {"type": "integer"},
                                 "statuses": {"type": "array", "description": "the upstream's own status "
                                                                             "messages (Polygon feeds)"},
                                 "subscriptions": {"type": "array", "items": {"type": "string"},
                                                   "description": "patterns the relay has the upstream "
                                                                  "subscribed to (UPSTREAM_SUBSCRIBE)"},
                                 "subscription_clients": {"type": "object",
                                                          "additionalProperties": {"type": "integer"}},
                                 "managed_subscriptions": {"type": "boolean"}}},
                "store": {"type": "object", "required": ["backend", "ok", "pending", "spooled", "spooled_bytes"],
                          "properties": {
                              "backend": {"type": "string", "enum": ["clickhouse", "chdb", "none"]},
                              "ok": {"type": "boolean"}, "pending": {"type": "integer"},
                              "spooled": {"type": "integer"}, "spooled_bytes": {"type": "integer"},
                              "spool_full": {"type": "boolean"}, "dropped": {"type": "integer"},
                              "written": {"type": "integer"}, "last_error": nullable_str,
                              "dead_letter": {"type": "object", "description": "batches the store refused for "
                                              "good, under DATA_DIR/dead-letter"}}},
                "enrich": {"type": "object", "nullable": True, "description": "with ENRICH_SQL: frames queued, "
                           "frames sent without waiting (queue full), topics that found every query slot busy, "
                           "errors, time-outs, topics cached"},
                "tasks": {"type": "object", "description": "every supervised background loop by name",
                          "additionalProperties": {"type": "object", "properties": {
                              "state": {"type": "string", "enum": ["running", "restarting", "finished", "stopped",
                                                                   "crashed"]},
                              "policy": {"type": "string", "enum": ["restart", "exit"]},
                              "crashes": {"type": "integer"}, "last_error": nullable_str,
                              "last_crash_at": {"type": "number", "nullable": True}}}},
                "clients": {"type": "integer"},
                "clients_by_transport": {"type": "object", "additionalProperties": {"type": "integer"}},
                "clients_by_mode": {
                    "type": "object", "description": "live: every event; rate: max_hz; conflated: slow, on_slow=conflate",
                    "required": ["live", "rate", "conflated"],
                    "properties": {k: {"type": "integer", "minimum": 0} for k in ("live", "rate", "conflated")}},
                "delivered": {"type": "integer"},
                "cache": {"type": "object", "required": ["items"], "properties": {"items": {"type": "integer"}}},
            },
        },
        "QueryRequest": {
            "type": "object", "required": ["sql"],
            "properties": {"sql": {"type": "string", "minLength": 1, "maxLength": 100_000,
                                   "description": "one read-only statement (SELECT, WITH, SHOW, DESCRIBE, "
                                                  "EXISTS, EXPLAIN), no SETTINGS or FORMAT clause"},
                           "params": {"type": "object", "nullable": True,
                                      "description": "values for %(name)s placeholders, escaped by the relay"}}},
        "QueryResult": {
            "type": "object", "additionalProperties": False,
            "required": ["columns", "rows", "row_count", "elapsed_ms", "truncated"],
            "properties": {
                "columns": {"type": "array", "items": {
                    "type": "object", "required": ["name", "type"], "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "type": {"type": "string"}}}},
                "rows": {"type": "array", "items": {"type": "array"}},
                "row_count": {"type": "integer", "minimum": 0}, "elapsed_ms": {"type": "number", "minimum": 0},
                "truncated": {"type": "boolean"}}},
        "Published": {"type": "object", "required": ["seqs"], "additionalProperties": False,
                      "properties": {"seqs": {"type": "array", "items": {"type": "integer", "minimum": 1}}}},
        # the data of each Server-Sent Events message type /sse sends (docs/api.md, contract §4, §10, §12)
        "SseGap": {"type": "object", "required": ["missing"], "additionalProperties": False,
                   "description": "event: gap — a resume could not recover this inclusive seq range; comes first",
                   "properties": {"missing": {"type": "array", "items": {"type": "integer", "minimum": 0},
                                              "minItems": 2, "maxItems": 2}}},
        "SseConflated": {"type": "object", "required": ["conflated"], "additionalProperties": False,
                         "description": "event: conflated — with max_hz, or while slow with on_slow=conflate: how "
                                        "many matching events were replaced by a newer one of their topic since the "
                                        "previous release; precedes that release's events, at most once per interval",
                         "properties": {"conflated": {"type": "integer", "minimum": 1}}},
        "SseSlow": {"type": "object", "required": ["type", "mode"], "additionalProperties": False,
                    "description": "event: slow — with on_slow=conflate: conflated when the client passed its "
                                   "outbound bound (newest value per topic from then on), live when it is below "
                                   "half of it again",
                    "properties": {"type": {"type": "string", "enum": ["slow"]},
                                   "mode": {"type": "string", "enum": ["conflated", "live"]}}},
        "SseClosing": {"type": "object", "required": ["type", "reason"], "additionalProperties": False,
                       "description": "event: closing — the relay ends the stream (shutdown, slow_consumer)",
                       "properties": {"type": {"type": "string", "enum": ["closing"]}, "reason": {"type": "string"}}},
        "ClientList": {
            "type": "object", "additionalProperties": False, "description": "this worker's clients only",
            "required": ["worker", "total", "by_mode", "groups_total", "groups", "clients"],
            "properties": {
                "worker": {"type": "integer", "description": "the process id of the worker that answered"},
                "total": {"type": "integer", "minimum": 0}, "groups_total": {"type": "integer", "minimum": 0},
                "by_mode": {"type": "object", "required": list(MODES), "additionalProperties": False,
                            "properties": {m: {"type": "integer", "minimum": 0} for m in MODES}},
                "groups": {"type": "array", "items": {
                    "type": "object", "required": ["transport", "mode", "max_hz", "clients"],
                    "additionalProperties": False, "properties": {**_client_kind(),
                                                                  "clients": {"type": "integer", "minimum": 1}}}},
                "clients": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": list(_client_row()),
                    "properties": _client_row()}}}},
        "Cleared": {"type": "object", "required": ["cleared"], "additionalProperties": False,
                    "properties": {"cleared": {"type": "integer", "minimum": 0}}},
    }


def _client_kind() -> dict[str, Any]:
    return {"transport": {"type": "string", "enum": ["ws", "sse", "polygon"]},
            "mode": {"type": "string", "enum": list(MODES),
                     "description": "live: every event; rate: max_hz; conflated: slow, on newest values"},
            "max_hz": {"type": "number", "nullable": True}}


def _client_row() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    return {"id": {"type": "string", "description": "opaque, stable while the client is connected"},
            **_client_kind(), "on_slow": {"type": "string", "enum": ["close", "conflate"]},
            "topics": {"type": "object", "required": ["patterns", "count"], "additionalProperties": False,
                       "properties": {"patterns": {"type": "array", "items": {"type": "string"},
                                                   "maxItems": PATTERNS_SHOWN}, "count": count}},
            "connected_s": {"type": "number", "minimum": 0, "nullable": True},
            "queued_events": count, "queued_bytes": count}


def _stream_parameters(settings: Settings) -> list[dict]:
    return [
        TOPICS,
        _int("since", "query", 0, MAX_SEQ, "resume after this seq (every matching event with a larger one)"),
        _str("epoch", "the epoch that since belongs to", max_length=128),
        {"name": "snapshot", "in": "query", "required": False, "allowEmptyValue": True,
         "description": f"how many recent events to send first (default {settings.snapshot_default}), or latest: "
                        "the newest cached event of each matching topic; ignored with since",
         "schema": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": settings.snapshot_max},
                              {"type": "string", "enum": ["latest"]}]}},
        {"name": "max_hz", "in": "query", "required": False, "allowEmptyValue": True,
         "description": "at most this many events per second per topic, the newest winning (contract §12); "
                        "absent: every event",
         "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1000}},
        {"name": "on_slow", "in": "query", "required": False, "allowEmptyValue": True,
         "description": "past the outbound bound: close (default, §3) or conflate (newest value per topic "
                        "until the client catches up, §12)",
         "schema": {"type": "string", "enum": ["close", "conflate"]}},
    ]


def openapi_document(settings: Settings | None = None) -> dict[str, Any]:
    """The document for an app built with `settings` (limits that depend on them are filled in)."""
    s = settings or Settings()
    events = _ok("events, ascending seq", _ref("EventList"))
    html = {"text/html": {"schema": {"type": "string"}}}
    upgrade = {"description": "Switching Protocols: the WebSocket is open"}
    paths: dict[str, Any] = {
        "/health": {"get": {
            "summary": "state of upstream, store, bus, clients and cache", "security": OPEN,
            "parameters": [_str("strict", "1, true or yes: answer 503 while degraded (any other value: 200)")],
            "responses": {"200": _ok("serving (status says ok or degraded)", _ref("Health")),
                          "503": _ok("degraded, with strict=1", _ref("Health"))}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics", "security": OPEN,
            "responses": {"200": _ok("text exposition format 0.0.4", {"type": "string"}, "text/plain")}}},
        "/openapi.json": {"get": {
            "summary": "this document", "security": OPEN,
            "responses": {"200": _ok("OpenAPI 3", {"type": "object"})}}},
        "/": {"get": {
            "summary": "the monitor's address", "security": OPEN,
            "responses": {"302": {"description": "redirect to /monitor",
                                  "headers": {"Location": {"schema": {"type": "string", "enum": ["/monitor"]}}},
                                  "content": html}}}},
        "/monitor": {"get": {
            "summary": "the live monitor page", "security": OPEN,
            "responses": {"200": {"description": "the page", "content": html}}}},
        "/monitor/assets/{name}": {"get": {
            "summary": "the monitor's CSS, JavaScript and icon", "security": OPEN,
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "monitor.css, monitor.js or favicon.svg"}],
            "responses": {"200": {"description": "the file", "content": {
                              "text/css": {"schema": {"type": "string"}},
                              "text/javascript": {"schema": {"type": "string"}},
                              "image/svg+xml": {"schema": {"type": "string"}}}},
                          "304": {"description": "not modified (If-None-Match / If-Modified-Since)"},
                          "404": _error("no such asset")}}},
        "/cache/stats": {"get": {
            "summary": "cache figures", "security": CLIENT,
                        "responses": {"200": _ok("stats", _ref("CacheStats")), "401": UNAUTHORIZED}}},
        "/cache/recent": {"get": {
            "summary": "the most recent unexpired events", "security": CLIENT,
            "parameters": [_int("limit", "query", 1, 1000, "how many (default 50)"), TOPICS],
            "responses": {"200": events, "400": BAD, "401": UNAUTHORIZED, "403": TOPICS_FORBIDDEN}}},
        "/cache/latest": {"get": {
            "summary": "the newest cached event of each matching topic, ascending seq (contract §12)",
            "security": CLIENT,
            "parameters": [TOPICS, _int("limit", "query", 1, 10_000_000,
                                        "at most this many topics, those that changed last (default: every one)")],
            "responses": {"200": events, "400": BAD, "401": UNAUTHORIZED, "403": TOPICS_FORBIDDEN}}},
        "/cache/search": {"get": {
            "summary": "the most recent matching events in the cache", "security": CLIENT,
            "parameters": [
                _str("q", "case-insensitive substring of the event's JSON"),
                _str("field", "dotted path inside data (digits index arrays); needs value"),
                _str("value", "exact value of field: strings without quotes, others as JSON text; needs field"),
                _int("limit", "query", 1, 1000, "how many (default 50)"), TOPICS],
            "responses": {"200": events, "400": BAD, "401": UNAUTHORIZED, "403": TOPICS_FORBIDDEN}}},
        "/cache/events/{seq}": {"get": {
            "summary": "one event by seq", "security": CLIENT,
            "parameters": [_int("seq", "path", 0, MAX_SEQ, "the event's seq", required=True)],
            "responses": {"200": _ok("the event", _ref("Event")), "400": BAD, "401": UNAUTHORIZED,
                          "404": _error("not in the cache")}}},
        "/cache": {"delete": {
            "summary": "clear the cache (admin)", "security": ADMIN,
            "responses": {"200": _ok("how many events were dropped", _ref("Cleared")), "401": ADMIN_UNAUTHORIZED,
                          "403": ADMIN_FORBIDDEN}}},
        "/cache/config": {
            "get": {"summary": "the cache's limits", "security": CLIENT,                     "responses": {"200": _ok("limits", _ref("CacheConfig")), "401": UNAUTHORIZED}},
            "put": {"summary": "change the cache's limits at once (admin)", "security": ADMIN,
                    "requestBody": {"required": True, "content": {JSON: {"schema": _ref("CacheConfigChange")}}},
                    "responses": {"200": _ok("the new limits", _ref("CacheConfig")), "400": BAD,
                                  "401": ADMIN_UNAUTHORIZED, "403": ADMIN_FORBIDDEN, "408": BODY_TIMEOUT, "413": TOO_LARGE}}},
        "/publish": {"post": {
            "summary": "handle a JSON frame as if the upstream had sent it (admin)", "security": ADMIN,
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "oneOf": [{"type": "object"}, {"type": "array"}]}}}},
            "responses": {"200": _ok("the seqs given to its events", _ref("Published")), "400": BAD,
                          "401": ADMIN_UNAUTHORIZED, "403": ADMIN_FORBIDDEN, "408": BODY_TIMEOUT, "413": TOO_LARGE,
                          "503": _error("with Redis: no leader is known or none answered in time; "
                                        "the events were not published")}}},
        "/clients": {"get": {
            "summary": "this worker's clients and their delivery modes (each worker lists its own)",
            "security": CLIENT,
            "parameters": [_int("limit", "query", 1, LIMIT_MAX, f"clients listed (default {LIMIT_DEFAULT}): "
                                "conflated first, then the most queued, then the longest connected")],
            "responses": {"200": _ok("counts of every client, the first limit listed", _ref("ClientList")),
                          "400": BAD, "401": UNAUTHORIZED,
                          "403": _error("TOKEN_TOPICS limits this token: the listing shows every client's topics")}}},
        "/history": {"get": {
            "summary": "stored events, ascending seq", "security": CLIENT,
            "parameters": [
                TOPICS,
                _int("since", "query", 0, MAX_SEQ, "exclusive: the first limit events after it"),
                _int("from_ts", "query", 0, MAX_TS_MS, "inclusive, ms since the Unix epoch"),
                _int("to_ts", "query", 0, MAX_TS_MS, "inclusive, ms since the Unix epoch; not before from_ts"),
                _int("limit", "query", 1, s.history_max_limit, "how many (default 100)")],
            "responses": {"200": events, "400": BAD, "401": UNAUTHORIZED, "403": TOPICS_FORBIDDEN,
                          "500": _error("the store refused the relay's own query"), "503": NO_STORE,
                          "504": _error("the store did not answer in time")}}},
        "/query": {
            "get": {"summary": "read-only SQL on the store", "security": CLIENT,
                    "parameters": [_str("sql", "one read-only statement (the URL limit applies first)",
                                        required=True)],
                    "responses": {"200": _ok("the result", _ref("QueryResult")),
                                  "400": _error("refused, or a ClickHouse error (its message)"),
                                  "401": UNAUTHORIZED, "403": QUERY_FORBIDDEN, "414": URI_TOO_LONG, "503": NO_STORE,
                                  "504": _error("QUERY_TIMEOUT_S passed")}},
            "post": {"summary": "read-only SQL on the store, with parameters", "security": CLIENT,
                                          "requestBody": {"required": True, "content": {JSON: {"schema": _ref("QueryRequest")}}},
                     "responses": {"200": _ok("the result", _ref("QueryResult")),
                                   "400": _error("refused, or a ClickHouse error (its message)"),
                                   "401": UNAUTHORIZED, "403": QUERY_FORBIDDEN, "408": BODY_TIMEOUT, "413": TOO_LARGE,
                                   "503": NO_STORE,
                                   "504": _error("QUERY_TIMEOUT_S passed")}}},
        "/sse": {"get": {
            "summary": "the event stream as Server-Sent Events (docs/api.md)", "security": CLIENT,
            "parameters": [*_stream_parameters(s),
                           {"name": "Last-Event-ID", "in": "header", "required": False,
                            "description": "works like since (the query parameter wins)",
                            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}}],
            "responses": {"200": {
                "description": "the stream: `retry: 1000`, then `event: gap` when a resume is partial, then "
                               "`event: event` (id: seq, data: an Event) per event; with max_hz or while slow, "
                               "`event: conflated` before a thinned release; `event: slow` on a mode change "
                               "(on_slow=conflate); `event: closing` before the relay ends it; `: keep-alive` "
                               "comments. Each message's data is the schema named in x-sse-messages.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "x-sse-messages": {"event": _ref("Event"), "gap": _ref("SseGap"), "conflated": _ref("SseConflated"),
                                   "slow": _ref("SseSlow"), "closing": _ref("SseClosing")}},
                          "400": BAD, "401": UNAUTHORIZED, "403": TOPICS_FORBIDDEN, "503": NOT_READY}}},
        "/ws": {"get": {
            "summary": "the event stream over a WebSocket (docs/api.md); a plain GET is refused", "security": CLIENT,
            "parameters": _stream_parameters(s),
            "responses": {"101": upgrade, "400": _error("not an upgrade request, or a bad parameter"),
                          "401": UNAUTHORIZED, "503": NOT_READY}}},
        "/{market}": {"get": {
            "summary": "the Polygon-compatible socket (docs/polygon.md); authenticated by its auth action",
            "security": OPEN,
            "parameters": [{"name": "market", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": MARKETS}}],
            "responses": {"101": upgrade, "400": _error("not an upgrade request"),
                          "404": _error("not one of the markets"), "503": NOT_READY}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "relayhouse", "version": VERSION,
            "description": "One upstream WebSocket feed, numbered, cached, stored and fanned out. Every error "
                           "is {\"error\": \"...\"} with a 4xx/5xx status; a wrong method is 405 with Allow. "
                           "Client routes need a token only when API_TOKENS is set; admin routes need "
                           "ADMIN_TOKEN, or a loopback peer when it is unset.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an API token (client routes) or ADMIN_TOKEN (admin routes)"},
                "token": {"type": "apiKey", "in": "query", "name": "token",
                          "description": "an API token (client routes only)"},
            },
            "schemas": _schemas(),
        },
        "paths": paths,
    }
