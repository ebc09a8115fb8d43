"""handlers.events: elements numbered into events whose JSON is their envelope."""

import json
from dataclasses import FrozenInstanceError

import pytest

from handlers import jsonx
from handlers.events import Event, event_from_json, event_from_row, make_event, number_elements
from handlers.frames import RawText, parse_frame

EV_SYM = ("ev", "sym")
TS = 1_764_124_800_123


def test_numbering_gives_consecutive_seqs_one_receive_time_and_derived_topics():
    elements = [
        {"ev": "T", "sym": "AAPL", "p": 191.2},
        {"ev": "Q", "sym": "MSFT"},
        [1, 2],
        RawText("not json at all"),
    ]
    assert number_elements(elements, 1042, TS, EV_SYM) == [
        Event(1042, TS, "T.AAPL", {"ev": "T", "sym": "AAPL", "p": 191.2}),
        Event(1043, TS, "Q.MSFT", {"ev": "Q", "sym": "MSFT"}),
        Event(1044, TS, "default", [1, 2]),
        Event(1045, TS, "default", "not json at all", raw=True),
    ]


def test_numbering_nothing_gives_nothing():
    assert number_elements([], 7, TS, EV_SYM) == []


def test_numbering_accepts_a_parsed_frames_elements_directly():
    parsed = parse_frame('[{"ev":"T","sym":"AAPL"},{"ev":"T","sym":"NVDA"}]',
                         binary=False, max_bytes=1 << 20)
    events = number_elements(parsed.elements, 1, TS, EV_SYM)
    assert [(e.seq, e.topic) for e in events] == [(1, "T.AAPL"), (2, "T.NVDA")]


def test_numbering_uses_the_configured_topic_fields():
    events = number_elements([{"topic": "projection_bpp", "bpp": 1.5}], 1, TS,
                             ("topic",))
    assert events[0].topic == "projection_bpp"


def test_the_json_is_the_contract_envelope():
    event = make_event(1042, TS, "T.AAPL", {"ev": "T", "sym": "AAPL", "p": 191.2, "s": 100})
    assert json.loads(event.json) == {
        "seq": 1042, "ts": TS, "topic": "T.AAPL",
        "data": {"ev": "T", "sym": "AAPL", "p": 191.2, "s": 100},
    }


def test_the_json_is_compact_and_in_contract_order():
    event = make_event(5, TS, "T.AAPL", {"p": 1}, enrichment={"avg_p_1m": 190.9})
    assert event.json == (b'{"seq":5,"ts":1764124800123,"topic":"T.AAPL","data":{"p":1},'
                          b'"enrichment":{"avg_p_1m":190.9}}')


def test_every_numbered_event_json_parses_back_to_its_dict():
    elements = [{"ev": "T", "sym": "AAPL"}, None, RawText("x"),
                {"nested": {"list": [1, 2.5, None, True]}}]
    for event in number_elements(elements, 1, TS, EV_SYM):
        assert json.loads(event.json) == event.as_dict()


def test_raw_appears_in_the_envelope_only_for_raw_events():
    assert make_event(1, TS, "default", "text", raw=True).as_dict() == {
        "seq": 1, "ts": TS, "topic": "default", "data": "text", "raw": True}
    assert "raw" not in make_event(1, TS, "default", "text").as_dict()
    assert b'"raw"' not in make_event(1, TS, "default", {"a": 1}).json


def test_enrichment_appears_only_when_it_holds_something():
    with_it = make_event(1, TS, "T.AAPL", {}, enrichment={"avg_p_1m": 190.9})
    assert with_it.as_dict()["enrichment"] == {"avg_p_1m": 190.9}
    assert with_it.enrichment == {"avg_p_1m": 190.9}
    for nothing in (None, {}):
        event = make_event(1, TS, "T.AAPL", {}, enrichment=nothing)
        assert event.enrichment is None
        assert "enrichment" not in json.loads(event.json)


