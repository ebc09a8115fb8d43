"""The paths of /openapi.json: each route's methods, parameters, callers and every status it answers."""

from typing import Any

from handlers.clients import LIMIT_DEFAULT, LIMIT_MAX
from webapp.openapi_schemas import ref
from webapp.settings import Settings

MAX_SEQ = 2**63 - 1
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31, as /history checks
MARKETS = ["stocks", "options", "forex", "crypto", "indices"]

JSON = "application/json"


def _error(description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": ref("Error")}}}


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
QUERY_UNAVAILABLE = _error("no store (CLICKHOUSE_URL=none), the store is unreachable, or QUERY_CONCURRENCY statements "
                           "ran for all of QUERY_TIMEOUT_S while this one waited (with Retry-After)")
NOT_READY = _error("the relay is starting (seq base not known yet) or shutting down")
TOPICS_FORBIDDEN = _error("TOKEN_TOPICS limits this token and a pattern of topics= is outside its patterns")
QUERY_FORBIDDEN = _error("TOKEN_TOPICS limits this token to some topics: SQL would read them all")
URI_TOO_LONG = _error("the request line is over 4094 bytes (gunicorn's limit): use POST /query for long SQL")

CLIENT = [{"bearer": []}, {"token": []}]  # only when API_TOKENS is set; open otherwise
ADMIN = [{"bearer": []}]  # ADMIN_TOKEN; with it unset, loopback peers only
OPEN: list = []


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


def paths(s: Settings) -> dict[str, Any]:
    """Every route of the app, with the limits that depend on `s` filled in."""
    events = _ok("events, ascending seq", ref("EventList"))
    html = {"text/html": {"schema": {"type": "string"}}}
    upgrade = {"description": "Switching Protocols: the WebSocket is open"}
    return {
        "/health": {"get": {
            "summary": "state of upstream, store, bus, clients and cache", "security": OPEN,
            "parameters": [{"name": "strict", "in": "query", "required": False, "allowEmptyValue": True,
                            "description": "1, true or yes: answer 503 while degraded; 0, false, no or empty: "
                                           "200 (the default); any other value is a 400",
                            "schema": {"type": "string", "enum": ["1", "true", "yes", "0", "false", "no", ""]}}],
            "responses": {"200": _ok("serving (status says ok or degraded)", ref("Health")),
                          "400": BAD,
                          "503": _ok("degraded, with strict=1", ref("Health"))}}},
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
                            "description": "monitor.css, favicon.svg, monitor.js or a module it imports (monitor-*.js)"}],
            "responses": {"200": {"description": "the file", "content": {
                              "text/css": {"schema": {"type": "string"}},
                              "text/javascript": {"schema": {"type": "string"}},
                              "image/svg+xml": {"schema": {"type": "string"}}}},
                          "304": {"description": "not modified (If-None-Match / If-Modified-Since)"},
                          "404": _error("no such asset")}}},
        "/cache/stats": {"get": {
            "summary": "cache figures", "security": CLIENT,
            "responses": {"200": _ok("stats", ref("CacheStats")), "401": UNAUTHORIZED}}},
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
            "responses": {"200": _ok("the event", ref("Event")), "400": BAD, "401": UNAUTHORIZED,
                          "404": _error("not in the cache")}}},
        "/cache": {"delete": {
            "summary": "clear the cache (admin)", "security": ADMIN,
            "responses": {"200": _ok("how many events were dropped", ref("Cleared")), "401": ADMIN_UNAUTHORIZED,
                          "403": ADMIN_FORBIDDEN}}},
        "/cache/config": {
            "get": {"summary": "the cache's limits", "security": CLIENT,
                    "responses": {"200": _ok("limits", ref("CacheConfig")), "401": UNAUTHORIZED}},
            "put": {"summary": "change the cache's limits at once (admin)", "security": ADMIN,
                    "requestBody": {"required": True, "content": {JSON: {"schema": ref("CacheConfigChange")}}},
                    "responses": {"200": _ok("the new limits", ref("CacheConfig")), "400": BAD,
                                  "401": ADMIN_UNAUTHORIZED, "403": ADMIN_FORBIDDEN, "408": BODY_TIMEOUT, "413": TOO_LARGE}}},
        "/publish": {"post": {
            "summary": "handle a JSON frame as if the upstream had sent it (admin)", "security": ADMIN,
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "oneOf": [{"type": "object"}, {"type": "array"}]}}}},
            "responses": {"200": _ok("the seqs given to its events", ref("Published")), "400": BAD,
                          "401": ADMIN_UNAUTHORIZED, "403": ADMIN_FORBIDDEN, "408": BODY_TIMEOUT, "413": TOO_LARGE,
                          "503": _error("with Redis: no leader is known or none answered in time; "
                                        "the events were not published")}}},
        "/clients": {"get": {
            "summary": "this worker's clients and their delivery modes (each worker lists its own)",
            "security": CLIENT,
            "parameters": [_int("limit", "query", 1, LIMIT_MAX, f"clients listed (default {LIMIT_DEFAULT}): "
                                "conflated first, then the most queued, then the longest connected")],
            "responses": {"200": _ok("counts of every client, the first limit listed", ref("ClientList")),
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
                    "responses": {"200": _ok("the result", ref("QueryResult")),
                                  "400": _error("refused, or a ClickHouse error (its message)"),
                                  "401": UNAUTHORIZED, "403": QUERY_FORBIDDEN, "414": URI_TOO_LONG,
                                  "503": QUERY_UNAVAILABLE,
                                  "504": _error("QUERY_TIMEOUT_S passed")}},
            "post": {"summary": "read-only SQL on the store, with parameters", "security": CLIENT,
                     "requestBody": {"required": True, "content": {JSON: {"schema": ref("QueryRequest")}}},
                     "responses": {"200": _ok("the result", ref("QueryResult")),
                                   "400": _error("refused, or a ClickHouse error (its message)"),
                                   "401": UNAUTHORIZED, "403": QUERY_FORBIDDEN, "408": BODY_TIMEOUT, "413": TOO_LARGE,
                                   "503": QUERY_UNAVAILABLE,
                                   "504": _error("QUERY_TIMEOUT_S passed")}}},
        "/sse": {"get": {
            "summary": "the event stream as Server-Sent Events (docs/api.md)", "security": CLIENT,
            "parameters": [*_stream_parameters(s),
                           {"name": "Last-Event-ID", "in": "header", "required": False,
                            "description": "the seq of the last message received, its id as the relay sends "
                                           "it (an EventSource sends it back on reconnecting; the epoch query "
                                           "parameter, if any, names its epoch), or `<epoch>:<seq>` from a "
                                           "client that keeps the epoch itself; seq in "
                                           f"0..{MAX_SEQ}, epoch at most 128 characters. Works like since and "
                                           "epoch, and wins over both query parameters when given (an "
                                           "EventSource reconnects to the same URL with it); anything else is "
                                           "a 400 naming Last-Event-ID",
                            "schema": {"type": "string", "pattern": r"^([^:]{1,128}:)?[0-9]{1,19}$",
                                       "example": "1042"}}],
            "responses": {"200": {
                "description": "the stream: `retry: 1000`, then `event: gap` when a resume is partial, then "
                               "`event: event` (id: the seq, data: an Event) per event; with max_hz or while slow, "
                               "`event: conflated` before a thinned release; `event: slow` on a mode change "
                               "(on_slow=conflate); `event: closing` before the relay ends it; `: keep-alive` "
                               "comments. Each message's data is the schema named in x-sse-messages.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "x-sse-messages": {"event": ref("Event"), "gap": ref("SseGap"), "conflated": ref("SseConflated"),
                                   "slow": ref("SseSlow"), "closing": ref("SseClosing")}},
                          "400": BAD, "401": UNAUTHORIZED, "403": TOPICS_FORBIDDEN,
                          "503": _error("the relay is starting or shutting down, or (a resume with since or "
                                        "Last-Event-ID) this worker holds SNAPSHOT_QUEUE_MAX_BYTES of snapshots "
                                        "its clients have not read yet: retry after Retry-After")}}},
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
