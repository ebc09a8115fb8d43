"""The write spool: batches waiting for the store, as rows of DATA_DIR/relay.sqlite3, bounded in bytes.

Every batch is spooled before it is inserted, so a crash or an outage loses
nothing that reached the spool. A batch is appended in one transaction, as
rows of at most RECORD_BYTES of envelopes (one JSON document per line); the
drain reads the oldest rows a bounded chunk at a time and deletes them by id
range once they are in the store; a start reads only the newest rows. No call
reads the whole spool. The previous version's segment files (DATA_DIR/spool)
are imported once, by load().

Not thread-safe: the writer greenlet owns it (and sends each call to a thread).
"""

import logging
import os
from contextlib import suppress
from dataclasses import dataclass

from handlers.events import Event, event_from_json
from webapp.store import legacy
from webapp.store.localdb import LocalDB, db_path

log = logging.getLogger(__name__)

RECORD_BYTES = 1 << 20  # a row's envelopes (one event may pass it alone)
DRAIN_CHUNK_BYTES = 8 << 20  # what one drain step holds in memory (at least one row)
DRAIN_CHUNK_ROWS = 10_000


class SpoolFull(Exception):
    """Appending would pass the spool's byte bound."""


@dataclass(frozen=True)
class SpoolRecord:
    id: int
    events: list[Event]


def record_rows(events: list[Event], max_bytes: int = RECORD_BYTES) -> list[tuple[int, int, int, bytes]]:
    """A batch as spool rows: (first seq, last seq, events, payload), each payload about max_bytes at most."""
    payload = b"\n".join(e.json for e in events)
    if len(payload) <= max_bytes:  # the usual batch: one row, joined once (the loop below costs 3x the join)
        return [(events[0].seq, events[-1].seq, len(events), payload)]
    rows, part, size = [], [], 0
    for e in events:
        if part and size + len(e.json) > max_bytes:
            rows.append(_row(part))
            part, size = [], 0
        part.append(e)
        size += len(e.json) + 1
    if part:
        rows.append(_row(part))
    return rows


def _row(part: list[Event]) -> tuple[int, int, int, bytes]:
    return part[0].seq, part[-1].seq, len(part), b"\n".join(e.json for e in part)


def _events(payload: bytes) -> list[Event]:
    return [event_from_json(line) for line in payload.split(b"\n")]


