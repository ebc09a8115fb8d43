"""handlers.capture: capture lines out and back, byte for byte, and the pace of a replay."""

import base64
import json
from pathlib import Path

import pytest

from handlers.capture import (
    CapturedFrame,
    CaptureError,
    capture_line,
    parse_capture_line,
    read_capture,
    replay_offsets_s,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HOSTILE = FIXTURES / "hostile"
TS = 1_764_124_800_123


def round_trip(payload: bytes, binary: bool = False) -> CapturedFrame:
    line = capture_line(payload, binary, TS)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    frame = parse_capture_line(line)
    assert frame is not None
    return frame


def test_a_compact_json_frame_is_stored_readable_and_comes_back_exactly():
    payload = b'[{"ev":"T","sym":"AAPL","p":191.2,"s":100}]'
    line = capture_line(payload, False, TS)
    assert json.loads(line) == {"ts": TS, "frame": [{"ev": "T", "sym": "AAPL", "p": 191.2, "s": 100}]}
    assert round_trip(payload) == CapturedFrame(TS, payload)


@pytest.mark.parametrize("payload", [
    b'[{"ev": "T", "p": 191.20}]',  # not compact: kept verbatim as text
    b'{"p":1.0e2}',
    b"NaN",
    b"not json at all\nsecond line",
    "caf\u00e9 \u2603".encode(),
    b"",
])
def test_any_other_text_frame_comes_back_byte_for_byte(payload):
    frame = round_trip(payload)
    assert (frame.payload, frame.binary, frame.ts) == (payload, False, TS)


@pytest.mark.parametrize("path", sorted(p for p in HOSTILE.iterdir() if p.suffix in (".txt", ".json")),
                         ids=lambda p: p.name)
def test_hostile_text_frames_survive(path):
    payload = path.read_bytes()
    assert round_trip(payload).payload == payload


def test_binary_frames_are_base64():
    payload = (HOSTILE / "every_byte.bin").read_bytes()
    line = capture_line(payload, True, TS)
    assert json.loads(line) == {"ts": TS, "binary": base64.b64encode(payload).decode()}
    assert round_trip(payload, binary=True) == CapturedFrame(TS, payload, binary=True)


@pytest.mark.parametrize(("line", "says"), [
    ("nope", "line 3: not JSON"),
    ('{"frame":[]}', "integer 'ts'"),
    ('{"ts":1.5,"frame":[]}', "integer 'ts'"),
    ('{"ts":1}', "exactly one of"),
    ('{"ts":1,"frame":[],"text":"x"}', "exactly one of"),
    ('{"ts":1,"text":5}', "must be a string"),
    ('{"ts":1,"binary":"***"}', "not base64"),
])
def test_bad_lines_are_refused_with_their_number(line, says):
    with pytest.raises(CaptureError, match=says.replace("(", r"\(")):
        parse_capture_line(line, 3)


def test_blank_lines_are_skipped():
    assert read_capture([b"\n", capture_line(b"[]", False, 5), b"  \n"]) == [CapturedFrame(5, b"[]")]


def test_the_shipped_capture_reads_back_as_polygon_frames():
    frames = read_capture((FIXTURES / "polygon_capture.jsonl").read_bytes().splitlines())
    assert len(frames) > 100
    assert all(isinstance(json.loads(f.payload), list) for f in frames)
    assert [f.ts for f in frames] == sorted(f.ts for f in frames)
    assert json.loads(frames[0].payload)[0]["status"] == "connected"


def test_replay_keeps_the_recorded_gaps_divided_by_the_speed():
    frames = [CapturedFrame(ts, b"[]") for ts in (1000, 1000, 1250, 2000, 1900, 2100)]
    assert replay_offsets_s(frames, 1) == [0.0, 0.0, 0.25, 1.0, 1.0, 1.2]
    assert replay_offsets_s(frames, 4) == pytest.approx([0.0, 0.0, 0.0625, 0.25, 0.25, 0.3])


def test_speed_must_be_positive():
    with pytest.raises(ValueError):
        replay_offsets_s([], 0)
