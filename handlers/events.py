"""The event envelope of contract §2: seq and ts assigned, topic derived, JSON built once."""

from dataclasses import dataclass, field
from typing import Any

from handlers import jsonx
from handlers.frames import Element
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

    def as_dict(self) -> dict:
        """The envelope as a plain dict (what `json` encodes)."""
        out: dict[str, Any] = {"seq": self.seq, "ts": self.ts, "topic": self.topic, "data": self.data}
        if self.raw:
            out["raw"] = True
        if self.enrichment:
            out["enrichment"] = self.enrichment
        return out


def make_event(seq: int, ts: int, topic: str, data: Any, raw: bool = False,
               enrichment: dict | None = None) -> Event:
    """Build an event and its serialized envelope."""
    bare = Event(seq, ts, topic, data, raw, enrichment or None)
    return Event(seq, ts, topic, data, raw, enrichment or None, jsonx.dumps(bare.as_dict()))


def event_from_json(blob: bytes) -> Event:
    """Rebuild an event from its envelope JSON (as stored or relayed), keeping the bytes."""
    d = jsonx.loads(blob)
    return Event(int(d["seq"]), int(d["ts"]), str(d["topic"]), d.get("data"),
                 bool(d.get("raw", False)), d.get("enrichment") or None, bytes(blob))


def number_elements(elements: list[Element], first_seq: int, ts_ms: int,
                    topic_fields: tuple[str, ...]) -> list[Event]:
    """Give each parsed element the next seq, in order, all with the same receive time."""
    return [
        make_event(first_seq + i, ts_ms, topic_of(el.data, topic_fields), el.data, el.raw)
        for i, el in enumerate(elements)
    ]
