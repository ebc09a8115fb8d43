"""A relay started over the previous version's DATA_DIR (relay-state.json and spool segment files).

The previous version crashed with 30 events spooled (the last segment ends in
a torn record, as a crash mid-append leaves it) and its reservation at 1000.
The upgraded relay imports both into DATA_DIR/relay.sqlite3 once: the store
gets the 30 events exactly once, the epoch is kept, seq continues above the
old reservation, and the old files are gone (the state file set aside).
"""

from __future__ import annotations

import json
import time
import zlib

from support.events import unique_sym

from faults.harness import Pump, assert_store_holds, store_env
from handlers.events import make_event
from webapp.store.legacy import HEADER, MAGIC

EPOCH = "6750a1b2-c0ffee00"
RESERVED = 1000
SPOOLED = 30


def write_segment(path, batches, tail=b"") -> None:
    with open(path, "wb") as f:
        for batch in batches:
            payload = b"\n".join(e.json for e in batch)
            f.write(HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload)
        f.write(tail)


def test_an_upgrade_over_the_previous_versions_files_writes_their_spool_once_and_continues_their_seqs(
        fresh_upstream, start_relay, store):
    url, probe = store()
    sym = unique_sym()
    now_ms = int(time.time() * 1000)
    events = [make_event(seq, now_ms, f"T.{sym}", {"ev": "T", "sym": sym, "n": seq - 1}) for seq in range(1, SPOOLED + 1)]

    def previous_version(relay) -> None:
        (relay.data_dir / "relay-state.json").write_text(
            json.dumps({"epoch": EPOCH, "reserved": RESERVED, "holes": []}))
        spool = relay.data_dir / "spool"
        spool.mkdir()
        write_segment(spool / "000000000001.seg", [events[:10], events[10:20]])
        write_segment(spool / "000000000002.seg", [events[20:]], tail=HEADER.pack(MAGIC, 900, 1) + b'{"seq"')

    relay = start_relay(fresh_upstream, store_env(url), prepare=previous_version)
    probe.wait_count(SPOOLED, timeout_s=30)
    health = relay.health()
    assert health["epoch"] == EPOCH and health["last_seq"] == RESERVED, health
    assert not (relay.data_dir / "spool").exists() and not (relay.data_dir / "relay-state.json").exists()
    assert (relay.data_dir / "relay-state.json.migrated").exists() and (relay.data_dir / "relay.sqlite3").exists()

    pump = Pump(fresh_upstream, sym, 100, per_frame=10).start()
    try:
        probe.wait_count(SPOOLED + 50, timeout_s=30)
    finally:
        pump.stop()
    sent = len(pump.sent)
    probe.wait_count(SPOOLED + sent, timeout_s=30)
    # the spooled events once, then the new ones numbered above the old reservation
    assert_store_holds(probe, [(seq, seq - 1) for seq in range(1, SPOOLED + 1)]
                       + [(RESERVED + 1 + i, i) for i in range(sent)])
    relay.restart()
    assert relay.health()["last_seq"] == RESERVED + sent  # a clean restart: nothing imported again
    assert_store_holds(probe, [(seq, seq - 1) for seq in range(1, SPOOLED + 1)]
                       + [(RESERVED + 1 + i, i) for i in range(sent)])
