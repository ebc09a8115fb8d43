"""The REST surface through Flask's test client: no server, no greenlets started (create_app connects nothing)."""

import json

import pytest

from webapp import create_app
from webapp.settings import Settings

UPSTREAM = {"UPSTREAM_URL": "ws://127.0.0.1:9/feed", "CLICKHOUSE_URL": "none"}


UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def make_client(**env):
    app = create_app(Settings.from_env({**UPSTREAM, **env}))
    return app.test_client(), app.extensions["relayhouse"]


def publish(client, body, **kw):
    return client.post("/publish", data=json.dumps(body), content_type="application/json", **kw)


@pytest.fixture
def client():
    c, _ = make_client()
    return c


def test_publish_numbers_each_element_and_the_cache_serves_them(client):
    assert publish(client, [{"ev": "T", "sym": "AAPL", "p": 1}, {"ev": "Q", "sym": "MSFT"}]).json == {"seqs": [1, 2]}
    assert publish(client, {"ev": "T", "sym": "MSFT"}).json == {"seqs": [3]}
    recent = client.get("/cache/recent?limit=2").json["events"]
    assert [(e["seq"], e["topic"]) for e in recent] == [(2, "Q.MSFT"), (3, "T.MSFT")]
    assert client.get("/cache/recent?topics=T.*").json["events"][0]["data"] == {"ev": "T", "sym": "AAPL", "p": 1}
    assert client.get("/cache/events/1").json["topic"] == "T.AAPL"


def test_publish_refuses_what_is_not_a_json_object_or_array(client):
    for body in (b"not json", b"42", b'"text"', b""):
        response = client.post("/publish", data=body, content_type="application/json")
        assert response.status_code == 400 and "error" in response.json
    assert client.get("/cache/stats").json["items"] == 0


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "topics=a*b", "topics=,"])
def test_bad_recent_parameters_are_400_naming_the_parameter(client, query):
    response = client.get(f"/cache/recent?{query}")
    assert response.status_code == 400
    assert ("'limit'" in response.json["error"]) or ("'topics'" in response.json["error"])


def test_search_by_substring_and_by_field_value(client):
    publish(client, [{"ev": "T", "sym": "AAPL", "s": 100, "x": {"ok": True}}, {"ev": "T", "sym": "msft", "s": 5}])
    assert [e["seq"] for e in client.get("/cache/search?q=MSFT").json["events"]] == [2]
    assert [e["seq"] for e in client.get("/cache/search?field=s&value=100").json["events"]] == [1]
    assert [e["seq"] for e in client.get("/cache/search?field=x.ok&value=true").json["events"]] == [1]
    assert client.get("/cache/search?field=s").status_code == 400
    assert client.get("/cache/search?value=1").status_code == 400


def test_an_event_not_in_the_cache_is_404_and_a_bad_seq_400(client):
    assert client.get("/cache/events/7").status_code == 404
    assert client.get("/cache/events/seven").status_code == 400


def test_stats_carry_every_contract_field(client):
    publish(client, {"a": 1})
    client.get("/cache/events/1")
    client.get("/cache/events/2")
    stats = client.get("/cache/stats").json
    assert set(stats) == {"items", "valid_items", "max_items", "ttl_seconds", "bytes", "added", "evicted",
                          "expired", "hits", "misses", "oldest_seq", "newest_seq"}
    assert (stats["items"], stats["hits"], stats["misses"], stats["oldest_seq"]) == (1, 1, 1, 1)


def test_config_changes_apply_at_once_and_bad_ones_change_nothing(client):
    publish(client, [{"n": i} for i in range(5)])
    assert client.put("/cache/config", json={"max_items": 2}).json == {"ttl_seconds": 3600, "max_items": 2}
    assert client.get("/cache/stats").json["items"] == 2
    for body in ({"max_items": 0}, {"ttl_seconds": "60"}, {"ttl_seconds": 31536001}, {"max_items": 2.5},
                 {"colour": 1}, {}, [1], {"ttl_seconds": 60, "max_items": -1}, {"max_items": True}):
        assert client.put("/cache/config", json=body).status_code == 400, body
    assert client.get("/cache/config").json == {"ttl_seconds": 3600, "max_items": 2}


def test_delete_cache_reports_how_many_were_cleared(client):
    publish(client, [{}, {}, {}])
    assert client.delete("/cache").json == {"cleared": 3}
    assert client.get("/cache/recent").json == {"events": []}


