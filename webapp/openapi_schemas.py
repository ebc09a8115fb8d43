"""The component schemas of /openapi.json: every JSON body the app sends or takes, and each /sse message's data."""

from typing import Any

from handlers.clients import MODES, PATTERNS_SHOWN


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def schemas() -> dict[str, Any]:
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
                      "properties": {"events": {"type": "array", "items": ref("Event")},
                                     "missing": {"type": "array", "description": "/history only: seq ranges "
                                                 "[from, to] (inclusive) within the answer's span that the store "
                                                 "lacks for good", "items": {"type": "array", "minItems": 2,
                                                                             "maxItems": 2,
                                                                             "items": {"type": "integer"}}}}},
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
                "accepting_clients": {"type": "boolean", "description": "whether this worker takes new "
                                      "connections (false: the lease holder with LEADER_ACCEPTS=false)"},
                "version": {"type": "string"}, "uptime_s": {"type": "number"}, "now": {"type": "number"},
                "epoch": {"type": "string"}, "last_seq": {"type": "integer"}, "ready": {"type": "boolean"},
                "role": {"type": "string", "enum": ["starting", "single", "follower", "candidate", "leader",
                                                    "stepping_down", "stopped"]},
                "bus": {"type": "object", "required": ["backend", "ok"], "properties": {
                    "backend": {"type": "string", "enum": ["memory", "redis"]}, "ok": {"type": "boolean"},
                    "worker": {"type": "string"}, "lease_holder": nullable_str, "last_seq": {"type": "integer"},
                    "lag": nullable_int, "published": {"type": "integer"}, "gaps": {"type": "integer"},
                    "resyncs": {"type": "integer"}, "waits_for_readers": {"type": "integer"},
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
                              "stalled_s": {"type": "number", "description": "how long the store call in "
                                            "progress has waited for the store; 5 s or more: not ok"},
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
                       "description": "event: closing — the relay ends the stream (shutdown, slow_consumer, resync)",
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
