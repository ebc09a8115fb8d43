"""handlers.protocol: client frames in; server messages, WebSocket frames and SSE out."""

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers import protocol
from handlers.events import make_event
from handlers.protocol import (
    OP_CLOSE,
    OP_TEXT,
    PONG_MESSAGE,
    SSE_KEEPALIVE,
    Action,
    BadFrame,
    closing_message,
    error_message,
    events_message,
    parse_client_message,
    slow_message,
    snapshot_message,
    sse_closing,
    sse_event,
    sse_events,
    sse_gap,
    subscribed_message,
    ws_close_frame,
    ws_frame,
)
from handlers.topics import MAX_PATTERNS

PROPERTY = settings(max_examples=200, deadline=None)
TS = 1_764_124_800_123

AAPL = make_event(1042, TS, "T.AAPL", {"ev": "T", "sym": "AAPL", "p": 191.2, "s": 100})
MSFT = make_event(1043, TS, "Q.MSFT", {"ev": "Q", "sym": "MSFT", "bp": 485.05},
                  enrichment={"avg_p_1m": 485.1})
RAW = make_event(1044, TS, "default", "line one\nline two\r\n", raw=True)


# -- client -> server -------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "action"), [
    ('{"action":"ping"}', Action("ping")),
    ('{"action":"ping","topics":"ignored"}', Action("ping")),
    ('{"action":"subscribe","topics":["T.*","Q.AAPL"]}', Action("subscribe", ("T.*", "Q.AAPL"))),
    ('{"action":"subscribe","topics":[" T.* ","T.*"]}', Action("subscribe", ("T.*",))),
    ('{"action":"subscribe","topics":"T.AAPL"}', Action("subscribe", ("T.AAPL",))),
    # one string is read as `topics=` is: comma-separated (it was one pattern "T.A,Q.B" that matched nothing)
    ('{"action":"subscribe","topics":"T.A, Q.B"}', Action("subscribe", ("T.A", "Q.B"))),
    ('{"action":"unsubscribe","topics":["Q.*"]}', Action("unsubscribe", ("Q.*",))),
    ('{"topics":["*"],"action":"subscribe","extra":1}', Action("subscribe", ("*",))),
    (b'{"action":"ping"}', Action("ping")),
])
def test_usable_client_frames_become_actions(frame, action):
    assert parse_client_message(frame) == action


@pytest.mark.parametrize(("frame", "message"), [
    ("", "frame is not JSON"),
    ("ping", "frame is not JSON"),
    ('{"action":"ping"', "frame is not JSON"),
    ('{"action":NaN}', "frame is not JSON"),
    (b'{"action":"\xff"}', "frame is not JSON"),
    ("[" * 5000 + "]" * 5000, "frame is not JSON"),
    ('["ping"]', "frame must be a JSON object"),
    ('"ping"', "frame must be a JSON object"),
    ("null", "frame must be a JSON object"),
    ("{}", "missing 'action'"),
    ('{"action":null}', "missing 'action'"),
    ('{"action":"auth","params":"KEY"}',
     "unknown action 'auth'; expected subscribe, unsubscribe or ping"),
    ('{"action":7}', "unknown action '7'; expected subscribe, unsubscribe or ping"),
    ('{"action":["ping"]}',
     "unknown action \"['ping']\"; expected subscribe, unsubscribe or ping"),
    ('{"action":"' + "x" * 100 + '"}',
     f"unknown action '{'x' * 64}'; expected subscribe, unsubscribe or ping"),
    ('{"action":"subscribe"}', "subscribe: 'topics' must be a list of patterns"),
    ('{"action":"subscribe","topics":{"T.*":1}}',
     "subscribe: 'topics' must be a list of patterns"),
    ('{"action":"unsubscribe","topics":7}',
     "unsubscribe: 'topics' must be a list of patterns"),
    ('{"action":"subscribe","topics":[]}', "subscribe: no topic patterns"),
    ('{"action":"subscribe","topics":[""]}', "subscribe: empty topic pattern"),
    ('{"action":"subscribe","topics":["T.A\\udfff"]}',
     "subscribe: topic pattern holds a lone surrogate (\\ud800-\\udfff): not Unicode text"),
    ('{"action":"subscribe","topics":[1]}',
     "subscribe: topic pattern must be a string, got int"),
    ('{"action":"subscribe","topics":["*.AAPL"]}',
     "subscribe: '*' may only end a topic pattern: '*.AAPL'"),
    (json.dumps({"action": "subscribe", "topics": ["A"] * (MAX_PATTERNS + 1)}),
     f"subscribe: at most {MAX_PATTERNS} topic patterns"),
])
def test_unusable_client_frames_become_an_error_to_send_back(frame, message):
    got = parse_client_message(frame)
    if message == "frame is not JSON":  # with the parser's reason after it, in brackets
        assert isinstance(got, BadFrame) and got.message.startswith("frame is not JSON (") and len(got.message) < 110
    else:
        assert got == BadFrame(message)


