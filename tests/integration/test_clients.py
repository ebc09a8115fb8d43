"""GET /clients (docs/api.md): this worker's clients, each in its delivery mode (contract §12), bounded.

Clients in every mode are connected to a real relay: one live, one at
max_hz=2 on /ws, one at max_hz=0.5 on /sse, and one that stops reading with
on_slow=conflate (it turns conflated once its backlog passes the bound, as in
test_conflation.py). The listing must say each one's mode, rate and
subscription, count them as /health does, and put the slow one first.
"""

from __future__ import annotations

import json

import pytest
from support.clients import RawWsClient, WsClient
from support.cluster import cluster_env
from support.events import unique_sym
from support.procnet import children, owner_of_connection
from support.waiting import wait_until

from tests.integration.test_conflation import Feeder, topics_for

RELAY_ENV = {"WS_QUEUE_MAX_EVENTS": "300", "WS_QUEUE_MAX_BYTES": "262144"}


def listing(relay, **params) -> dict:
    response = relay.get("/clients", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def rows_for(body: dict, sym: str) -> dict[tuple[str, ...], dict]:
    """This test's clients (their patterns name its symbol), by their patterns."""
    return {tuple(row["topics"]["patterns"]): row for row in body["clients"]
            if any(sym in p for p in row["topics"]["patterns"])}


def test_the_listing_shows_each_clients_mode_rate_and_subscription_the_slow_one_first(relay, upstream, ws, sse):
    sym = unique_sym()
    live = ws(relay, topics=f"T.{sym}", snapshot=0)
    rated = ws(relay, topics=f"T.{sym},Q.{sym}", snapshot=0, max_hz=2)
    streamed = sse(relay, topics=f"Q.{sym}", snapshot=0, max_hz=0.5)
    live.read_snapshot()
    rated.read_snapshot()
    assert streamed.status == 200
    stalled = RawWsClient("127.0.0.1", relay.port, relay.target("/ws", topics=f"T.{sym}*,Q.{sym}", snapshot=0,
                                                               on_slow="conflate"))
    try:
        with Feeder(upstream, topics_for(sym), pad="x" * 2048):
            wait_until(lambda: rows_for(listing(relay, limit=1000), sym).get((f"T.{sym}*", f"Q.{sym}"), {}).get(
                "mode") == "conflated", 30, "the stalled client to be listed as conflated")
            # read while the feed still runs: once it stops, what is left fits the kernel's buffers and the
            # stalled client has rightly caught up (slow -> live)
            body = listing(relay, limit=1000)
            health = relay.health()
    finally:
        stalled.close()

    mine = rows_for(body, sym)
    assert {k: (r["transport"], r["mode"], r["max_hz"], r["on_slow"]) for k, r in mine.items()} == {
        (f"T.{sym}",): ("ws", "live", None, "close"),
        (f"T.{sym}", f"Q.{sym}"): ("ws", "rate", 2, "close"),
        (f"Q.{sym}",): ("sse", "rate", 0.5, "close"),
        (f"T.{sym}*", f"Q.{sym}"): ("ws", "conflated", None, "conflate"),
    }
    assert body["clients"][0]["mode"] == "conflated"  # the slow one leads the list
    for row in mine.values():
        assert row["topics"]["count"] == len(row["topics"]["patterns"])
        assert row["queued_events"] >= 0 and row["queued_bytes"] >= 0
        assert 0 <= row["connected_s"] < 120
    assert mine[(f"T.{sym}",)]["connected_s"] >= mine[(f"T.{sym}*", f"Q.{sym}")]["connected_s"]
    assert len({row["id"] for row in body["clients"]}) == len(body["clients"])

    # the same counts as /health (one worker here), by mode and by group
    assert body["total"] == health["clients"] == len(body["clients"])
    assert body["by_mode"] == health["clients_by_mode"]
    assert sum(g["clients"] for g in body["groups"]) == body["total"]
    assert {"transport": "sse", "mode": "rate", "max_hz": 0.5, "clients": 1} in body["groups"]
    # the worker that answered: a gunicorn worker of this relay
    assert body["worker"] in children(relay.proc.pid)

    # an id names the same client from one listing to the next
    again = rows_for(listing(relay, limit=1000), sym)
    assert again[(f"T.{sym}",)]["id"] == mine[(f"T.{sym}",)]["id"]


def test_limit_bounds_the_rows_not_the_counts(relay, ws):
    for _ in range(3):
        ws(relay, topics=f"T.{unique_sym()}", snapshot=0).read_snapshot()
    full = listing(relay)
    assert full["total"] >= 3 and len(full["clients"]) == min(full["total"], 100)
    one = listing(relay, limit=1)
    assert len(one["clients"]) == 1 and one["total"] == full["total"] and one["by_mode"] == full["by_mode"]
    assert len(listing(relay, limit="")["clients"]) == len(full["clients"])  # empty: the default


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "100000", "1001", "1.5", "1e3", " "])
def test_a_limit_outside_1_to_1000_is_a_json_400_naming_it(relay, bad):
    response = relay.get("/clients", params={"limit": bad})
    assert response.status_code == 400 and response.headers["Content-Type"].startswith("application/json")
    assert "limit" in response.json()["error"]


