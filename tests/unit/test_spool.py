"""The spool in DATA_DIR/relay.sqlite3: appends, its bound, and the upgrade from the previous version's segment files."""

import itertools
import os
import zlib

import pytest

from handlers.events import make_event
from webapp.store import spool as spool_module
from webapp.store.legacy import HEADER, MAGIC
from webapp.store.spool import Spool, SpoolFull, record_rows


def events(first, n, ts=1_000):
    return [make_event(seq, ts, "t", {"n": seq}) for seq in range(first, first + n)]


def seqs(records):
    return [e.seq for r in records for e in r.events]


def write_segment(path, batches, tail=b""):
    """A segment as the previous version wrote it: header (magic, length, CRC-32), envelopes by line."""
    with open(path, "wb") as f:
        for batch in batches:
            payload = b"\n".join(e.json for e in batch)
            f.write(HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload)
        f.write(tail)


@pytest.fixture
def old_spool(tmp_path):
    directory = tmp_path / "spool"
    directory.mkdir()
    write_segment(directory / "000000000001.seg", [events(1, 3), events(4, 3)])
    torn = HEADER.pack(MAGIC, 500, 0) + b'{"seq": 10'  # a crash mid-append
    write_segment(directory / "000000000002.seg", [events(7, 3)], tail=torn)
    return directory


def test_the_previous_versions_segments_are_imported_once_in_order_and_removed(old_spool):
    spool = Spool(str(old_spool), 1 << 20, fsync=False)
    assert seqs(spool.load()) == list(range(1, 10)) and spool.events == 9 and spool.torn_records == 1
    assert not old_spool.exists() and (old_spool.parent / "relay.sqlite3").exists()
    again = Spool(str(old_spool), 1 << 20, fsync=False)
    assert seqs(again.load()) == list(range(1, 10)) and again.events == 9  # nothing imported twice


def test_a_damaged_record_ends_its_segment_but_not_the_next_one(tmp_path):
    directory = tmp_path / "spool"
    directory.mkdir()
    write_segment(directory / "000000000001.seg", [events(1, 2), events(3, 2), events(5, 2)])
    with open(directory / "000000000001.seg", "r+b") as f:
        f.seek(HEADER.size * 2 + len(b"\n".join(e.json for e in events(1, 2))) + 5)
        f.write(b"X")  # inside the second record's payload: its checksum fails
    write_segment(directory / "000000000002.seg", [events(7, 2)])
    spool = Spool(str(directory), 1 << 20, fsync=False)
    assert seqs(spool.load()) == [1, 2, 7, 8] and spool.torn_records == 1


def test_a_migration_interrupted_after_its_commit_imports_nothing_twice(old_spool, monkeypatch):
    real_remove = os.remove

    def crash_before_removing(path):
        raise OSError(5, "crashed here")

    monkeypatch.setattr(spool_module.os, "remove", crash_before_removing)
    with pytest.raises(OSError):
        Spool(str(old_spool), 1 << 20, fsync=False).load()
    assert (old_spool / "000000000001.seg").exists()  # imported, still there
    monkeypatch.setattr(spool_module.os, "remove", real_remove)
    spool = Spool(str(old_spool), 1 << 20, fsync=False)
    assert seqs(spool.load()) == list(range(1, 10)) and spool.events == 9


def test_a_start_reads_only_the_newest_rows_of_a_migrated_spool(old_spool):
    spool = Spool(str(old_spool), 1 << 20, fsync=False)
    assert seqs(spool.load(keep_events=4)) == list(range(4, 10)) and spool.events == 9


def test_an_append_past_the_bound_is_refused_and_leaves_the_spool_as_it_was(tmp_path):
    spool = Spool(str(tmp_path / "spool"), 800, fsync=False)
    spool.append(events(1, 5))
    held = spool.bytes
    with pytest.raises(SpoolFull):
        spool.append(events(6, 20))
    assert spool.bytes == held and seqs(Spool(str(tmp_path / "spool"), 800).load()) == [1, 2, 3, 4, 5]


def test_a_large_batch_is_spooled_as_rows_of_bounded_size_in_one_transaction():
    rows = record_rows(events(1, 100), max_bytes=1_000)
    ranges = [(first, last) for first, last, _, _ in rows]
    assert len(rows) > 1 and ranges[0][0] == 1 and all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
    assert all(len(payload) <= 1_000 for *_, payload in rows)
    assert sum(n for _, _, n, _ in rows) == 100 and rows[-1][1] == 100