@pytest.mark.parametrize(("frame", "reason"), [
    ('{"action":"subscribe","topics":["*"],"max_hz":1e400}', "number out of range"),
    ('{"action":"ping","n":' + "9" * 5000 + "}", "digits"),
])
def test_json_the_parser_cannot_take_is_told_why(frame, reason):
    """Valid JSON with a number past what the parser takes was told only "frame is not JSON" (an outside audit)."""
    got = parse_client_message(frame)
    assert isinstance(got, BadFrame) and reason in got.message, got


def test_a_rate_out_of_range_is_shown_as_given():
    got = parse_client_message('{"action":"subscribe","topics":["*"],"max_hz":1000.0000000000001}')
    assert got == BadFrame("subscribe: 'max_hz' must be in (0, 1000], got 1000.0000000000001")


@PROPERTY
@given(st.text(st.characters()) | st.binary())
def test_any_client_frame_is_interpreted_without_raising(frame):
    assert isinstance(parse_client_message(frame), (Action, BadFrame))


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12,
)


@PROPERTY
@given(st.sampled_from(["subscribe", "unsubscribe", "ping", "auth", ""]) | JSONISH,
       JSONISH)
def test_any_action_and_topics_give_an_action_or_an_error(action, topics):
    result = parse_client_message(json.dumps({"action": action, "topics": topics}))
    if isinstance(result, Action):
        assert result.kind == action
    else:
        assert isinstance(result.message, str)
        assert len(result.message) < 500


# -- server -> client messages --------------------------------------------------------------


def test_an_events_message_carries_the_events_own_json():
    message = events_message([AAPL, MSFT])
    assert message == b'{"type":"events","events":[' + AAPL.json + b"," + MSFT.json + b"]}"
    assert json.loads(message) == {"type": "events", "events": [AAPL.as_dict(), MSFT.as_dict()]}


def test_an_events_message_may_carry_a_generator_or_nothing():
    assert json.loads(events_message(e for e in [RAW])) == {
        "type": "events", "events": [RAW.as_dict()]}
    assert events_message([]) == b'{"type":"events","events":[]}'


def test_a_snapshot_message_is_valid_json_with_the_contract_fields():
    message = snapshot_message("e1", 1043, True, [AAPL, MSFT])
    assert json.loads(message) == {
        "type": "snapshot", "epoch": "e1", "last_seq": 1043, "recovered": True,
        "events": [AAPL.as_dict(), MSFT.as_dict()],
    }
    assert message.endswith(b',"events":[' + AAPL.json + b"," + MSFT.json + b"]}")


def test_a_partial_snapshot_says_which_range_is_missing():
    assert json.loads(snapshot_message("e1", 1044, False, [RAW], missing=(1, 1043))) == {
        "type": "snapshot", "epoch": "e1", "last_seq": 1044, "recovered": False,
        "missing": [1, 1043], "events": [RAW.as_dict()],
    }


def test_an_empty_snapshot_is_valid_json():
    assert json.loads(snapshot_message("e1", 0, True, [])) == {
        "type": "snapshot", "epoch": "e1", "last_seq": 0, "recovered": True, "events": []}


def test_the_small_server_messages():
    assert json.loads(subscribed_message(("T.*", "Q.AAPL"))) == {
        "type": "subscribed", "topics": ["T.*", "Q.AAPL"], "max_hz": None}
    assert json.loads(subscribed_message((), 2.0)) == {"type": "subscribed", "topics": [], "max_hz": 2}
    assert json.loads(subscribed_message((), 0.5)) == {"type": "subscribed", "topics": [], "max_hz": 0.5}
    assert json.loads(PONG_MESSAGE) == {"type": "pong"}
    assert json.loads(error_message('bad "frame"')) == {"type": "error", "message": 'bad "frame"'}
    assert json.loads(closing_message("slow_consumer")) == {
        "type": "closing", "reason": "slow_consumer"}


# -- RFC 6455 frames ----------------------------------------------------------------------------


def read_ws_frame(blob: bytes) -> tuple[bool, int, bool, bytes]:
    """fin, opcode, masked, payload — and the length must account for every byte."""
    first, second = blob[0], blob[1]
    length, offset = second & 0x7F, 2
    if length == 126:
        (length,), offset = struct.unpack("!H", blob[2:4]), 4
    elif length == 127:
        (length,), offset = struct.unpack("!Q", blob[2:10]), 10
    assert len(blob) == offset + length
    return bool(first & 0x80), first & 0x0F, bool(second & 0x80), blob[offset:]