def test_unknown_paths_and_methods_are_json_errors(client):
    missing = client.get("/no/such/thing")
    assert missing.status_code == 404 and missing.is_json and "error" in missing.json
    wrong = client.post("/health")
    assert wrong.status_code == 405 and wrong.is_json and "GET" in wrong.headers["Allow"]


def test_root_redirects_to_the_monitor(client):
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"].endswith("/monitor")


def test_health_reports_contract_fields_and_strict_mode_refuses_when_degraded():
    c, rt = make_client(STARTUP_GRACE_S="0")
    report = c.get("/health").json
    assert {"status", "version", "uptime_s", "epoch", "last_seq", "upstream", "store", "clients", "cache"} <= set(report)
    assert {"url", "connected", "reconnects", "last_message_at", "events", "parse_errors"} <= set(report["upstream"])
    assert {"backend", "ok", "pending", "spooled"} <= set(report["store"])
    assert report["status"] == "degraded"  # the upstream has never connected and there is no grace
    assert c.get("/health").status_code == 200
    assert c.get("/health?strict=1").status_code == 503
    rt.upstream.state.connected = True
    assert c.get("/health?strict=1").status_code == 200


def test_metrics_are_prometheus_text(client):
    publish(client, {"a": 1})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert 'relayhouse_events_in_total{source="publish"} 1.0' in response.get_data(as_text=True)


def test_openapi_lists_the_rest_routes(client):
    paths = client.get("/openapi.json").json["paths"]
    assert {"/health", "/cache/stats", "/cache/recent", "/cache/search", "/cache/events/{seq}", "/cache",
            "/cache/config", "/publish", "/metrics"} <= set(paths)


def test_client_routes_need_a_token_when_api_tokens_are_set():
    c, _ = make_client(API_TOKENS="t1,t2")
    assert c.get("/cache/stats").status_code == 401
    assert c.get("/cache/stats?token=nope").status_code == 401
    assert c.get("/cache/stats?token=t2").status_code == 200
    assert c.get("/cache/config", headers={"Authorization": "Bearer t1"}).status_code == 200
    assert c.get("/sse").status_code == 401
    assert c.get("/ws", headers=UPGRADE).status_code == 401
    for open_route in ("/health", "/metrics", "/openapi.json"):
        assert c.get(open_route).status_code == 200


def test_admin_routes_need_the_admin_token_when_it_is_set():
    c, _ = make_client(ADMIN_TOKEN="root-secret")
    assert c.delete("/cache").status_code == 401
    assert c.delete("/cache", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.delete("/cache", headers={"Authorization": "Bearer root-secret"}).status_code == 200
    assert publish(c, {"a": 1}).status_code == 401


def test_without_an_admin_token_admin_routes_are_loopback_only():
    c, _ = make_client()
    far = {"REMOTE_ADDR": "203.0.113.9"}
    assert c.delete("/cache", environ_base=far).status_code == 403
    assert c.put("/cache/config", json={"max_items": 5}, environ_base=far).status_code == 403
    assert publish(c, {"a": 1}, environ_base=far).status_code == 403
    assert c.delete("/cache", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200


def test_ws_without_an_upgrade_is_a_clear_400(client):
    response = client.get("/ws")
    assert response.status_code == 400 and "WebSocket" in response.json["error"]
    bad_since = client.get("/ws?since=-1", headers=UPGRADE)
    assert bad_since.status_code == 400 and "'since'" in bad_since.json["error"]


def test_an_oversized_body_is_refused_with_413():
    c, _ = make_client(MAX_BODY_BYTES="1024")
    response = c.post("/publish", data=b"[" + b"1," * 2000 + b"1]", content_type="application/json")
    assert response.status_code == 413 and response.is_json


@pytest.mark.parametrize("path", ["/health", "/cache/recent", "/publish", "/query"])
def test_an_options_request_is_a_204_with_its_allow_header_and_no_html(client, path):
    """Flask answered OPTIONS itself with 200 and an empty text/html body (an outside audit)."""
    response = client.options(path)
    assert response.status_code == 204 and response.data == b"", (response.status_code, response.data)
    assert "text/html" not in response.headers.get("Content-Type", "") and "GET" in response.headers["Allow"] \
        or "POST" in response.headers["Allow"]