def test_an_event_read_back_from_its_json_is_the_same_event_with_the_same_bytes():
    for event in (
        make_event(1042, TS, "T.AAPL", {"ev": "T", "sym": "AAPL", "p": 191.2}),
        make_event(1043, TS, "default", "bm90IGpzb24=", raw=True),
        make_event(1044, TS, "Q.MSFT", {"ev": "Q"}, enrichment={"avg": 1.5}),
        make_event(1045, TS, "default", None),
        make_event(1046, TS, "default", [1, "two", {"3": []}]),
    ):
        again = event_from_json(event.json)
        assert again == event
        assert again.json == event.json


def test_event_from_json_accepts_any_bytes_like_and_keeps_bytes():
    event = make_event(9, TS, "T.AAPL", {"p": 1, "big": 2**70})
    for blob in (bytearray(event.json), memoryview(event.json)):
        again = event_from_json(blob)
        assert again == event
        assert again.json == event.json
        assert type(again.json) is bytes


def test_big_integers_survive_numbering_serializing_and_reading_back():
    frame = f'[{{"ev":"T","sym":"BIG","s":{2**64},"q":{-(2**70)},"u":{2**64 - 1}}}]'
    parsed = parse_frame(frame, binary=False, max_bytes=1 << 20)
    [event] = number_elements(parsed.elements, 1, TS, EV_SYM)
    assert b'"s":18446744073709551616' in event.json
    assert b'"q":-1180591620717411303424' in event.json
    assert event_from_json(event.json).data == {
        "ev": "T", "sym": "BIG", "s": 2**64, "q": -(2**70), "u": 2**64 - 1}


def test_a_lone_surrogate_survives_as_an_escape():
    event = make_event(1, TS, "default", {"sym": "A\ud800"})
    assert b'"A\\ud800"' in event.json
    assert event_from_json(event.json).data == {"sym": "A\ud800"}


def test_non_ascii_text_is_sent_as_utf8():
    event = make_event(1, TS, "T.北京", {"sym": "北京"})
    assert event.json.decode("utf-8") == (
        '{"seq":1,"ts":1764124800123,"topic":"T.北京","data":{"sym":"北京"}}')


def test_events_compare_by_content_not_by_their_cached_json():
    assert make_event(1, TS, "t", {"a": 1}) == Event(1, TS, "t", {"a": 1})


def test_an_event_is_immutable():
    with pytest.raises(FrozenInstanceError):
        make_event(1, TS, "t", {}).seq = 2  # type: ignore[misc]


def test_the_envelope_json_is_what_jsonx_writes():
    event = make_event(3, TS, "T.AAPL", {"p": 191.2})
    assert event.json == jsonx.dumps(event.as_dict())


def test_data_json_is_the_data_as_it_sits_in_the_envelope():
    event = make_event(1, TS, "T.AAPL", {"sym": "AAPL", "n": 2**70}, raw=False,
                       enrichment={"avg": 1.5})
    assert event.data_json == b'{"sym":"AAPL","n":1180591620717411303424}'
    assert event.data_json in event.json


def test_an_event_rebuilt_from_a_stored_row_is_the_event_that_was_stored():
    for event in (
        make_event(1042, TS, "T.AAPL", {"ev": "T", "sym": "AAPL", "p": 191.2}),
        make_event(1043, TS, "default", "raw text", raw=True),
        make_event(1044, TS, "Q.MSFT", {"ev": "Q"}, enrichment={"avg": 1.5}),
        make_event(1045, TS, "default", {"big": 2**70}),
    ):
        enrichment = jsonx.dumps(event.enrichment) if event.enrichment else ""
        again = event_from_row(event.seq, event.ts, event.topic, event.data_json.decode(),
                               enrichment, event.raw)
        assert again == event
        assert again.json == event.json


def test_a_corrupt_stored_row_is_not_json():
    with pytest.raises(jsonx.NotJSON):
        event_from_row(1, TS, "default", '{"truncated":', "")