@pytest.mark.parametrize(("size", "header"), [
    (0, b"\x81\x00"),
    (1, b"\x81\x01"),
    (125, b"\x81\x7d"),
    (126, b"\x81\x7e\x00\x7e"),
    (127, b"\x81\x7e\x00\x7f"),
    (65535, b"\x81\x7e\xff\xff"),
    (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    (70000, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x11\x70"),
])
def test_a_text_frame_has_the_shortest_length_encoding_and_is_final_and_unmasked(size, header):
    payload = b"x" * size
    frame = ws_frame(payload)
    assert frame == header + payload
    assert read_ws_frame(frame) == (True, OP_TEXT, False, payload)


def test_a_close_frame_carries_the_code_and_reason():
    assert ws_close_frame(1013, "slow_consumer") == b"\x88\x0f\x03\xf5slow_consumer"
    assert read_ws_frame(ws_close_frame(1000)) == (True, OP_CLOSE, False, b"\x03\xe8")


def test_a_close_reason_is_cut_to_fit_a_control_frame():
    fin, opcode, masked, payload = read_ws_frame(ws_close_frame(1001, "r" * 300))
    assert (fin, opcode, masked) == (True, OP_CLOSE, False)
    assert payload == b"\x03\xe9" + b"r" * 123


def test_a_close_reason_is_cut_on_a_character_boundary():
    _, _, _, payload = read_ws_frame(ws_close_frame(1009, "é" * 100))
    assert payload == b"\x03\xf1" + ("é" * 61).encode()
    payload[2:].decode("utf-8")


def test_the_opcodes_are_rfc_6455s():
    assert (protocol.OP_TEXT, protocol.OP_CLOSE) == (0x1, 0x8)


# -- Server-Sent Events -----------------------------------------------------------------------


def test_an_sse_event_has_the_seq_as_id_and_the_event_json_as_data():
    assert sse_event(AAPL) == b"id: 1042\nevent: event\ndata: " + AAPL.json + b"\n\n"


def test_an_sse_event_with_newlines_in_its_data_stays_one_message():
    message = sse_event(RAW)
    assert message.count(b"\n") == 4
    assert message.split(b"\n")[2] == b"data: " + RAW.json
    assert json.loads(message.split(b"\n")[2][len(b"data: "):]) == RAW.as_dict()


def test_sse_events_are_concatenated_messages_in_order():
    assert sse_events([AAPL, MSFT]) == sse_event(AAPL) + sse_event(MSFT)
    assert sse_events([]) == b""


def test_an_sse_gap_and_closing_are_named_events():
    assert sse_gap((51, 89)) == b'event: gap\ndata: {"missing":[51,89]}\n\n'
    assert sse_closing("shutdown") == (
        b'event: closing\ndata: {"type":"closing","reason":"shutdown"}\n\n')


def test_the_sse_keep_alive_is_a_comment():
    assert SSE_KEEPALIVE == b": keep-alive\n\n"


def test_subscribe_may_set_or_clear_the_rate_with_or_without_topics():
    assert parse_client_message('{"action":"subscribe","topics":["T.*"],"max_hz":2}') == Action(
        "subscribe", ("T.*",), True, 2.0)
    assert parse_client_message('{"action":"subscribe","max_hz":null}') == Action("subscribe", (), True, None)
    assert parse_client_message('{"action":"subscribe","topics":[],"max_hz":"0.5"}') == Action(
        "subscribe", (), True, 0.5)
    assert parse_client_message('{"action":"subscribe","topics":["T.*"]}') == Action("subscribe", ("T.*",))
    assert parse_client_message('{"action":"unsubscribe","topics":["T.*"],"max_hz":3}') == Action(
        "unsubscribe", ("T.*",))


def test_a_bad_rate_on_subscribe_is_a_bad_frame_naming_max_hz():
    for bad in ("0", "-1", '"abc"', "1e9", "true", "[2]"):
        frame = parse_client_message('{"action":"subscribe","topics":["T.*"],"max_hz":%s}' % bad)
        assert isinstance(frame, BadFrame) and "max_hz" in frame.message


def test_a_thinned_events_frame_carries_the_replaced_count():
    ev = make_event(7, 1, "a", {})
    assert json.loads(events_message([ev], 3)) == {"type": "events", "conflated": 3, "events": [ev.as_dict()]}
    assert "conflated" not in json.loads(events_message([ev]))
    assert json.loads(slow_message("conflated")) == {"type": "slow", "mode": "conflated"}
