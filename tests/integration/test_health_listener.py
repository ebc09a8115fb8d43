"""HEALTH_BIND under real gunicorn: a second listener on which /health and /metrics answer and nothing else,
while the main port keeps serving everything."""

import json

import pytest
import requests
from support.clients import WsClient
from support.relay import RelayError, health_port

HEALTH_PORT = health_port()
RELAY_ENV = {"HEALTH_BIND": f"127.0.0.1:{HEALTH_PORT}"}
HEALTH_URL = f"http://127.0.0.1:{HEALTH_PORT}"

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
CLOSED = [
    ("GET", "/ws", UPGRADE, None),
    ("GET", "/ws", {}, None),
    ("GET", "/sse", {}, None),
    ("GET", "/stocks", UPGRADE, None),
    ("GET", "/query?sql=SELECT%201", {}, None),
    ("POST", "/query", {"Content-Type": "application/json"}, json.dumps({"sql": "SELECT 1"})),
    ("GET", "/cache/recent", {}, None),
    ("GET", "/cache/config", {}, None),
    ("POST", "/publish", {"Content-Type": "application/json"}, json.dumps({"ev": "T", "sym": "X"})),
    ("GET", "/", {}, None),
    ("GET", "/monitor", {}, None),
    ("GET", "/openapi.json", {}, None),
    ("GET", "/health/", {}, None),
    ("GET", "//cache/recent", {}, None),
    ("GET", "/cache%2frecent", {}, None),
    ("GET", "/metrics/../cache/recent", {}, None),
    ("GET", "/nothing-here", {}, None),
]


def on_health_port(method, path, headers=None, body=None):
    return requests.request(method, HEALTH_URL + path, headers=headers, data=body, timeout=10, allow_redirects=False)


def test_health_and_metrics_answer_on_the_health_listener(relay):
    health = on_health_port("GET", "/health")
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"
    assert on_health_port("GET", "/health?strict=1").status_code == 200
    metrics = on_health_port("GET", "/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert "relayhouse_" in metrics.text


@pytest.mark.parametrize(("method", "path", "headers", "body"), CLOSED, ids=[f"{m} {p}" for m, p, _, _ in CLOSED])
def test_every_other_path_is_a_json_404_on_the_health_listener(relay, method, path, headers, body):
    answer = on_health_port(method, path, headers, body)
    assert answer.status_code == 404, (answer.status_code, answer.text[:300])
    assert answer.json() == {"error": "the health listener serves only /health and /metrics"}


def test_a_host_header_naming_the_main_port_does_not_open_the_health_listener(relay):
    # the filter reads the accepted socket's own port, not what the client says it dialled
    spoofed = {"Host": f"127.0.0.1:{relay.port}"}
    assert on_health_port("GET", "/cache/recent", spoofed).status_code == 404
    assert on_health_port("POST", "/publish", {**spoofed, "Content-Type": "application/json"},
                          json.dumps({"ev": "T", "sym": "X"})).status_code == 404


def test_a_published_event_is_not_on_the_health_listener_but_is_on_the_main_port(relay):
    before = on_health_port("GET", "/health").json()["last_seq"]
    assert on_health_port("POST", "/publish", {"Content-Type": "application/json"},
                          json.dumps({"ev": "T", "sym": "HP"})).status_code == 404
    assert relay.health()["last_seq"] == before  # nothing was published


def test_the_main_port_still_serves_everything(relay):
    assert relay.health()["status"] == "ok"
    assert relay.get("/metrics").status_code == 200
    assert relay.get("/openapi.json").status_code == 200
    published = relay.request("POST", "/publish", json={"ev": "T", "sym": "MAIN"})
    assert published.status_code == 200, published.text
    seq = published.json()["seqs"][0]
    assert relay.get(f"/cache/events/{seq}").json()["topic"] == "T.MAIN"
    assert relay.get("/cache/recent").status_code == 200
    assert relay.get("/query", params={"sql": "SELECT 1"}).status_code != 404
    client = WsClient(relay.ws_url("/ws", snapshot=1))
    try:
        assert client.read_snapshot()["type"] == "snapshot"
    finally:
        client.close()


@pytest.mark.parametrize("value", ["8001", "127.0.0.1:0", "127.0.0.1:99999", "::1:8001", "127.0.0.1:x"])
def test_a_bad_health_bind_stops_the_start_with_its_name(launch_relay, value):
    with pytest.raises(RelayError) as failed:
        launch_relay("ws://127.0.0.1:9/feed", {"HEALTH_BIND": value}, wait_upstream=False)
    log = str(failed.value)
    assert log.count("relayhouse: invalid configuration:") == 1, log
    assert log.count("- HEALTH_BIND:") == 1, log
    assert "Traceback" not in log
