"""The event envelope of contract §2: seq and ts assigned, topic derived, JSON built once."""

from dataclasses import dataclass, field
from typing import Any

from handlers import jsonx
from handlers.frames import Element, RawText
from handlers.topics import topic_of


@dataclass(frozen=True, slots=True)
class Event:
    """One numbered event. `json` is its envelope, serialized exactly once."""

    seq: int
    ts: int
    topic: str
    data: Any
    raw: bool = False
    enrichment: dict | None = None
    json: bytes = field(default=b"", repr=False, compare=False)
    data_start: int = field(default=0, repr=False, compare=False)
    data_end: int = field(default=0, repr=False, compare=False)

    @property
    def data_json(self) -> bytes:
        """`data` as JSON text: a slice of the envelope, not a second serialization."""
        return self.json[self.data_start:self.data_end]

    def as_dict(self) -> dict:
        """The envelope as a plain dict (what `json` encodes)."""
        out: dict[str, Any] = {"seq": self.seq, "ts": self.ts, "topic": self.topic, "data": self.data}
        if self.raw:
            out["raw"] = True
        if self.enrichment:
            out["enrichment"] = self.enrichment
        return out


def _envelope(seq: int, ts: int, topic: str, data_json: bytes, raw: bool,
              enrichment: dict | None) -> tuple[bytes, int, int]:
    head = b'{"seq":%d,"ts":%d,"topic":%b,"data":' % (seq, ts, jsonx.dumps(topic))
    tail = b',"raw":true' if raw else b""
    if enrichment:
        tail += b',"enrichment":' + jsonx.dumps(enrichment)
    return head + data_json + tail + b"}", len(head), len(head) + len(data_json)


def make_event(seq: int, ts: int, topic: str, data: Any, raw: bool = False,
               enrichment: dict | None = None) -> Event:
    """Build an event and its serialized envelope (the one serialization of `data`)."""
    blob, start, end = _envelope(seq, ts, topic, jsonx.dumps(data), raw, enrichment)
    return Event(seq, ts, topic, data, raw, enrichment or None, blob, start, end)


def event_from_row(seq: int, ts: int, topic: str, data_json: str | bytes, enrichment_json: str | bytes = "",
                   raw: bool = False) -> Event:
    """Rebuild an event from a stored row, reusing its JSON text. Raises jsonx.NotJSON on a corrupt row."""
    data_b = data_json.encode() if isinstance(data_json, str) else bytes(data_json)
    data = jsonx.loads(data_b)
    if b"\n" in data_b or b"\r" in data_b:  # not written by the relay: keep SSE's one-line data
        data_b = jsonx.dumps(data)
    enrichment = jsonx.loads(enrichment_json) if enrichment_json else None
    enrichment = enrichment if isinstance(enrichment, dict) and enrichment else None
    blob, start, end = _envelope(int(seq), int(ts), str(topic), data_b, bool(raw), enrichment)
    return Event(int(seq), int(ts), str(topic), data, bool(raw), enrichment, blob, start, end)


def event_from_json(blob: bytes) -> Event:
    """Rebuild an event from its envelope JSON (as spooled or relayed)."""
    d = jsonx.loads(blob)
    return make_event(int(d["seq"]), int(d["ts"]), str(d["topic"]), d.get("data"),
                      bool(d.get("raw", False)), d.get("enrichment") or None)


def number_elements(elements: list[Element], first_seq: int, ts_ms: int, topic_fields: tuple[str, ...],
                    enrichment: dict[str, dict | None] | None = None) -> list[Event]:
    """Give each parsed element the next seq, in order, all with the same receive time.

    `enrichment` maps a topic to what its events carry in `enrichment` (if anything).
    """
    events = []
    for i, data in enumerate(elements):
        raw = type(data) is RawText
        if raw:
            data = data.text
        topic = topic_of(data, topic_fields)
        extra = enrichment.get(topic) if enrichment else None
        events.append(make_event(first_seq + i, ts_ms, topic, data, raw, extra))
    return events


def topics_of(elements: list[Element], topic_fields: tuple[str, ...]) -> set[str]:
    """The distinct topics a frame's elements will have."""
    return {topic_of(data, topic_fields) for data in elements}  # a RawText's is the default topic, as its text's