class Spool:
    def __init__(self, directory: str, max_bytes: int, fsync: bool = True):
        self.directory = directory  # the previous version's segment files, imported by load()
        self.db = LocalDB(db_path(os.path.dirname(directory)), durable=fsync)
        self.path = self.db.path
        self.max_bytes = max_bytes
        self.bytes = 0  # payload bytes; set by load(), kept by append and the removals
        self.events = 0
        self.torn_records = 0  # damaged records found in migrated segment files
        self.chunk_bytes = DRAIN_CHUNK_BYTES

    # -- writing -------------------------------------------------------------------

    def append(self, events: list[Event]) -> None:
        """Durably append one batch (one transaction, committed before this returns)."""
        rows = record_rows(events)
        size = sum(len(row[3]) for row in rows)
        if self.bytes + size > self.max_bytes:
            raise SpoolFull(f"spool holds {self.bytes} bytes; a batch of {size} would pass {self.max_bytes}")
        with self.db.transaction() as conn:
            conn.executemany("INSERT INTO spool (first_seq, last_seq, events, payload) VALUES (?, ?, ?, ?)", rows)
        self.bytes += size
        self.events += len(events)

    def remove_through(self, last_id: int) -> None:
        """Rows up to `last_id` are in the store (or dead-lettered): deleted."""
        with self.db.transaction(durable=False) as conn:
            rows, events, size = conn.execute(
                "SELECT count(*), coalesce(sum(events), 0), coalesce(sum(length(payload)), 0) FROM spool"
                " WHERE id <= ?", (last_id,)).fetchone()
            conn.execute("DELETE FROM spool WHERE id <= ?", (last_id,))
        self.bytes = max(0, self.bytes - size)
        self.events = max(0, self.events - events)
        if rows and not self.events:
            self.db.vacuum()  # drained: the file gives its pages back

    def clear(self) -> None:
        """Everything spooled is in the store."""
        with self.db.transaction(durable=False) as conn:
            conn.execute("DELETE FROM spool")
        self.bytes = 0
        self.events = 0

    # -- reading -------------------------------------------------------------------

    def oldest(self, after_id: int = 0) -> list[SpoolRecord]:
        """The oldest rows after `after_id`, at most `chunk_bytes` of them (at least one): a drain's chunk."""
        sizes = self.db.read("SELECT id, length(payload) FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                             (after_id, DRAIN_CHUNK_ROWS))
        if not sizes:
            return []
        last, held = sizes[0][0], 0
        for row_id, size in sizes:
            if held and held + size > self.chunk_bytes:
                break
            last, held = row_id, held + size
        rows = self.db.read("SELECT id, payload FROM spool WHERE id BETWEEN ? AND ? ORDER BY id", (sizes[0][0], last))
        return [SpoolRecord(row_id, _events(payload)) for row_id, payload in rows]

    def rows_between(self, first: int, last: int) -> list[tuple[int, int, int]]:
        """(id, first seq, last seq) of the rows holding seqs in [first, last], newest first: a resume of
        what the store has not taken yet (the rows' payloads are read one at a time: `row`)."""
        return self.db.read("SELECT id, first_seq, last_seq FROM spool WHERE last_seq >= ? AND first_seq <= ?"
                            " ORDER BY id DESC", (first, last))

    def row(self, row_id: int) -> list[Event] | None:
        """One row's events; None when it is gone (the drain deleted it: the store has it now)."""
        found = self.db.read("SELECT payload FROM spool WHERE id = ?", (row_id,))
        return _events(found[0][0]) if found else None

    def has_after(self, after_id: int) -> bool:
        """Does the spool hold a row after `after_id`?"""
        return bool(self.db.read("SELECT 1 FROM spool WHERE id > ? LIMIT 1", (after_id,)))

    def load(self, keep_events: int | None = None) -> list[SpoolRecord]:
        """At start: migrate the previous version's files, count what is spooled and return the
        newest rows holding `keep_events` events (what a start needs: the highest seq and a warm
        cache); without it, every row (tests)."""
        self._migrate()
        self.events, self.bytes = self.db.read(
            "SELECT coalesce(sum(events), 0), coalesce(sum(length(payload)), 0) FROM spool")[0]
        first = 0
        if keep_events is not None:
            # the newest row from which the rows up to the end hold keep_events events
            found = self.db.read("SELECT id FROM (SELECT id, sum(events) OVER (ORDER BY id DESC) AS held FROM spool)"
                                 " WHERE held >= ? ORDER BY id DESC LIMIT 1", (keep_events,))
            first = found[0][0] if found else 0
        rows = self.db.read("SELECT id, payload FROM spool WHERE id >= ? ORDER BY id", (first,))
        return [SpoolRecord(row_id, _events(payload)) for row_id, payload in rows]

    # -- the previous version's segment files ---------------------------------------------

    def _migrate(self) -> None:
        """Each segment in one transaction with its name (a crash mid-way imports none twice), then removed."""
        paths = legacy.segment_paths(self.directory)
        for path in paths:
            info = os.stat(path)  # with the name: a later version's file of the same name is another file
            name = f"{os.path.basename(path)}:{info.st_size}:{info.st_mtime_ns}"
            segment = legacy.read_segment(path)
            if segment.damaged_at is not None:
                self.torn_records += 1
                log.warning("spool %s: damaged record at byte %d (%s); the rest of it is cut off",
                            path, segment.damaged_at, "last segment" if path == paths[-1] else "mid-spool")
            with self.db.transaction() as conn:
                if conn.execute("SELECT 1 FROM migrated WHERE name = ?", (name,)).fetchone() is None:
                    conn.executemany("INSERT INTO spool (first_seq, last_seq, events, payload) VALUES (?, ?, ?, ?)",
                                     [_row(events) for events in segment.records if events])
                    conn.execute("INSERT INTO migrated (name) VALUES (?)", (name,))
            os.remove(path)
            log.info("spool segment %s imported into %s (%d records)", path, self.path, len(segment.records))
        if paths:
            with suppress(OSError):  # not empty (foreign files) or a mount point: it stays, harmlessly
                os.rmdir(self.directory)
