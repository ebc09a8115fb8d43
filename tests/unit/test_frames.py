"""handlers.frames: every upstream frame, normal or hostile, becomes elements or a diagnosis."""

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers import jsonx
from handlers.events import make_event
from handlers.frames import ParsedFrame, RawText, parse_frame
from handlers.jsonx import MAX_DEPTH
from handlers.topics import topic_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MAX_BYTES = 4 * 1024 * 1024
PROPERTY = settings(max_examples=200, deadline=None)


def parse_text(payload: str | bytes, max_bytes: int = MAX_BYTES) -> ParsedFrame:
    return parse_frame(payload, binary=False, max_bytes=max_bytes)


def parse_binary(payload: str | bytes, max_bytes: int = MAX_BYTES) -> ParsedFrame:
    return parse_frame(payload, binary=True, max_bytes=max_bytes)


def recorded_frames(name: str) -> list[str]:
    return (FIXTURES / name).read_text(encoding="utf-8").splitlines()


def hostile(name: str) -> bytes:
    return (FIXTURES / "hostile" / name).read_bytes()


def raw_text(parsed: ParsedFrame) -> str:
    """The single raw element of a frame that was not JSON (checked on the way)."""
    assert len(parsed.elements) == 1, parsed
    assert type(parsed.elements[0]) is RawText, parsed
    assert parsed.parse_error is not None and parsed.parse_error.startswith("not JSON")
    assert not parsed.oversize
    return parsed.elements[0].text


def assert_elements_relay_as_events(parsed: ParsedFrame) -> None:
    """What the ingest loop does next: each element becomes an event whose JSON
    is valid and reads back as the same envelope."""
    for seq, element in enumerate(parsed.elements, start=1):
        raw = type(element) is RawText
        data = element.text if raw else element
        topic = topic_of(data, ("ev", "sym"))
        event = make_event(seq, 1_764_124_800_123, topic, data, raw)
        assert jsonx.loads(event.json) == event.as_dict()
        event.json.decode("utf-8")  # what goes on the wire is valid UTF-8


# -- JSON frames --------------------------------------------------------------------


def test_an_object_gives_one_element():
    frame = '{"ev":"T","sym":"AAPL","p":191.2,"s":100,"t":1764124800120}'
    assert parse_text(frame) == ParsedFrame((
        {"ev": "T", "sym": "AAPL", "p": 191.2, "s": 100, "t": 1764124800120},
    ))


def test_an_array_gives_one_element_per_item_in_order():
    frame = '[{"ev":"T","sym":"AAPL"},{"ev":"Q","sym":"MSFT"},{"ev":"T","sym":"NVDA"}]'
    assert parse_text(frame) == ParsedFrame((
        {"ev": "T", "sym": "AAPL"},
        {"ev": "Q", "sym": "MSFT"},
        {"ev": "T", "sym": "NVDA"},
    ))


def test_an_empty_array_gives_no_elements_and_no_error():
    assert parse_text("[]") == ParsedFrame(())


def test_an_array_of_scalars_gives_an_element_per_scalar():
    assert parse_text('[1, "two", 3.5, true, null, {"k": []}, [4]]') == ParsedFrame((
        1, "two", 3.5, True, None,
        {"k": []}, [4],
    ))


@pytest.mark.parametrize(("frame", "value"), [
    ("42", 42), ("-1.5", -1.5), ('"heartbeat"', "heartbeat"), ("true", True),
    ("false", False), ("null", None), ('""', ""), ("  7  ", 7), ("{}", {}),
])
def test_a_bare_scalar_gives_one_element_holding_it(frame, value):
    assert parse_text(frame) == ParsedFrame((value,))


def test_bytes_and_str_frames_parse_the_same():
    frame = '[{"ev":"T","sym":"北京","p":1}]'
    assert parse_text(frame.encode()) == parse_text(frame)


