"""The OpenAPI 3 description of the REST API served at /openapi.json."""

from typing import Any

from webapp.runtime import VERSION

_ERROR = {"$ref": "#/components/responses/Error"}
_EVENTS = {"description": "events, ascending seq", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventList"}}}}


def _int_param(name: str, where: str, lo: int, hi: int, doc: str, required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required, "description": doc,
            "schema": {"type": "integer", "minimum": lo, "maximum": hi}}


_TOPICS = {"name": "topics", "in": "query", "required": False,
           "description": "comma-separated topic patterns: exact, prefix ending in *, or *",
           "schema": {"type": "string"}}
_CLIENT = [{"bearer": []}, {"token": []}, {}]
_ADMIN = [{"bearer": []}, {}]


def openapi_document() -> dict[str, Any]:
    event = {
        "type": "object",
        "required": ["seq", "ts", "topic", "data"],
        "properties": {
            "seq": {"type": "integer"}, "ts": {"type": "integer"}, "topic": {"type": "string"},
            "data": {}, "raw": {"type": "boolean"}, "enrichment": {"type": "object"},
        },
    }
    cache_config = {"type": "object", "properties": {
        "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": 31536000},
        "max_items": {"type": "integer", "minimum": 1, "maximum": 10000000}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "relayhouse", "version": VERSION,
                 "description": "One upstream WebSocket feed, numbered, cached and fanned out. "
                                "WebSocket (/ws, /<market>) and SSE (/sse) streams are described in docs/api.md."},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "query", "name": "token"},
            },
            "responses": {"Error": {"description": "error", "content": {"application/json": {"schema": {
                "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}},
            "schemas": {
                "Event": event,
                "EventList": {"type": "object", "required": ["events"],
                              "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}}},
                "CacheConfig": cache_config,
            },
        },
        "paths": {
            "/health": {"get": {
                "summary": "liveness and state", "security": [{}],
                "parameters": [{"name": "strict", "in": "query", "schema": {"type": "string", "enum": ["0", "1"]},
                                "description": "1: answer 503 when degraded"}],
                "responses": {"200": {"description": "serving", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["status", "version", "uptime_s", "epoch", "last_seq", "upstream", "store", "clients", "cache"],
                    "properties": {"status": {"type": "string", "enum": ["ok", "degraded"]}}}}}},
                    "503": {"description": "degraded (strict=1 only)"}}}},
            "/cache/stats": {"get": {"summary": "cache figures", "security": _CLIENT, "responses": {
                "200": {"description": "stats", "content": {"application/json": {"schema": {"type": "object", "required": [
                    "items", "valid_items", "max_items", "ttl_seconds", "bytes", "added", "evicted", "expired",
                    "hits", "misses", "oldest_seq", "newest_seq"]}}}}, "401": _ERROR}}},
            "/cache/recent": {"get": {"summary": "most recent events", "security": _CLIENT, "parameters": [
                _int_param("limit", "query", 1, 1000, "how many (default 50)"), _TOPICS],
                "responses": {"200": _EVENTS, "400": _ERROR, "401": _ERROR}}},
            "/cache/search": {"get": {"summary": "search the cache", "security": _CLIENT, "parameters": [
                {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "case-insensitive substring of the event JSON"},
                {"name": "field", "in": "query", "schema": {"type": "string"}, "description": "dotted path inside data"},
                {"name": "value", "in": "query", "schema": {"type": "string"}, "description": "exact value of field"},
                _int_param("limit", "query", 1, 1000, "how many (default 50)"), _TOPICS],
                "responses": {"200": _EVENTS, "400": _ERROR, "401": _ERROR}}},
            "/cache/events/{seq}": {"get": {"summary": "one event by seq", "security": _CLIENT, "parameters": [
                _int_param("seq", "path", 0, 2**63 - 1, "the event's seq", required=True)],
                "responses": {"200": {"description": "the event", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Event"}}}},
                              "400": _ERROR, "401": _ERROR, "404": _ERROR}}},
            "/cache": {"delete": {"summary": "clear the cache (admin)", "security": _ADMIN, "responses": {
                "200": {"description": "cleared", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["cleared"], "properties": {"cleared": {"type": "integer"}}}}}},
                "401": _ERROR, "403": _ERROR}}},
            "/cache/config": {
                "get": {"summary": "cache limits", "security": _CLIENT, "responses": {
                    "200": {"description": "limits", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CacheConfig"}}}},
                    "401": _ERROR}},
                "put": {"summary": "change cache limits at once (admin)", "security": _ADMIN,
                        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CacheConfig"}}}},
                        "responses": {"200": {"description": "new limits", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CacheConfig"}}}},
                                      "400": _ERROR, "401": _ERROR, "403": _ERROR}}},
            "/publish": {"post": {"summary": "inject a frame as if from the upstream (admin)", "security": _ADMIN,
                                  "requestBody": {"required": True, "content": {"application/json": {"schema": {
                                      "oneOf": [{"type": "object"}, {"type": "array"}]}}}},
                                  "responses": {"200": {"description": "seqs assigned", "content": {"application/json": {"schema": {
                                      "type": "object", "required": ["seqs"], "properties": {"seqs": {"type": "array", "items": {"type": "integer"}}}}}}},
                                      "400": _ERROR, "401": _ERROR, "403": _ERROR, "413": _ERROR}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [{}],
                                 "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "this document", "security": [{}],
                                      "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
    }