def test_tokens_are_needed_never_shown_and_a_topic_limited_token_is_refused(fresh_upstream, launch_relay):
    open_token, limited_token = "clients-open-5c1d", "clients-limited-77ae"
    relay = launch_relay(fresh_upstream, {"API_TOKENS": f"{open_token},{limited_token}",
                                          "TOKEN_TOPICS": json.dumps({limited_token: ["T.*"]})})
    client = WsClient(relay.ws_url("/ws", topics="T.X", snapshot=0, token=open_token))
    try:
        client.read_snapshot()
        assert relay.get("/clients").status_code == 401
        granted = relay.get("/clients", headers={"Authorization": f"Bearer {open_token}"})
        assert granted.status_code == 200 and granted.json()["total"] == 1
        assert open_token not in granted.text and "token" not in granted.text
        refused = relay.get("/clients", params={"token": limited_token})
        assert refused.status_code == 403 and "TOKEN_TOPICS" in refused.json()["error"]
    finally:
        client.close()


def test_with_several_workers_each_lists_its_own_clients_and_says_which_it_is(prefix, fresh_upstream,
                                                                            launch_relay, ws):
    relay = launch_relay(fresh_upstream, cluster_env(prefix, WEB_CONCURRENCY="2"))
    workers = wait_until(lambda: children(relay.proc.pid) if len(children(relay.proc.pid)) == 2 else None, 20,
                         "two workers")
    ready: set[str] = set()  # both workers accepting and serving before any client connects

    def both_ready() -> bool:
        health = relay.health()
        if health["ready"]:
            ready.add(health["bus"]["worker"])
        return len(ready) == 2

    wait_until(both_ready, 20, "both workers ready", interval_s=0.01)
    sym = unique_sym()
    owned: dict[int, int] = dict.fromkeys(workers, 0)
    for _ in range(100):
        client = ws(relay, topics=f"T.{sym}", snapshot=0)
        client.read_snapshot()
        owned[owner_of_connection(relay.port, client.conn.socket.getsockname()[1], workers)] += 1
        if all(owned.values()):
            break
    assert all(owned.values()), f"the kernel gave every connection to one worker: {owned}"

    answers: dict[int, dict] = {}
    wait_until(lambda: answers.update({(b := listing(relay, limit=1000))["worker"]: b}) or len(answers) == 2, 15,
               "answers from both workers", interval_s=0.01)
    assert set(answers) == set(workers)
    for pid, body in answers.items():
        assert body["total"] == owned[pid] == len(body["clients"]), (pid, owned)
        assert all(row["topics"]["patterns"] == [f"T.{sym}"] for row in body["clients"])