def test_integers_beyond_64_bits_stay_exact():
    frame = f'[{{"s":{2**64},"q":{-(2**63) - 1},"i":{2**200}}}, {2**64 - 1}]'
    assert parse_text(frame) == ParsedFrame((
        {"s": 2**64, "q": -(2**63) - 1, "i": 2**200},
        2**64 - 1,
    ))


def test_a_100_deep_document_is_an_ordinary_element():
    frame = '{"a":' * 100 + "1" + "}" * 100
    parsed = parse_text(frame)
    assert parsed == ParsedFrame((json.loads(frame),))
    assert_elements_relay_as_events(parsed)


def test_the_deepest_accepted_document_still_relays():
    frame = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    parsed = parse_text(frame)
    assert parsed == ParsedFrame((json.loads(frame)[0],))
    assert_elements_relay_as_events(parsed)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 5000])
def test_a_document_nested_too_deep_becomes_a_raw_event(depth):
    frame = "[" * depth + "]" * depth
    parsed = parse_text(frame)
    assert raw_text(parsed) == frame
    assert_elements_relay_as_events(parsed)


def test_a_100k_element_array_gives_100k_elements_in_order():
    items = [{"ev": "T", "sym": f"S{i % 500}", "p": i / 100, "s": i} for i in range(100_000)]
    parsed = parse_text(json.dumps(items), max_bytes=64 * 1024 * 1024)
    assert parsed == ParsedFrame(tuple(items))


def test_a_100k_scalar_array_gives_100k_elements():
    parsed = parse_text("[" + ",".join(["0"] * 100_000) + "]")
    assert parsed == ParsedFrame((0,) * 100_000)


# -- frames that are not JSON: raw events -------------------------------------------


@pytest.mark.parametrize("frame", [
    "Welcome to the feed", "", "   ", "NaN", "Infinity", "-Infinity", '{"p":NaN}',
    "[1, Infinity]", '{"ev":"T"', "{'ev': 'T'}", '{"a":1} {"b":2}', "1e400",
])
def test_text_that_is_not_json_becomes_one_raw_element_with_the_text(frame):
    assert raw_text(parse_text(frame)) == frame


def test_invalid_utf8_becomes_raw_text_with_replacement_characters():
    blob = b'{"sym":"\xff\xfeAAPL"}'
    assert raw_text(parse_text(blob)) == '{"sym":"\ufffd\ufffdAAPL"}'


def test_a_lone_surrogate_in_non_json_text_is_replaced_so_the_event_can_be_sent():
    frame = "broken \ud800 text"
    parsed = parse_text(frame)
    assert raw_text(parsed) == "broken ? text"
    assert_elements_relay_as_events(parsed)


def test_a_lone_surrogate_inside_a_json_string_is_kept_and_relayed_escaped():
    for frame in ('{"sym":"A\\udc00"}', '{"sym":"A\udc00"}'):
        parsed = parse_text(frame)
        assert parsed == ParsedFrame(({"sym": "A\udc00"},))
        assert_elements_relay_as_events(parsed)


# -- binary frames --------------------------------------------------------------------


def test_a_binary_frame_becomes_one_raw_base64_element():
    blob = bytes(range(256))
    assert parse_binary(blob) == ParsedFrame(
        (RawText(base64.b64encode(blob).decode("ascii")),), "binary frame")


def test_a_binary_frame_holding_json_is_still_raw_base64():
    blob = b'[{"ev":"T","sym":"AAPL"}]'
    assert parse_binary(blob) == ParsedFrame(
        (RawText("W3siZXYiOiJUIiwic3ltIjoiQUFQTCJ9XQ=="),), "binary frame")


def test_an_empty_binary_frame_is_an_empty_raw_element():
    assert parse_binary(b"") == ParsedFrame((RawText(""),), "binary frame")


def test_a_binary_frame_handed_over_as_str_is_encoded_as_utf8():
    assert parse_binary("é") == ParsedFrame((RawText("w6k="),), "binary frame")


# -- oversize -------------------------------------------------------------------------


def test_a_frame_at_the_limit_is_parsed():
    frame = '{"a":"' + "x" * 94 + '"}'
    assert len(frame) == 102
    assert parse_text(frame, max_bytes=102) == ParsedFrame(({"a": "x" * 94},))


