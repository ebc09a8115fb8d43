"""handlers.polygon: the Polygon/Massive client protocol, data frames under 1 MiB, upstream statuses."""

import json
from itertools import pairwise
from pathlib import Path

import pytest

from handlers import polygon
from handlers.events import make_event
from handlers.frames import Element, RawText, parse_frame
from handlers.polygon import (
    AUTH_FAILED,
    AUTH_SUCCESS,
    CONNECTED,
    MAX_FRAME_BYTES,
    Auth,
    BadAction,
    TopicChange,
    change_reply,
    closing_frame,
    data_frames,
    is_status,
    parse_action,
    split_params,
    split_statuses,
    status_problem,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TS = 1_764_124_800_123


def trade(seq: int, sym: str = "AAPL", **extra) -> object:
    data = {"ev": "T", "sym": sym, "p": 191.2, "s": 100, "t": TS, **extra}
    return make_event(seq, TS, f"T.{sym}", data)


# -- status frames ------------------------------------------------------------------------


def test_the_greeting_and_auth_replies_are_the_vendors_arrays():
    assert json.loads(CONNECTED) == [{"ev": "status", "status": "connected", "message": "Connected Successfully"}]
    assert json.loads(AUTH_SUCCESS) == [{"ev": "status", "status": "auth_success", "message": "authenticated"}]
    assert json.loads(AUTH_FAILED) == [{"ev": "status", "status": "auth_failed", "message": "authentication failed"}]


def test_a_closing_status_names_the_reason():
    (slow,) = json.loads(closing_frame("slow_consumer"))
    assert (slow["ev"], slow["status"]) == ("status", "slow_consumer")
    assert json.loads(closing_frame("odd"))[0]["status"] == "odd"


# -- client actions -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "action"), [
    ('{"action":"auth","params":"KEY"}', Auth("KEY")),
    ('{"action":"auth"}', Auth(None)),
    ('{"action":"auth","params":7}', Auth(None)),
    ('{"action":"subscribe","params":"T.AAPL, Q.*"}', TopicChange("subscribe", ("T.AAPL", "Q.*"))),
    ('{"action":"subscribe","params":" T.AAPL ,T.AAPL,,T.MSFT "}', TopicChange("subscribe", ("T.AAPL", "T.MSFT"))),
    ('{"action":"subscribe","params":["T.*","Q.AAPL"]}', TopicChange("subscribe", ("T.*", "Q.AAPL"))),
    ('{"action":"unsubscribe","params":"Q.*"}', TopicChange("unsubscribe", ("Q.*",))),
    (b'{"params":"XT.BTC-USD","action":"subscribe"}', TopicChange("subscribe", ("XT.BTC-USD",))),
])
def test_client_messages_become_actions(text, action):
    assert parse_action(text) == action


@pytest.mark.parametrize(("text", "says"), [
    ("not json", "not JSON"),
    ("[1]", "JSON object"),
    ('{"params":"T.*"}', "missing 'action'"),
    ('{"action":"ping"}', "unknown action"),
    ('{"action":"subscribe"}', "'params' must be a string"),
    ('{"action":"subscribe","params":" , "}', "no topics"),
])
def test_unusable_messages_say_why(text, says):
    action = parse_action(text)
    assert isinstance(action, BadAction) and says in action.message


def test_params_are_trimmed_and_bad_topics_refused_one_by_one():
    topics, refused = split_params("T.AAPL , T*.X, Q.*")
    assert topics == ("T.AAPL", "Q.*")
    assert [t for t, _ in refused] == ["T*.X"]


def test_a_subscribe_acks_each_topic_and_adds_to_the_subscription():
    topics, reply = change_reply(TopicChange("subscribe", ("T.MSFT", "Q.*"), (("T*.X", "bad"),)), ("T.AAPL", "Q.*"))
    assert topics == ("T.AAPL", "Q.*", "T.MSFT")
    assert json.loads(reply) == [
        {"ev": "status", "status": "success", "message": "subscribed to: T.MSFT"},
        {"ev": "status", "status": "success", "message": "subscribed to: Q.*"},
        {"ev": "status", "status": "error", "message": "invalid topic 'T*.X': bad"},
    ]


def test_an_unsubscribe_acks_each_topic_and_removes_it():
    topics, reply = change_reply(TopicChange("unsubscribe", ("Q.*", "T.NONE")), ("T.AAPL", "Q.*"))
    assert topics == ("T.AAPL",)
    assert [s["message"] for s in json.loads(reply)] == ["unsubscribed to: Q.*", "unsubscribed to: T.NONE"]


def test_the_subscription_is_bounded():
    current = tuple(f"T.S{i}" for i in range(polygon.MAX_TOPICS))
    topics, reply = change_reply(TopicChange("subscribe", ("T.S0", "T.NEW")), current)
    assert topics == current
    assert [s["status"] for s in json.loads(reply)] == ["success", "error"]


# -- data frames -----------------------------------------------------------------------------


def test_data_frames_are_arrays_of_the_upstream_elements():
    events = [trade(1), trade(2, "MSFT")]
    (frame,) = data_frames(events)
    assert json.loads(frame) == [events[0].data, events[1].data]
    assert frame == b"[" + events[0].data_json + b"," + events[1].data_json + b"]"


