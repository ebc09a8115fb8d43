"""The epoch, the seq reservation and the ranges dropped from persistence, in DATA_DIR/relay.sqlite3."""

import json
import logging

import pytest

from handlers.events import make_event
from handlers.holes import holes_to_report
from webapp.runtime import Runtime
from webapp.settings import Settings
from webapp.store import SeqState


def reloaded(tmp_path) -> SeqState:
    again = SeqState(str(tmp_path), block=100, durable=False)
    again.load()
    return again


def test_the_reservation_and_holes_survive_a_restart(tmp_path):
    state = SeqState(str(tmp_path), block=100, durable=False)
    state.save("E1", 100)
    state.add_hole("E1", 10, 20)
    state.add_hole("E1", 21, 30)
    again = reloaded(tmp_path)
    assert (again.epoch, again.reserved, again.holes) == ("E1", 100, [(10, 30)])
    assert (tmp_path / "relay.sqlite3").exists() and not (tmp_path / "relay-state.json").exists()


def test_a_new_epoch_forgets_the_old_ones_holes(tmp_path):
    state = SeqState(str(tmp_path), block=100, durable=False)
    state.save("E1", 100)
    state.add_hole("E1", 10, 20)
    state.save("E2", 100)
    assert state.holes == []
    state.add_hole("E2", 5, 6)
    state.add_hole("E3", 7, 8)  # a hole of another epoch starts its list afresh
    assert (state.epoch, state.holes) == ("E3", [(7, 8)])
    assert reloaded(tmp_path).holes == [(7, 8)]


# -- the upgrade: the previous version's relay-state.json, read once ---------------------------------

def test_the_previous_versions_state_file_is_imported_once_and_set_aside(tmp_path):
    (tmp_path / "relay-state.json").write_text(json.dumps({"epoch": "E1", "reserved": 500, "holes": [[3, 4]]}))
    state = reloaded(tmp_path)
    assert (state.epoch, state.reserved, state.holes) == ("E1", 500, [(3, 4)])
    assert not (tmp_path / "relay-state.json").exists() and (tmp_path / "relay-state.json.migrated").exists()
    state.save("E1", 900)
    assert reloaded(tmp_path).reserved == 900  # the set-aside file is not read again


def test_a_state_file_from_before_holes_were_kept_is_imported(tmp_path):
    (tmp_path / "relay-state.json").write_text(json.dumps({"epoch": "E1", "reserved": 500}))
    state = reloaded(tmp_path)
    assert (state.epoch, state.reserved, state.holes) == ("E1", 500, [])


def test_an_import_repeated_after_a_crash_never_lowers_the_reservation(tmp_path):
    """Imported, then a crash before the file was set aside, while the new database had moved on."""
    (tmp_path / "relay-state.json").write_text(json.dumps({"epoch": "E1", "reserved": 500}))
    reloaded(tmp_path).save("E1", 700)
    (tmp_path / "relay-state.json").write_text(json.dumps({"epoch": "E1", "reserved": 500}))
    assert reloaded(tmp_path).reserved == 700


def test_an_unreadable_state_file_is_ignored_with_an_error(tmp_path, caplog):
    (tmp_path / "relay-state.json").write_text(json.dumps({"epoch": "E1", "reserved": 5, "holes": [[1]]}))
    state = reloaded(tmp_path)
    assert (state.epoch, state.holes) == (None, []) and "ignoring unreadable" in caplog.text
    assert (tmp_path / "relay-state.json.unreadable").exists()


# -- which ranges a resume sees (handlers/holes.py) --------------------------------------------------

def test_a_resume_sees_the_holes_of_the_current_epoch_only():
    assert holes_to_report("E1", "E1", [(3, 4)]) == [(3, 4)]
    assert holes_to_report("E2", "E1", [(3, 4)]) == []
    assert holes_to_report("E1", None, []) == []


def test_a_worker_reports_the_holes_any_worker_recorded_merged_with_its_own():
    assert holes_to_report("E1", "E1", [(21, 25), (40, 41)], shared=[(10, 20)]) == [(10, 25), (40, 41)]
    assert holes_to_report("E1", "E0", [(1, 2)], shared=[(10, 20)]) == [(10, 20)]


# -- the runtime's side, on a real Runtime (construction does no I/O) ---------------------------------

@pytest.fixture
def runtime(tmp_path):
    return Runtime(Settings.from_env({"DATA_DIR": str(tmp_path), "UPSTREAM_URL": "ws://127.0.0.1:9/",
                                      "CLICKHOUSE_URL": "clickhouse://default@127.0.0.1:9/relay"}))


class FullDisk:
    path = "/data/relay.sqlite3"
    epoch = "E1"
    holes = [(3, 4)]

    def add_hole(self, epoch, first, last):
        raise OSError(28, "No space left on device")


def test_a_dropped_range_that_cannot_be_saved_is_logged_not_raised(runtime, caplog):
    runtime.seq_state = FullDisk()
    runtime.epoch = "E1"
    runtime._on_dropped(10, 20)
    assert "could not save the dropped range 10..20" in caplog.text and "No space left" in caplog.text


def test_a_runtime_reports_the_holes_its_state_holds(runtime):
    runtime.seq_state = FullDisk()
    runtime.epoch = "E1"
    assert runtime.store_holes() == [(3, 4)]
    runtime.epoch = "E2"
    assert runtime.store_holes() == []