def test_a_frame_one_byte_over_the_limit_is_skipped_and_flagged():
    frame = '{"a":"' + "x" * 95 + '"}'
    assert parse_text(frame, max_bytes=102) == ParsedFrame(
        (), "frame of 103 bytes exceeds 102", oversize=True)


def test_a_str_frame_is_measured_in_utf8_bytes():
    frame = '"' + "é" * 50 + '"'  # 52 characters, 102 bytes
    assert parse_text(frame, max_bytes=101) == ParsedFrame(
        (), "frame of 102 bytes exceeds 101", oversize=True)
    assert parse_text(frame, max_bytes=102) == ParsedFrame(("é" * 50,))


def test_an_oversize_binary_frame_is_skipped_too():
    assert parse_binary(b"\x00" * 11, max_bytes=10) == ParsedFrame(
        (), "frame of 11 bytes exceeds 10", oversize=True)


def test_an_oversize_str_with_a_lone_surrogate_is_measured_without_error():
    assert parse_text("\ud800" * 4, max_bytes=11) == ParsedFrame(
        (), "frame of 12 bytes exceeds 11", oversize=True)


# -- recorded frames ------------------------------------------------------------------


@pytest.mark.parametrize("frame", recorded_frames("polygon_stocks.jsonl"))
def test_every_recorded_polygon_frame_gives_its_array_items(frame):
    parsed = parse_text(frame)
    assert parsed == ParsedFrame(tuple(json.loads(frame)))
    assert_elements_relay_as_events(parsed)


@pytest.mark.parametrize("frame", recorded_frames("nodered_projection.jsonl"))
def test_every_recorded_node_red_frame_gives_its_value_or_its_items(frame):
    value = json.loads(frame)
    items = value if isinstance(value, list) else [value]
    parsed = parse_text(frame)
    assert parsed == ParsedFrame(tuple(items))
    assert_elements_relay_as_events(parsed)


def test_a_recorded_trade_and_quote_frame_parses_to_exactly_its_fields():
    frame = recorded_frames("polygon_stocks.jsonl")[4]
    assert parse_text(frame) == ParsedFrame((
        {"ev": "Q", "sym": "AAPL", "bx": 12, "bp": 191.19, "bs": 300, "ax": 11,
                 "ap": 191.21, "as": 200, "c": 0, "i": [604], "t": 1764124800121,
                 "q": 1016442, "z": 3},
        {"ev": "T", "sym": "MSFT", "i": "71675", "x": 12, "p": 485.07, "s": 37,
                 "c": [37], "t": 1764124800122, "q": 2203119, "z": 3},
    ))


# Each hostile file, sent as a text frame, and the element it must become.
HOSTILE_TEXT = {
    "not_json.txt": "raw",
    "truncated.txt": "raw",
    "nan.txt": "raw",
    "infinity.txt": "raw",
    "negative_infinity.txt": "raw",
    "overflowing_float.txt": "raw",
    "trailing_garbage.txt": "raw",
    "single_quotes.txt": "raw",
    "invalid_utf8.bin": "raw",
    "lone_surrogate_utf8.bin": "raw",
    "utf16le.bin": "raw",
    "utf8_bom.bin": "raw",
    "nul_after_json.bin": "raw",
    "gzip_frame.bin": "raw",
    "every_byte.bin": "raw",
    "big_ints.json": {"ev": "T", "sym": "BIG", "s": 18446744073709551616,
                              "q": -9223372036854775809,
                              "i": 123456789012345678901234567890,
                              "u64": 18446744073709551615},
    "lone_surrogate_escape.json": {"ev": "T", "sym": "A\ud800"},
}


def test_every_hostile_fixture_has_an_expectation():
    assert sorted(p.name for p in (FIXTURES / "hostile").iterdir()) == sorted(HOSTILE_TEXT)


