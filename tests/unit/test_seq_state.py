"""DATA_DIR/relay-state.json: the epoch, the seq reservation and the ranges dropped from persistence."""

import json
import logging
from types import SimpleNamespace

import pytest

from handlers.events import make_event
from webapp.runtime import Runtime
from webapp.store import SeqState


def test_the_reservation_and_holes_survive_a_restart(tmp_path):
    state = SeqState(str(tmp_path), block=100)
    state.save("E1", 100)
    state.add_hole("E1", 10, 20)
    state.add_hole("E1", 21, 30)
    again = SeqState(str(tmp_path), block=100)
    again.load()
    assert (again.epoch, again.reserved, again.holes) == ("E1", 100, [(10, 30)])


def test_a_new_epoch_forgets_the_old_ones_holes(tmp_path):
    state = SeqState(str(tmp_path), block=100)
    state.save("E1", 100)
    state.add_hole("E1", 10, 20)
    state.save("E2", 100)
    assert state.holes == []
    state.add_hole("E2", 5, 6)
    state.add_hole("E3", 7, 8)  # a hole of another epoch starts its list afresh
    assert (state.epoch, state.holes) == ("E3", [(7, 8)])


def test_a_state_file_from_before_holes_were_kept_loads(tmp_path):
    (tmp_path / "relay-state.json").write_text(json.dumps({"epoch": "E1", "reserved": 500}))
    state = SeqState(str(tmp_path), block=100)
    state.load()
    assert (state.epoch, state.reserved, state.holes) == ("E1", 500, [])


def test_an_unreadable_state_file_is_ignored_with_an_error(tmp_path, caplog):
    (tmp_path / "relay-state.json").write_text(json.dumps({"epoch": "E1", "reserved": 5, "holes": [[1]]}))
    state = SeqState(str(tmp_path), block=100)
    state.load()
    assert state.holes == [] and "ignoring unreadable" in caplog.text


# -- the runtime's side: recording a dropped range, and which ranges a resume sees ------------------

class FullDisk:
    path = "/data/relay-state.json"
    epoch = "E1"
    holes = [(3, 4)]

    def add_hole(self, epoch, first, last):
        raise OSError(28, "No space left on device")


def test_a_dropped_range_that_cannot_be_saved_is_logged_not_raised(caplog):
    rt = SimpleNamespace(seq_state=FullDisk(), stream_epoch="E1", clustered=False)
    Runtime._on_dropped(rt, 10, 20)
    assert "could not save the dropped range 10..20" in caplog.text and "No space left" in caplog.text


def test_a_resume_sees_the_holes_of_the_current_epoch_only():
    assert Runtime.store_holes(SimpleNamespace(seq_state=FullDisk(), stream_epoch="E1", clustered=False)) == [(3, 4)]
    assert Runtime.store_holes(SimpleNamespace(seq_state=FullDisk(), stream_epoch="E2", clustered=False)) == []
    assert Runtime.store_holes(SimpleNamespace(seq_state=None, stream_epoch="E1", clustered=False)) == []


class Reservation:
    """A SeqState whose disk is full until `fixed`."""

    path = "/data/relay-state.json"

    def __init__(self):
        self.fixed = False
        self.calls = 0

    def ensure(self, epoch, last_seq):
        self.calls += 1
        if not self.fixed:
            raise OSError(28, "No space left on device")


def test_a_reservation_that_cannot_be_saved_loses_no_event_and_is_reported_until_it_can(caplog):
    caplog.set_level(logging.INFO, logger="webapp.runtime")
    queued = []
    rt = SimpleNamespace(clustered=False, epoch="E1", seq_state=Reservation(), state_error=None,
                         writer=SimpleNamespace(enqueue=queued.extend))
    batch = [make_event(seq, 1000, "t", {"n": seq}) for seq in (1, 2)]
    Runtime._persist(rt, batch)
    Runtime._persist(rt, batch)
    assert queued == batch * 2  # still handed to the writer
    assert rt.state_error == "seq reservation not saved (No space left on device)"
    assert caplog.text.count("cannot extend the seq reservation") == 1  # said once, not per batch
    rt.seq_state.fixed = True
    Runtime._persist(rt, batch)
    assert rt.state_error is None and "saved again" in caplog.text and rt.seq_state.calls == 3


# -- off the ingest path ---------------------------------------------------------------------------

def test_the_reservation_is_extended_in_the_background_half_a_block_before_it_runs_out(tmp_path):
    spawned = []
    state = SeqState(str(tmp_path), block=100, spawn=lambda fn, *args: spawned.append((fn, args)))
    state.save("E1", 100)
    state.ensure("E1", 40)
    assert spawned == []  # far from the end: nothing to do
    state.ensure("E1", 60)
    state.ensure("E1", 70)  # one extension at a time
    assert len(spawned) == 1 and state.sync_writes == 0 and state.reserved == 100
    fn, args = spawned[0]
    fn(*args)  # the pool thread's part
    assert state.reserved == 160 and json.loads((tmp_path / "relay-state.json").read_text())["reserved"] == 160


def test_a_late_extension_makes_the_caller_write_so_no_seq_passes_the_disk(tmp_path):
    state = SeqState(str(tmp_path), block=100, spawn=lambda fn, *args: None)  # the extension never lands
    state.save("E1", 100)
    state.ensure("E1", 99)
    assert state.sync_writes == 0
    state.ensure("E1", 100)
    assert state.sync_writes == 1 and state.reserved == 200
    assert json.loads((tmp_path / "relay-state.json").read_text())["reserved"] == 200


def test_a_failed_background_extension_is_raised_to_the_caller_until_one_succeeds(tmp_path):
    spawned = []
    state = SeqState(str(tmp_path), block=100, spawn=lambda fn, *args: spawned.append((fn, args)))
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
