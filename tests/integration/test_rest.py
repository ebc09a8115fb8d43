"""The REST routes with their error cases, on an open relay (no API_TOKENS, no ADMIN_TOKEN, so
admin routes are for loopback peers) (contract §6, §10)."""

from __future__ import annotations

import json
import socket

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from support.events import data_of, feed, seqs_of, trades, unique_sym
from support.waiting import wait_until

MAX_ITEMS = 5000
TTL_S = 1800
RELAY_ENV = {"CACHE_MAX_ITEMS": str(MAX_ITEMS), "CACHE_TTL_SECONDS": str(TTL_S)}

STATS_FIELDS = {
    "items", "valid_items", "max_items", "ttl_seconds", "bytes", "added", "evicted",
    "expired", "hits", "misses", "oldest_seq", "newest_seq",
}


def assert_json_error(response: requests.Response, status: int | tuple[int, ...], naming: str | None = None) -> dict:
    """A JSON {"error": "..."} with the given status, never an HTML page."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers.get("Content-Type", "").startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    if naming is not None:
        assert naming in body["error"], f"the error should name {naming!r}: {body}"
    return body


# -- /health, /metrics, /openapi.json, routing --------------------------------


def test_health_reports_every_documented_field(relay, upstream):
    health = relay.get("/health").json()

    assert health["status"] == "ok"
    assert isinstance(health["version"], str) and health["version"]
    assert isinstance(health["uptime_s"], (int, float)) and health["uptime_s"] >= 0
    assert isinstance(health["epoch"], str) and health["epoch"]
    assert isinstance(health["last_seq"], int)
    upstream_part = health["upstream"]
    assert upstream_part["url"] == upstream.url
    assert upstream_part["connected"] is True
    assert isinstance(upstream_part["reconnects"], int)
    assert isinstance(upstream_part["events"], int)
    assert "last_message_at" in upstream_part
    assert isinstance(upstream_part["parse_errors"], int)
    store = health["store"]
    assert store["backend"] == "none"
    assert {"ok", "pending", "spooled"} <= store.keys()
    assert isinstance(health["clients"], int)
    assert isinstance(health["cache"]["items"], int)


def test_health_counts_events_clients_and_last_seq(relay, upstream, ws):
    before = relay.health()
    client = ws(relay, snapshot=0)
    client.read_snapshot()
    seqs = feed(relay, upstream, trades(0, 4, unique_sym()))

    after = relay.health()

    assert after["last_seq"] == seqs[-1]
    assert after["upstream"]["events"] == before["upstream"]["events"] + 4
    assert after["clients"] >= 1
    assert after["upstream"]["last_message_at"] is not None
    assert after["cache"]["items"] >= before["cache"]["items"] + 4 or after["cache"]["items"] == MAX_ITEMS


def test_strict_health_is_200_while_ok(relay):
    response = relay.get("/health?strict=1")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_metrics_are_prometheus_text_and_count_parse_errors(relay, upstream):
    def parse_error_total() -> float:
        response = relay.get("/metrics")
        assert response.status_code == 200
        assert response.headers.get("Content-Type", "").startswith("text/plain")
        families = list(text_string_to_metric_families(response.text))
        assert families, "no metrics at all"
        samples = [s for f in families for s in f.samples if "parse_error" in s.name]
        assert samples, f"no parse-error metric among {[f.name for f in families]}"
        return sum(s.value for s in samples)

    before = parse_error_total()
    feed(relay, upstream, [f"not json {unique_sym()}"], batch=None)
    assert parse_error_total() == before + 1


def test_openapi_describes_the_rest_table(relay):
    response = relay.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert str(spec.get("openapi", "")).startswith("3")
    paths = spec["paths"]
    for path in ["/health", "/cache/stats", "/cache/recent", "/cache/search", "/cache", "/cache/config",
                 "/publish", "/metrics"]:
        assert path in paths, f"{path} missing from /openapi.json"
    assert any(p.startswith("/cache/events/") for p in paths)


def test_root_redirects_to_the_monitor(relay):
    response = relay.get("/")
    assert response.status_code in (301, 302, 303, 307, 308)
    assert response.headers["Location"].endswith("/monitor")
    monitor = relay.get("/monitor")
    assert monitor.status_code == 200
    assert monitor.headers.get("Content-Type", "").startswith("text/html")


def test_an_unknown_path_is_a_json_404(relay):
    assert_json_error(relay.get("/no/such/route"), 404)


@pytest.mark.parametrize(
    "method, path",
    [("POST", "/health"), ("DELETE", "/cache/recent"), ("GET", "/publish"), ("POST", "/cache/stats"), ("PATCH", "/cache")],
)
def test_a_wrong_method_is_a_json_405(relay, method, path):
    assert_json_error(relay.request(method, path), 405)


# -- /cache/stats, /cache/recent -------------------------------------------------


def test_cache_stats_has_every_field_and_tracks_the_newest_event(relay, upstream):
    seqs = feed(relay, upstream, trades(0, 3, unique_sym()))
    response = relay.get("/cache/stats")

    assert response.status_code == 200
    stats = response.json()
    assert STATS_FIELDS <= stats.keys(), STATS_FIELDS - stats.keys()
    assert stats["max_items"] == MAX_ITEMS and stats["ttl_seconds"] == TTL_S
    assert stats["newest_seq"] == seqs[-1]
    assert stats["oldest_seq"] <= seqs[0]
    assert 3 <= stats["items"] <= MAX_ITEMS and stats["valid_items"] <= stats["items"]
    assert stats["added"] >= stats["items"] and stats["bytes"] > 0
    for name in ("evicted", "expired", "hits", "misses"):
        assert isinstance(stats[name], int) and stats[name] >= 0, name


def test_recent_gives_the_latest_events_in_ascending_seq(relay, upstream):
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 60, sym))

    default = relay.get("/cache/recent", params={"topics": f"T.{sym}"})
    three = relay.get("/cache/recent", params={"topics": f"T.{sym}", "limit": 3})
    prefix = relay.get("/cache/recent", params={"topics": "T.*", "limit": 1})
    unfiltered = relay.get("/cache/recent", params={"limit": 1000})

    assert default.status_code == 200 and seqs_of(default.json()["events"]) == seqs[-50:]
    assert data_of(default.json()["events"]) == trades(10, 60, sym)
    assert seqs_of(three.json()["events"]) == seqs[-3:]
    assert seqs_of(prefix.json()["events"]) == seqs[-1:]
    unfiltered_seqs = seqs_of(unfiltered.json()["events"])
    assert unfiltered_seqs == sorted(unfiltered_seqs) and unfiltered_seqs[-60:] == seqs


@pytest.mark.parametrize("limit", ["0", "1001", "-5", "abc", "2.5"])
def test_recent_rejects_a_limit_outside_1_to_1000(relay, limit):
    assert_json_error(relay.get("/cache/recent", params={"limit": limit}), 400, naming="limit")


@pytest.mark.parametrize("limit", ["1", "1000"])
def test_recent_accepts_the_limit_bounds(relay, limit):
    response = relay.get("/cache/recent", params={"limit": limit})
    assert response.status_code == 200
    assert 1 <= len(response.json()["events"]) <= int(limit)


# -- /cache/search -----------------------------------------------------------------


def test_search_q_is_a_case_insensitive_substring_of_the_event_json(relay, upstream):
    sym = unique_sym()
    marker = f"Needle-{unique_sym()}"
    elements = trades(0, 4, sym)
    elements[1]["note"] = f"has a {marker} inside"
    elements[3]["note"] = marker.upper()
    seqs = feed(relay, upstream, elements)

    response = relay.get("/cache/search", params={"q": marker.lower()})

    assert response.status_code == 200
    assert seqs_of(response.json()["events"]) == [seqs[1], seqs[3]]


def test_search_field_and_value_match_exactly_on_a_dotted_path_in_data(relay, upstream):
    sym = unique_sym()
    elements = [
        {"ev": "T", "sym": sym, "n": 0, "x": 100, "ok": True, "meta": {"venue": "XNAS", "tier": None}},
        {"ev": "T", "sym": sym, "n": 1, "x": 1000, "ok": False, "meta": {"venue": "XNASDAQ", "tier": 2}},
        {"ev": "T", "sym": sym, "n": 2, "x": 100, "ok": True, "meta": {"venue": "ARCX", "tier": None}},
    ]
    seqs = feed(relay, upstream, elements)

    def search(field: str, value: str) -> list[int]:
        response = relay.get("/cache/search", params={"field": field, "value": value, "topics": f"T.{sym}"})
        assert response.status_code == 200, response.text
        return seqs_of(response.json()["events"])

    assert search("sym", sym) == seqs
    assert search("sym", sym[:-1]) == []  # exact, not a prefix
    assert search("meta.venue", "XNAS") == [seqs[0]]
    assert search("x", "100") == [seqs[0], seqs[2]]
    assert search("ok", "true") == [seqs[0], seqs[2]]
    assert search("ok", "false") == [seqs[1]]
    assert search("meta.tier", "null") == [seqs[0], seqs[2]]
    assert search("meta.tier", "2") == [seqs[1]]
    assert search("meta.missing", "XNAS") == []


def test_search_gives_the_most_recent_matches_up_to_limit_and_honours_topics(relay, upstream):
    a, b = unique_sym(), unique_sym()
    marker = unique_sym()
    seqs = feed(relay, upstream, trades(0, 10, a, tag=marker) + trades(0, 10, b, tag=marker))

    limited = relay.get("/cache/search", params={"q": marker, "limit": 4})
    only_a = relay.get("/cache/search", params={"q": marker, "topics": f"T.{a}"})

    assert seqs_of(limited.json()["events"]) == seqs[-4:]
    assert seqs_of(only_a.json()["events"]) == seqs[:10]


@pytest.mark.parametrize("limit", ["0", "1001", "x"])
def test_search_rejects_a_limit_outside_1_to_1000(relay, limit):
    assert_json_error(relay.get("/cache/search", params={"q": "a", "limit": limit}), 400, naming="limit")


# -- /cache/events/<seq> ---------------------------------------------------------


def test_an_event_is_fetched_by_seq(relay, upstream):
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 2, sym))

    response = relay.get(f"/cache/events/{seqs[1]}")

    assert response.status_code == 200
    event = response.json()
    assert event["seq"] == seqs[1]
    assert event["data"] == trades(1, 2, sym)[0]
    assert event["topic"] == f"T.{sym}"


def test_a_seq_that_is_not_cached_is_a_json_404(relay):
    missing = relay.health()["last_seq"] + 1_000_000
    assert_json_error(relay.get(f"/cache/events/{missing}"), 404)


@pytest.mark.parametrize("seq", ["abc", "1.5", "1e3"])
def test_a_non_integer_seq_is_a_json_400_or_404(relay, seq):
    assert_json_error(relay.get(f"/cache/events/{seq}"), (400, 404))


# -- /publish --------------------------------------------------------------------


def test_publishing_an_object_gives_one_event_delivered_like_an_upstream_one(relay, ws):
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    element = {"ev": "T", "sym": sym, "p": 1.5}

    response = relay.request("POST", "/publish", json=element)

    assert response.status_code == 200, response.text
    (seq,) = response.json()["seqs"]
    assert seq == relay.health()["last_seq"]
    (event,) = client.wait_for_events(1)
    assert (event["seq"], event["data"], event["topic"]) == (seq, element, f"T.{sym}")
    assert relay.get(f"/cache/events/{seq}").json()["data"] == element


def test_publishing_an_array_gives_one_event_per_element_in_order(relay):
    sym = unique_sym()
    body = [{"ev": "T", "sym": sym, "n": 0}, 5, {"ev": "Q", "sym": sym}]

    response = relay.request("POST", "/publish", json=body)

    assert response.status_code == 200, response.text
    seqs = response.json()["seqs"]
    assert len(seqs) == 3 and seqs == list(range(seqs[0], seqs[0] + 3))
    events = [relay.get(f"/cache/events/{seq}").json() for seq in seqs]
    assert data_of(events) == body
    assert [e["topic"] for e in events] == [f"T.{sym}", "default", f"Q.{sym}"]


@pytest.mark.parametrize(
    "body, content_type",
    [("this is not json", "text/plain"), ("{\"ev\": ", "application/json"), ("", "application/json")],
    ids=["text", "broken-json", "empty"],
)
def test_publishing_something_that_is_not_json_is_a_400(relay, body, content_type):
    last_seq = relay.health()["last_seq"]
    assert_json_error(relay.request("POST", "/publish", data=body, headers={"Content-Type": content_type}), 400)
    assert relay.health()["last_seq"] == last_seq


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_a_body_a_foreign_page_could_send_without_a_preflight_changes_nothing(relay, content_type):
    """An outside audit published events from a page's `<form enctype="text/plain">` and a no-cors fetch
    (admin by loopback peer, ADMIN_TOKEN unset): a browser sends these types cross-site unasked."""
    last_seq, config = relay.health()["last_seq"], relay.get("/cache/config").json()
    headers = {"Content-Type": content_type} if content_type else {}
    for method, path, body in (("POST", "/publish", '{"ev": "CSRF", "sym": "FORM"}'),
                               ("PUT", "/cache/config", '{"ttl_seconds": 5}'),
                               ("POST", "/query", '{"sql": "SELECT 1"}')):
        response = relay.request(method, path, data=body.encode(), headers=headers)
        assert_json_error(response, 400)
        assert "application/json" in response.json()["error"], (path, response.text)
    assert relay.health()["last_seq"] == last_seq
    assert relay.get("/cache/config").json() == config


def test_a_deeply_nested_cache_config_body_is_a_400_not_a_500(relay):
    body = b"[" * 100_000 + b"]" * 100_000
    assert_json_error(relay.request("PUT", "/cache/config", data=body,
                                    headers={"Content-Type": "application/json"}), 400)


# -- /cache/config ---------------------------------------------------------------


def get_config(relay) -> dict:
    response = relay.get("/cache/config")
    assert response.status_code == 200
    return response.json()


def test_cache_config_reports_the_configured_bounds(relay):
    assert get_config(relay) == {"ttl_seconds": TTL_S, "max_items": MAX_ITEMS}


@pytest.mark.parametrize(
    "body",
    [
        {"ttl_seconds": 0},
        {"ttl_seconds": 31536001},
        {"ttl_seconds": -1},
        {"ttl_seconds": "60"},
        {"ttl_seconds": 1.5},
        {"ttl_seconds": True},
        {"ttl_seconds": None},
        {"max_items": 0},
        {"max_items": 10000001},
        {"max_items": "10"},
        {"max_items": False},
        {"ttl_seconds": 60, "max_items": 0},  # one bad value: nothing changes, not even the good one
        {"max_items": 100, "ttl_seconds": 0},
        {"ttl_seconds": 60, "colour": "blue"},
        {},
        [],
        ["ttl_seconds", 60],
        "ttl_seconds=60",
    ],
)
def test_a_bad_cache_config_is_a_400_and_changes_nothing(relay, body):
    before = get_config(relay)
    response = relay.request("PUT", "/cache/config", data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert_json_error(response, 400)
    assert get_config(relay) == before


def test_a_non_json_cache_config_is_a_400(relay):
    before = get_config(relay)
    assert_json_error(relay.request("PUT", "/cache/config", data="ttl_seconds=60"), 400)
    assert get_config(relay) == before


@pytest.mark.parametrize(
    "body",
    [{"ttl_seconds": 1}, {"ttl_seconds": 31536000}, {"max_items": 1}, {"max_items": 10000000},
     {"ttl_seconds": 900, "max_items": 4000}],
)
def test_a_good_cache_config_applies_at_once(relay, body):
    try:
        response = relay.request("PUT", "/cache/config", json=body)
        assert response.status_code == 200, response.text
        expected = {"ttl_seconds": TTL_S, "max_items": MAX_ITEMS} | body
        assert response.json() == expected
        assert get_config(relay) == expected
        stats = relay.get("/cache/stats").json()
        assert (stats["ttl_seconds"], stats["max_items"]) == (expected["ttl_seconds"], expected["max_items"])
    finally:
        relay.request("PUT", "/cache/config", json={"ttl_seconds": TTL_S, "max_items": MAX_ITEMS})


def test_shrinking_max_items_evicts_the_oldest_at_once(relay, upstream):
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 10, sym))
    try:
        assert relay.request("PUT", "/cache/config", json={"max_items": 3}).status_code == 200
        stats = relay.get("/cache/stats").json()
        assert stats["items"] <= 3
        assert stats["newest_seq"] == seqs[-1] and stats["oldest_seq"] == seqs[-3]
        assert seqs_of(relay.get("/cache/recent", params={"limit": 10}).json()["events"]) == seqs[-3:]
        assert_json_error(relay.get(f"/cache/events/{seqs[0]}"), 404)
    finally:
        relay.request("PUT", "/cache/config", json={"max_items": MAX_ITEMS})


def test_shortening_the_ttl_expires_old_events(relay, upstream):
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 3, sym))
    expired_before = relay.get("/cache/stats").json()["expired"]
    try:
        assert relay.request("PUT", "/cache/config", json={"ttl_seconds": 1}).status_code == 200
        wait_until(
            lambda: relay.get("/cache/recent", params={"topics": f"T.{sym}"}).json()["events"] == [],
            10,
            "events older than the 1 s TTL to disappear from /cache/recent",
        )
        assert_json_error(relay.get(f"/cache/events/{seqs[0]}"), 404)
        stats = relay.get("/cache/stats").json()
        assert stats["valid_items"] == 0  # nothing arrived within the last second
        # Expired events are either dropped (and counted) or still held but not valid.
        assert stats["expired"] + stats["items"] - stats["valid_items"] >= expired_before + len(seqs)
    finally:
        relay.request("PUT", "/cache/config", json={"ttl_seconds": TTL_S})


# -- DELETE /cache (last: it empties the module's cache) ---------------------------


def test_delete_cache_clears_it_and_says_how_many_and_seq_goes_on(relay, upstream):
    seqs = feed(relay, upstream, trades(0, 5, unique_sym()))
    items = relay.get("/cache/stats").json()["items"]

    response = relay.request("DELETE", "/cache")

    assert response.status_code == 200
    assert response.json() == {"cleared": items}
    stats = relay.get("/cache/stats").json()
    assert stats["items"] == 0 and stats["valid_items"] == 0
    assert relay.get("/cache/recent").json()["events"] == []
    assert_json_error(relay.get(f"/cache/events/{seqs[-1]}"), 404)
    after = feed(relay, upstream, trades(5, 6, unique_sym()))
    assert after == [seqs[-1] + 1]


# -- admin routes from a peer that is not loopback (ADMIN_TOKEN unset) ---------------


def non_loopback_address() -> str | None:
    """An address of this host that is not a loopback one, if it has any."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))  # no packet is sent: this only picks a route
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_admin_routes_refuse_a_non_loopback_peer_with_403(relay):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to connect from")
    session = requests.Session()
    session.trust_env = False
    base = f"http://{address}:{relay.port}"
    try:
        session.get(base + "/health", timeout=5)
    except requests.ConnectionError:
        pytest.skip(f"the relay does not listen on {address}; cannot reach it from a non-loopback peer")
    before = relay.health()["last_seq"]

    for method, path, body in [
        ("DELETE", "/cache", None),
        ("PUT", "/cache/config", {"ttl_seconds": 5}),
        ("POST", "/publish", {"ev": "T", "sym": "ZZZ"}),
    ]:
        assert_json_error(session.request(method, base + path, json=body, timeout=5), 403)
    assert session.get(base + "/cache/stats", timeout=5).status_code == 200  # a client route: open
    assert get_config(relay) == {"ttl_seconds": TTL_S, "max_items": MAX_ITEMS}
    assert relay.health()["last_seq"] == before
    session.close()