@pytest.mark.parametrize(("name", "expected"), sorted(HOSTILE_TEXT.items()))
def test_a_hostile_text_frame_becomes_what_its_fixture_says(name, expected):
    blob = hostile(name)
    parsed = parse_text(blob)
    if expected == "raw":
        assert raw_text(parsed) == blob.decode("utf-8", "replace")
    else:
        assert parsed == ParsedFrame((expected,))
    assert_elements_relay_as_events(parsed)


@pytest.mark.parametrize("name", sorted(HOSTILE_TEXT))
def test_a_hostile_binary_frame_is_relayed_as_base64(name):
    blob = hostile(name)
    parsed = parse_binary(blob)
    assert parsed == ParsedFrame(
        (RawText(base64.b64encode(blob).decode("ascii")),), "binary frame")
    assert_elements_relay_as_events(parsed)


# -- properties -----------------------------------------------------------------------



def json_values(chars: st.SearchStrategy[str]) -> st.SearchStrategy:
    scalars = (
        st.none() | st.booleans() | st.integers()
        | st.integers(min_value=-(2**80), max_value=2**80)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(chars, max_size=8)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5)
        | st.dictionaries(st.text(chars, max_size=5), inner, max_size=5),
        max_leaves=25,
    )


JSON_VALUES = json_values(st.characters())  # lone surrogates included
UTF8_JSON_VALUES = json_values(st.characters(exclude_categories=("Cs",)))


def expected_items(value):
    return value if isinstance(value, list) else [value]


def exact(value) -> str:
    """A spelling that tells 1 from 1.0 and True from 1."""
    return json.dumps(value)


@PROPERTY
@given(st.binary(max_size=300))
def test_any_bytes_parse_without_raising_and_relay(blob):
    parsed = parse_text(blob)
    assert_elements_relay_as_events(parsed)
    if not (parsed.elements and type(parsed.elements[0]) is RawText):
        # what the relay calls JSON, the stdlib reads the same way from UTF-8
        items = expected_items(json.loads(blob.decode("utf-8")))
        assert exact(list(parsed.elements)) == exact(items)


@PROPERTY
@given(st.text(st.characters(), max_size=300))
def test_any_text_parses_without_raising_and_relays(text):
    parsed = parse_text(text)
    assert_elements_relay_as_events(parsed)


@PROPERTY
@given(JSON_VALUES)
def test_any_json_value_comes_back_as_exactly_its_items(value):
    parsed = parse_text(json.dumps(value))
    assert not any(type(e) is RawText for e in parsed.elements)
    assert exact(list(parsed.elements)) == exact(expected_items(value))
    assert_elements_relay_as_events(parsed)


@PROPERTY
@given(UTF8_JSON_VALUES)
def test_any_json_value_sent_as_utf8_bytes_comes_back_the_same(value):
    blob = json.dumps(value, ensure_ascii=False).encode("utf-8")
    parsed = parse_text(blob)
    assert exact(list(parsed.elements)) == exact(expected_items(value))


@PROPERTY
@given(JSON_VALUES, st.integers(min_value=0), st.sampled_from(
    list('[]{}",:\\0-+.eE ') + ["\x00", "\ud800", "é", "NaN", "Infinity", "9" * 25]))
def test_json_with_one_character_spliced_in_never_raises(value, where, junk):
    text = json.dumps(value)
    at = where % (len(text) + 1)
    parsed = parse_text(text[:at] + junk + text[at:])
    assert_elements_relay_as_events(parsed)


@PROPERTY
@given(st.binary(max_size=200))
def test_any_binary_frame_is_its_base64(blob):
    assert parse_binary(blob) == ParsedFrame(
        (RawText(base64.b64encode(blob).decode("ascii")),), "binary frame")


@PROPERTY
@given(st.binary(min_size=1, max_size=200), st.booleans(), st.data())
def test_any_frame_over_the_limit_is_only_flagged(blob, binary, data):
    limit = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    assert parse_frame(blob, binary=binary, max_bytes=limit) == ParsedFrame(
        (), f"frame of {len(blob)} bytes exceeds {limit}", oversize=True)