def test_events_that_are_not_market_objects_are_left_out():
    events = [make_event(1, TS, "default", "raw text", raw=True), make_event(2, TS, "default", 7),
              make_event(3, TS, "AAPL", {"sym": "AAPL"}), trade(4)]
    assert [json.loads(f) for f in data_frames(events)] == [[events[3].data]]
    assert data_frames(events[:3]) == []


def test_a_big_batch_is_split_into_frames_under_the_limit_in_order():
    events = [trade(i, pad="x" * 900) for i in range(1, 3001)]
    frames = data_frames(events)
    assert len(frames) >= 3
    assert all(len(f) < MAX_FRAME_BYTES - 10 for f in frames)
    assert [d for f in frames for d in json.loads(f)] == [e.data for e in events]


@pytest.mark.parametrize("limit", [60, 61, 100, 150, 1000])
def test_splitting_is_exact_at_any_limit(limit):
    events = [trade(i, "A" * (i % 7)) for i in range(1, 40)]
    fitting = [e for e in events if len(e.data_json) + 2 <= limit - 16]
    frames = data_frames(events, max_bytes=limit)
    assert all(len(f) <= limit - 16 for f in frames)
    assert [d for f in frames for d in json.loads(f)] == [e.data for e in fitting]
    # greedy: no two neighbours would have fitted in one frame
    assert all(len(a) + len(b) - 1 > limit - 16 for a, b in pairwise(frames))


def test_an_element_too_big_for_any_frame_is_left_out():
    events = [trade(1), trade(2, pad="x" * MAX_FRAME_BYTES), trade(3)]
    assert [json.loads(f) for f in data_frames(events)] == [[events[0].data, events[2].data]]


# -- upstream statuses -------------------------------------------------------------------------


def fixture_elements(name: str) -> list[Element]:
    lines = (FIXTURES / name).read_bytes().splitlines()
    return [el for line in lines for el in parse_frame(line, binary=False, max_bytes=1 << 22).elements]


def test_polygon_status_messages_are_told_apart_from_market_data():
    elements = fixture_elements("polygon_stocks.jsonl")
    market, statuses = split_statuses(elements)
    assert [s["status"] for s in statuses] == ["connected", "auth_success", "success", "success", "success",
                                                "max_connections"]
    assert market == [el for el in elements if el.get("ev") != "status"]
    assert {el["ev"] for el in market} == {"T", "Q", "AM"}


def test_a_frame_without_statuses_comes_back_uncopied():
    elements = ({"ev": "T", "sym": "AAPL"}, {"ev": "Q", "sym": "AAPL"})
    market, statuses = split_statuses(elements)
    assert market is elements and statuses == []


def test_statuses_mixed_into_a_frame_keep_the_others_in_order():
    a, b = {"ev": "T", "n": 1}, {"ev": "T", "n": 2}
    s = {"ev": "status", "status": "success", "message": "x"}
    assert split_statuses([a, s, b, s]) == ([a, b], [s, s])


@pytest.mark.parametrize(("data", "status"), [
    ({"ev": "status", "status": "connected", "message": "Connected Successfully"}, True),
    ({"ev": "status", "status": "auth_failed"}, True),
    ({"ev": "status", "message": "AAPL"}, False),  # another feed's events that happen to say ev=status
    ({"ev": "status", "status": "ok", "message": "x", "sym": "AAPL"}, False),
    ({"ev": "status", "status": 1}, False),
    ({"ev": "status", "status": "ok", "message": 5}, False),
    ({"ev": "T", "status": "ok"}, False),
    ("status", False),
])
def test_only_the_exact_status_shape_counts(data, status):
    assert is_status(data) is status


def test_a_raw_element_is_never_a_status():
    raw = RawText('{"ev": "status", "status": "x"}')
    assert split_statuses([raw]) == ([raw], [])


@pytest.mark.parametrize(("message", "problem"), [
    ({"ev": "status", "status": "connected", "message": "Connected Successfully"}, None),
    ({"ev": "status", "status": "auth_success", "message": "authenticated"}, None),
    ({"ev": "status", "status": "success", "message": "subscribed to: T.*"}, None),
    ({"ev": "status", "status": "auth_failed", "message": "authentication failed"},
     "upstream status auth_failed: authentication failed"),
    ({"ev": "status", "status": "max_connections"}, "upstream status max_connections"),
])
def test_statuses_other_than_the_ok_ones_are_problems(message, problem):
    assert status_problem(message) == problem


def test_a_subscribe_of_more_topics_than_the_per_message_bound_is_refused_whole():
    many = ",".join(f"T.S{n}" for n in range(polygon.MAX_PATTERNS + 1))
    assert parse_action(json.dumps({"action": "subscribe", "params": many})) == BadAction(
        f"subscribe: at most {polygon.MAX_PATTERNS} topics in one message")
    ok = ",".join(f"T.S{n}" for n in range(polygon.MAX_PATTERNS)) + ",,"
    assert len(parse_action(json.dumps({"action": "subscribe", "params": ok})).topics) == polygon.MAX_PATTERNS


def test_a_topic_that_is_not_unicode_text_is_refused_and_its_status_can_be_sent():
    change = parse_action('{"action":"subscribe","params":"T.A\\udfff,T.B"}')
    assert change.topics == ("T.B",)
    (topic, why), = change.refused
    assert topic == "T.A\ufffd" and "surrogate" in why
    topic.encode()  # the status naming it encodes
