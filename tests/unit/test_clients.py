"""handlers/clients.py: the /clients listing from plain client states (no sockets, no clock)."""

from handlers.clients import GROUPS_MAX, PATTERNS_SHOWN, ClientState, client_id, client_listing

KEY = b"k" * 16
NOW = 1000.0


def state(ref: int, *, transport="ws", mode="live", max_hz=None, on_slow="close", patterns=("*",),
          connected_at_s=NOW - 10.0, queued_events=0, queued_bytes=0) -> ClientState:
    return ClientState(ref, transport, mode, max_hz, on_slow, patterns, connected_at_s, queued_events, queued_bytes)


def listing(states, limit=100, key=KEY):
    return client_listing(states, limit=limit, now_s=NOW, worker=4321, key=key)


def test_an_empty_worker_lists_no_client_and_counts_every_mode_as_zero():
    assert listing([]) == {"worker": 4321, "total": 0, "by_mode": {"live": 0, "rate": 0, "conflated": 0},
                           "groups_total": 0, "groups": [], "clients": []}


def test_a_client_row_says_its_mode_rate_topics_queue_and_age_and_nothing_else():
    body = listing([state(7, transport="sse", mode="rate", max_hz=2.0, on_slow="conflate", patterns=("T.*", "Q.AAPL"),
                          connected_at_s=NOW - 12.34, queued_events=3, queued_bytes=450)])
    assert body["clients"] == [{
        "id": client_id(7, KEY), "transport": "sse", "mode": "rate", "max_hz": 2.0, "on_slow": "conflate",
        "topics": {"patterns": ["T.*", "Q.AAPL"], "count": 2}, "connected_s": 12.3,
        "queued_events": 3, "queued_bytes": 450}]
    assert body["total"] == 1 and body["by_mode"] == {"live": 0, "rate": 1, "conflated": 0}


def test_slow_conflated_clients_come_first_then_the_most_queued_then_the_longest_connected():
    states = [
        state(1, queued_events=0, connected_at_s=NOW - 5),
        state(2, queued_events=50, queued_bytes=10),
        state(3, mode="conflated", on_slow="conflate", queued_events=1),
        state(4, queued_events=0, connected_at_s=NOW - 50),
        state(5, queued_events=50, queued_bytes=900),
        state(6, mode="conflated", on_slow="conflate", queued_events=9),
    ]
    order = [row["id"] for row in listing(states)["clients"]]
    assert order == [client_id(ref, KEY) for ref in (6, 3, 5, 2, 4, 1)]


def test_the_limit_cuts_the_rows_but_not_the_counts():
    states = [state(ref, mode="rate" if ref % 3 == 0 else "live", max_hz=1.0 if ref % 3 == 0 else None,
                    queued_events=ref) for ref in range(1, 31)]
    body = listing(states, limit=4)
    assert [row["queued_events"] for row in body["clients"]] == [30, 29, 28, 27]
    assert body["total"] == 30
    assert body["by_mode"] == {"live": 20, "rate": 10, "conflated": 0}
    assert sum(group["clients"] for group in body["groups"]) == 30


def test_groups_are_transport_mode_and_rate_largest_first():
    states = ([state(r, transport="ws", mode="live") for r in range(3)]
              + [state(10 + r, transport="sse", mode="rate", max_hz=2.0) for r in range(5)]
              + [state(20 + r, transport="sse", mode="rate", max_hz=0.5) for r in range(2)]
              + [state(30, transport="ws", mode="conflated", on_slow="conflate")])
    assert listing(states)["groups"] == [
        {"transport": "sse", "mode": "rate", "max_hz": 2.0, "clients": 5},
        {"transport": "ws", "mode": "live", "max_hz": None, "clients": 3},
        {"transport": "sse", "mode": "rate", "max_hz": 0.5, "clients": 2},
        {"transport": "ws", "mode": "conflated", "max_hz": None, "clients": 1},
    ]


def test_groups_are_bounded_whatever_rates_the_clients_choose():
    states = [state(r, mode="rate", max_hz=1 + r / 1000) for r in range(GROUPS_MAX + 50)]
    body = listing(states)
    assert len(body["groups"]) == GROUPS_MAX and body["groups_total"] == GROUPS_MAX + 50


def test_a_long_subscription_shows_its_first_patterns_and_its_count():
    patterns = tuple(f"T.S{n}" for n in range(1000))
    row = listing([state(1, patterns=patterns)])["clients"][0]
    assert row["topics"] == {"patterns": list(patterns[:PATTERNS_SHOWN]), "count": 1000}


def test_a_polygon_client_with_no_topic_yet_and_no_connect_time_still_lists():
    row = listing([state(1, transport="polygon", patterns=(), connected_at_s=None)])["clients"][0]
    assert row["topics"] == {"patterns": [], "count": 0} and row["connected_s"] is None


def test_ids_are_stable_for_a_key_opaque_and_differ_between_clients_and_keys():
    assert client_id(140234, KEY) == client_id(140234, KEY)
    assert client_id(140234, KEY) != client_id(140235, KEY)
    assert client_id(140234, KEY) != client_id(140234, b"other key 123456")
    assert "140234" not in client_id(140234, KEY) and format(140234, "x") not in client_id(140234, KEY)


def test_a_clock_that_went_behind_a_connect_time_gives_zero_not_a_negative_age():
    assert listing([state(1, connected_at_s=NOW + 3)])["clients"][0]["connected_s"] == 0.0
