"""The previous version's files, read once to migrate them into DATA_DIR/relay.sqlite3.

Spool segments `DATA_DIR/spool/NNNNNNNNNNNN.seg`: records of a header (magic,
payload length, CRC-32) and the batch's envelopes, one JSON document per line;
a torn or damaged record ends what can be read of a segment (a crash
mid-append). `DATA_DIR/relay-state.json`: the epoch, the seq reservation and
the holes.
"""

import json
import os
import struct
import zlib
from dataclasses import dataclass

from handlers.events import Event, event_from_json

MAGIC = b"RHS1"
HEADER = struct.Struct("!4sII")  # magic, payload length, crc32(payload)
STATE_NAME = "relay-state.json"


@dataclass(frozen=True)
class Segment:
    records: list[list[Event]]
    damaged_at: int | None  # byte offset of the first record that could not be read


def segment_paths(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if n.endswith(".seg")]


def read_segment(path: str) -> Segment:
    """The intact records of one segment (at most one segment's size is in memory)."""
    with open(path, "rb") as f:
        blob = f.read()
    records: list[list[Event]] = []
    offset = 0
    while offset + HEADER.size <= len(blob):
        magic, length, crc = HEADER.unpack_from(blob, offset)
        payload = blob[offset + HEADER.size: offset + HEADER.size + length]
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            break
        records.append([event_from_json(line) for line in payload.split(b"\n")])
        offset += HEADER.size + length
    return Segment(records, offset if offset < len(blob) else None)


def read_state(path: str) -> dict | None:
    """{"epoch", "reserved", "holes"}; None when there is no file. ValueError when it cannot be used."""
    try:
        with open(path, "rb") as f:
            state = json.loads(f.read())
    except FileNotFoundError:
        return None
    try:
        return {"epoch": str(state["epoch"]), "reserved": int(state["reserved"]),
                "holes": [(int(lo), int(hi)) for lo, hi in state.get("holes", [])]}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable {path}: {exc!r}") from exc
