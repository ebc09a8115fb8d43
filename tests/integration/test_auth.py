"""Tokens: client routes with API_TOKENS, admin routes with ADMIN_TOKEN, refusals before any
upgrade (contract §6, §10)."""

from __future__ import annotations

import pytest
import requests
from support.clients import upgrade_headers
from support.events import feed, seqs_of, trades, unique_sym

CLIENT_TOKENS = ("client-token-alpha", "client-token-bravo")
ADMIN_TOKEN = "admin-token-charlie"
RELAY_ENV = {"API_TOKENS": ",".join(CLIENT_TOKENS), "ADMIN_TOKEN": ADMIN_TOKEN}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

CLIENT_ROUTES = ["/cache/stats", "/cache/recent", "/cache/search?q=a", "/cache/events/1", "/cache/config"]


def assert_unauthorized(response: requests.Response) -> None:
    assert response.status_code == 401, (response.status_code, response.text[:300])
    assert response.headers.get("Content-Type", "").startswith("application/json")
    assert isinstance(response.json().get("error"), str)


@pytest.fixture(scope="module")
def known_seq(relay) -> int:
    """A seq that is in the cache, so /cache/events/<seq> answers 200 when authorised."""
    response = relay.request("POST", "/publish", json={"ev": "T", "sym": "AUTH"}, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["seqs"][0]


def client_route(path: str, seq: int) -> str:
    return path.replace("/cache/events/1", f"/cache/events/{seq}")


# -- client routes -------------------------------------------------------------


@pytest.mark.parametrize("path", CLIENT_ROUTES)
def test_client_routes_refuse_a_missing_or_wrong_token_with_401(relay, known_seq, path):
    path = client_route(path, known_seq)
    assert_unauthorized(relay.get(path))
    assert_unauthorized(relay.get(path, headers={"Authorization": "Bearer not-a-token"}))
    separator = "&" if "?" in path else "?"
    assert_unauthorized(relay.get(f"{path}{separator}token=not-a-token"))
    assert_unauthorized(relay.get(path, headers={"Authorization": f"Bearer {CLIENT_TOKENS[0]}x"}))


@pytest.mark.parametrize("path", CLIENT_ROUTES)
def test_client_routes_take_a_token_as_query_parameter_or_bearer_header(relay, known_seq, path):
    path = client_route(path, known_seq)
    separator = "&" if "?" in path else "?"
    assert relay.get(f"{path}{separator}token={CLIENT_TOKENS[0]}").status_code == 200
    assert relay.get(path, headers={"Authorization": f"Bearer {CLIENT_TOKENS[1]}"}).status_code == 200


@pytest.mark.parametrize("path", ["/health", "/metrics", "/openapi.json", "/monitor"])
def test_open_routes_need_no_token(relay, path):
    assert relay.get(path).status_code == 200


@pytest.mark.parametrize("params", [{}, {"token": "not-a-token"}], ids=["no-token", "wrong-token"])
def test_ws_without_a_valid_token_is_refused_with_401_before_the_upgrade(relay, params):
    # A session of its own: "Connection: Upgrade" would leave its socket pooled.
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(relay.url + relay.target("/ws", **params), headers=upgrade_headers(), timeout=10)
    assert response.status_code != 101
    assert_unauthorized(response)


@pytest.mark.parametrize("params", [{}, {"token": "not-a-token"}], ids=["no-token", "wrong-token"])
def test_sse_without_a_valid_token_is_refused_with_401(relay, params):
    response = relay.get(relay.target("/sse", **params), headers={"Accept": "text/event-stream"}, stream=True)
    try:
        assert_unauthorized(response)
    finally:
        response.close()


def test_ws_with_a_token_streams(relay, upstream, ws):
    sym = unique_sym()
    by_query = ws(relay, topics=f"T.{sym}", snapshot=0, token=CLIENT_TOKENS[0])
    by_header = ws(relay, topics=f"T.{sym}", snapshot=0, headers={"Authorization": f"Bearer {CLIENT_TOKENS[1]}"})
    by_query.read_snapshot()
    by_header.read_snapshot()

    seqs = feed(relay, upstream, trades(0, 2, sym))

    assert seqs_of(by_query.wait_for_events(2)) == seqs
    assert seqs_of(by_header.wait_for_events(2)) == seqs


def test_sse_with_a_token_streams(relay, upstream, sse):
    sym = unique_sym()
    stream = sse(relay, topics=f"T.{sym}", snapshot=0, token=CLIENT_TOKENS[1])
    assert stream.status == 200
    seqs = feed(relay, upstream, trades(0, 2, sym))
    assert seqs_of(stream.events(2)) == seqs


# -- admin routes ----------------------------------------------------------------

ADMIN_REQUESTS = [
    ("DELETE", "/cache", None),
    ("PUT", "/cache/config", {"ttl_seconds": 77}),
    ("POST", "/publish", {"ev": "T", "sym": "NOPE"}),
]


@pytest.mark.parametrize("method, path, body", ADMIN_REQUESTS, ids=["delete-cache", "put-config", "publish"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {CLIENT_TOKENS[0]}"},  # a client token is not an admin token
        {"Authorization": ADMIN_TOKEN},  # not a bearer credential
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
    ],
    ids=["none", "wrong", "client-token", "no-scheme", "basic"],
)
def test_admin_routes_refuse_a_missing_or_wrong_admin_token_with_401(relay, known_seq, method, path, body, headers):
    before = relay.health()["last_seq"]
    config = relay.get("/cache/config", headers={"Authorization": f"Bearer {CLIENT_TOKENS[0]}"}).json()

    assert_unauthorized(relay.request(method, path, json=body, headers=headers))

    assert relay.health()["last_seq"] == before
    assert relay.get("/cache/config", headers={"Authorization": f"Bearer {CLIENT_TOKENS[0]}"}).json() == config
    assert relay.get(f"/cache/events/{known_seq}", params={"token": CLIENT_TOKENS[0]}).status_code == 200


def test_admin_routes_accept_the_admin_bearer_token(relay, known_seq):
    published = relay.request("POST", "/publish", json={"ev": "T", "sym": "ADM"}, headers=ADMIN)
    assert published.status_code == 200 and len(published.json()["seqs"]) == 1

    configured = relay.request("PUT", "/cache/config", json={"ttl_seconds": 600}, headers=ADMIN)
    assert configured.status_code == 200 and configured.json()["ttl_seconds"] == 600

    invalid = relay.request("PUT", "/cache/config", json={"ttl_seconds": 0}, headers=ADMIN)
    assert invalid.status_code == 400  # authorised, then validated

    cleared = relay.request("DELETE", "/cache", headers=ADMIN)
    assert cleared.status_code == 200 and cleared.json()["cleared"] >= 2


# -- secrecy (last: it reads the whole log of the module's relay) ---------------------------


def test_tokens_never_appear_in_the_logs(relay):
    log = relay.log_text()
    for secret in (*CLIENT_TOKENS, ADMIN_TOKEN):
        assert secret not in log, f"{secret!r} was logged"
