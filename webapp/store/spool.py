"""The write spool: append-only, checksummed segment files under DATA_DIR/spool, bounded in bytes.

Every batch is spooled before it is inserted, so a crash or an outage loses
nothing that reached the spool. A record is a header (magic, payload length,
CRC-32) and the batch's envelopes, one JSON document per line. A torn record at
the end of the last segment (a crash mid-append) is detected and cut off.
"""

import logging
import os
import struct
import zlib
from dataclasses import dataclass

from handlers.events import Event, event_from_json

log = logging.getLogger(__name__)

MAGIC = b"RHS1"
HEADER = struct.Struct("!4sII")  # magic, payload length, crc32(payload)
SEGMENT_BYTES = 16 * 1024 * 1024


class SpoolFull(Exception):
    """Appending would pass the spool's byte bound."""


@dataclass(frozen=True)
class SpoolRecord:
    segment: str
    events: list[Event]


class Spool:
    """Segments `NNNNNNNNNNNN.seg`, oldest first. Not thread-safe: the writer greenlet owns it."""

    def __init__(self, directory: str, max_bytes: int, fsync: bool = True):
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._active: str | None = None
        self._handle = None
        self.torn_records = 0
        self.bytes = 0  # set by load(); maintained by append/clear
        self.events = 0

    # -- files --------------------------------------------------------------------

    def segments(self) -> list[str]:
        if not os.path.isdir(self.directory):
            return []
        names = sorted(n for n in os.listdir(self.directory) if n.endswith(".seg"))
        return [os.path.join(self.directory, n) for n in names]

    def _next_segment_path(self) -> str:
        existing = self.segments()
        number = int(os.path.basename(existing[-1])[:-4]) + 1 if existing else 1
        return os.path.join(self.directory, f"{number:012d}.seg")

    # -- writing -------------------------------------------------------------------

    def append(self, events: list[Event]) -> None:
        """Durably append one batch (fsync'd before returning)."""
        os.makedirs(self.directory, exist_ok=True)
        payload = b"\n".join(e.json for e in events)
        record = HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        if self.bytes + len(record) > self.max_bytes:
            raise SpoolFull(f"spool holds {self.bytes} bytes; a batch of {len(record)} would pass {self.max_bytes}")
        if self._handle is None or self._handle.tell() >= SEGMENT_BYTES:
            self._roll()
        handle = self._handle
        start = handle.tell()
        try:
            view = memoryview(record)
            while view:
                view = view[handle.write(view):]
            if self.fsync:
                os.fsync(handle.fileno())
        except OSError:
            # a full disk mid-record: take the partial record back off, so the
            # segment stays whole and the next append (or a restart) reads it cleanly
            self._undo(start)
            raise
        self.bytes += len(record)
        self.events += len(events)

    def _undo(self, size: int) -> None:
        try:
            self._handle.truncate(size)
            self._handle.seek(size)
        except OSError:
            # cannot even truncate: start the next append in a new segment; the
            # torn tail of this one is cut off when the spool is read
            self._handle.close()
            self._handle = None
            self._active = None

    def _roll(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._active = self._next_segment_path()
        # unbuffered: a failed write leaves nothing in a buffer to fail again on close
        self._handle = open(self._active, "ab", buffering=0)  # noqa: SIM115  (kept open across appends)

    # -- reading -------------------------------------------------------------------------

    def records(self) -> list[SpoolRecord]:
        """Every intact record, oldest first; cuts a torn tail off the last segment."""
        segments = self.segments()
        return [record for index, path in enumerate(segments)
                for record in self.segment_records(path, last=index == len(segments) - 1)]

    def segment_records(self, path: str, last: bool = True) -> list[SpoolRecord]:
        """The intact records of one segment (at most SEGMENT_BYTES and one record: the drain's chunk)."""
        out: list[SpoolRecord] = []
        with open(path, "rb") as f:
            blob = f.read()
        offset = 0
        while offset < len(blob):
            if offset + HEADER.size > len(blob):
                break
            magic, length, crc = HEADER.unpack_from(blob, offset)
            payload = blob[offset + HEADER.size: offset + HEADER.size + length]
            if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                break
            out.append(SpoolRecord(path, [event_from_json(line) for line in payload.split(b"\n")]))
            offset += HEADER.size + length
        if offset < len(blob):
            self.torn_records += 1
            log.warning("spool %s: damaged record at byte %d of %d (%s); cutting it off",
                        path, offset, len(blob), "last segment" if last else "mid-spool")
            self._truncate(path, offset)
        return out

    def remove_segment(self, path: str, events: int) -> None:
        """A segment whose `events` are all in the store (or dead-lettered) is deleted."""
        if path == self._active and self._handle is not None:
            self._handle.close()
            self._handle = None
            self._active = None
        size = os.path.getsize(path)
        os.remove(path)
        self.bytes = max(0, self.bytes - size)
        self.events = max(0, self.events - events)

    def _truncate(self, path: str, size: int) -> None:
        if path == self._active and self._handle is not None:
            self._handle.close()
            self._handle = None
            self._active = None
        with open(path, "r+b") as f:
            f.truncate(size)
        self.bytes = sum(os.path.getsize(p) for p in self.segments())

    def load(self, keep_events: int | None = None) -> list[SpoolRecord]:
        """Records left by an earlier process; sets the event count.

        With `keep_events`, only the newest records holding that many events are
        returned (what a start needs: the highest seq and a warm cache), and the
        spool is read one segment at a time, so a large spool is never in memory whole."""
        segments = self.segments()
        kept: list[SpoolRecord] = []
        held = total = 0
        for index, path in enumerate(segments):
            for record in self.segment_records(path, last=index == len(segments) - 1):
                kept.append(record)
                held += len(record.events)
                total += len(record.events)
                while keep_events is not None and len(kept) > 1 and held - len(kept[0].events) >= keep_events:
                    held -= len(kept.pop(0).events)
        self.events = total
        self.bytes = sum(os.path.getsize(p) for p in self.segments())
        return kept

    def clear(self) -> None:
        """Everything spooled is in the store: remove every segment."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._active = None
        for path in self.segments():
            os.remove(path)
        self.bytes = 0
        self.events = 0