@pytest.mark.parametrize("path", ["/cache/recent?limit=5&limit=abc", "/cache/recent?limit=abc&limit=5",
                                  "/cache/recent?topics=T.A&topics=Q.B", "/history?since=1&since=2",
                                  "/health?strict=0&strict=1", "/sse?topics=T.A&topics=Q.B",
                                  "/query?sql=SELECT%201&sql=SELECT%202"])
def test_a_parameter_given_twice_is_a_400_naming_it(relay, path):
    """Read silently, the first value won: `limit=5&limit=abc` was served and `topics=T.A&topics=Q.B` dropped
    Q.B (an outside audit)."""
    response = relay.get(path)
    assert_json_error(response, 400)
    name = path.split("?")[1].split("=")[0]
    assert f"'{name}'" in response.json()["error"] and "more than once" in response.json()["error"]


def test_a_ws_upgrade_with_a_parameter_given_twice_is_refused_before_the_upgrade(relay):
    from support.clients import upgrade_headers

    with requests.Session() as session:
        response = session.get(relay.url + "/ws?topics=T.A&topics=Q.B", headers=upgrade_headers(), timeout=10)
        assert_json_error(response, 400)


def test_every_answer_says_its_type_is_not_to_be_sniffed(relay):
    """Only /monitor said so; its assets (JS, CSS, an SVG), the JSON routes and their errors did not."""
    for path in ("/health", "/metrics", "/monitor", "/monitor/assets/monitor.js", "/monitor/assets/favicon.svg",
                 "/cache/recent", "/openapi.json", "/no-such-route", "/cache/recent?limit=x"):
        response = relay.get(path)
        assert response.headers.get("X-Content-Type-Options") == "nosniff", (path, response.status_code)