class Reservation:
    """A SeqState whose disk is full until `fixed`."""

    path = "/data/relay.sqlite3"

    def __init__(self):
        self.fixed = False
        self.calls = 0

    def ensure(self, epoch, last_seq):
        self.calls += 1
        if not self.fixed:
            raise OSError(28, "No space left on device")


def test_a_reservation_that_cannot_be_saved_loses_no_event_and_is_reported_until_it_can(runtime, caplog):
    caplog.set_level(logging.INFO, logger="webapp.runtime")
    runtime.seq_state = Reservation()
    batch = [make_event(seq, 1000, "t", {"n": seq}) for seq in (1, 2)]
    runtime._persist(batch)
    runtime._persist(batch)
    assert runtime.writer.pending == batch * 2  # still handed to the writer
    assert runtime.state_error == "seq reservation not saved (No space left on device)"
    assert caplog.text.count("cannot extend the seq reservation") == 1  # said once, not per batch
    runtime.seq_state.fixed = True
    runtime._persist(batch)
    assert runtime.state_error is None and "saved again" in caplog.text and runtime.seq_state.calls == 3


# -- off the ingest path ---------------------------------------------------------------------------

def test_the_reservation_is_extended_in_the_background_half_a_block_before_it_runs_out(tmp_path):
    spawned = []
    state = SeqState(str(tmp_path), block=100, spawn=lambda fn, *args: spawned.append((fn, args)), durable=False)
    state.save("E1", 100)
    state.ensure("E1", 40)
    assert spawned == []  # far from the end: nothing to do
    state.ensure("E1", 60)
    state.ensure("E1", 70)  # one extension at a time
    assert len(spawned) == 1 and state.sync_writes == 0 and state.reserved == 100
    assert reloaded(tmp_path).reserved == 100  # the caller wrote nothing
    fn, args = spawned[0]
    fn(*args)  # the pool thread's part
    assert state.reserved == 160 and reloaded(tmp_path).reserved == 160


def test_a_late_extension_makes_the_caller_write_so_no_seq_passes_the_disk(tmp_path):
    state = SeqState(str(tmp_path), block=100, spawn=lambda fn, *args: None, durable=False)  # never lands
    state.save("E1", 100)
    state.ensure("E1", 99)
    assert state.sync_writes == 0
    state.ensure("E1", 100)
    assert state.sync_writes == 1 and state.reserved == 200 and reloaded(tmp_path).reserved == 200


def test_a_failed_background_extension_is_raised_to_the_caller_until_one_succeeds(tmp_path):
    spawned = []
    state = SeqState(str(tmp_path), block=100, spawn=lambda fn, *args: spawned.append((fn, args)), durable=False)
    state.save("E1", 100)

    def full_disk(fn, *args):
        raise OSError(28, "No space left on device")

    state._in_thread = full_disk
    state.ensure("E1", 60)
    fn, args = spawned.pop()
    fn(*args)
    with pytest.raises(OSError) as raised:
        state.ensure("E1", 61)  # said, and tried again
    assert raised.value.errno == 28 and state.reserved == 100
    state._in_thread = lambda fn, *args: fn(*args)
    fn, args = spawned.pop()
    fn(*args)
    state.ensure("E1", 62)  # no raise: saved again
    assert state.reserved == 161


def test_a_hole_the_disk_refused_is_saved_with_a_later_batch(tmp_path):
    spawned = []
    state = SeqState(str(tmp_path), block=100, spawn=lambda fn, *args: spawned.append((fn, args)), durable=False)
    state.save("E1", 100)
    real_save = state.save
    state.save = lambda epoch, reserved: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    with pytest.raises(OSError):
        state.add_hole("E1", 10, 20)
    assert state.holes == [(10, 20)] and reloaded(tmp_path).holes == []  # known here, not on disk
    state.save = real_save  # space again
    state.ensure("E1", 21)  # far from the reservation's end, but a hole is waiting
    fn, args = spawned.pop()
    fn(*args)
    again = reloaded(tmp_path)
    assert (again.reserved, again.holes) == (100, [(10, 20)])


def test_the_database_file_is_in_wal_mode(tmp_path):
    SeqState(str(tmp_path), block=100).save("E1", 100)
    assert SeqState(str(tmp_path), block=100).db.read("PRAGMA journal_mode") == [("wal",)]


def test_by_default_an_extension_is_saved_on_a_thread_of_its_own_not_the_callers(tmp_path):
    import threading

    import gevent

    state = SeqState(str(tmp_path), block=100, durable=False)
    state.save("E1", 100)
    saved_on = []
    real_save = state.save
    state.save = lambda epoch, reserved: saved_on.append(threading.get_ident()) or real_save(epoch, reserved)
    state.ensure("E1", 60)
    gevent.wait(timeout=5)  # the extension greenlet, and the thread it waits on
    assert state.reserved == 160 and saved_on and saved_on[0] != threading.get_ident()


def test_a_hole_is_recorded_and_saved_in_one_piece_beside_an_extension(tmp_path):
    """An extension saving in another thread holds the lock: add_hole waits for it instead of changing
    the holes under it (which the extension would then overwrite with the ones it read)."""
    import threading

    state = SeqState(str(tmp_path), block=100, durable=False)
    state.save("E1", 100)
    with state._disk:  # an extension's save, under way
        adder = threading.Thread(target=state.add_hole, args=("E1", 10, 20))
        adder.start()
        adder.join(0.2)
        assert adder.is_alive() and state.holes == []  # waiting, nothing changed yet
    adder.join(5)
    assert state.holes == [(10, 20)] and reloaded(tmp_path).holes == [(10, 20)]
