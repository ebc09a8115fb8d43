"""SIGKILL in the middle of spooling: no acknowledged batch is lost and no seq is handed out twice.

A child process does what the relay's leader does with DATA_DIR/relay.sqlite3,
with the production settings (fsync'd commits, the reservation extended by a
background thread half a block ahead): at start it reads the spool and the
reservation and continues where handlers/recovery.py says; then it numbers a
batch (`SeqState.ensure`, after which the events may reach clients), prints
the range, appends the batch to the spool and prints the acknowledgement. The
test kills it at a random moment — mostly inside an append's commit, where it
spends its time — and restarts it, several times over.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from webapp.store import SeqState
from webapp.store.spool import Spool

ROOT = Path(__file__).resolve().parents[2]
KILLS = 6
BATCH = 400  # events per batch (~50 KB)
BLOCK = 1_000  # seqs reserved at a time: an extension every 1.25 batches, often under way at the kill

CHILD = r"""
import sys, threading
from handlers.events import make_event
from handlers.recovery import plan_recovery
from webapp.store import SeqState
from webapp.store.spool import Spool

data_dir, batch, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spool = Spool(data_dir + "/spool", 1 << 40)
state = SeqState(data_dir, block, spawn=lambda fn, *a: threading.Thread(target=fn, args=a, daemon=True).start(),
                 in_thread=lambda fn, *a: fn(*a))
records = spool.load(keep_events=1)
state.load()
plan = plan_recovery(store_max=0, spool_max=records[-1].events[-1].seq if records else 0, reserved=state.reserved,
                     floor_seq=0, floor_epoch=None, stored_epoch=None, local_epoch=state.epoch,
                     current_epoch="E1", clustered=False, block=block)
state.save(plan.epoch or "E1", plan.reserve_to)
last = plan.last_seq
print("READY", last, flush=True)
while True:
    events = [make_event(seq, 1_000, "t", {"n": seq, "pad": "x" * 60}) for seq in range(last + 1, last + batch + 1)]
    last = events[-1].seq
    state.ensure(state.epoch, last)
    print("N", events[0].seq, last, flush=True)  # handed out from here on
    spool.append(events)
    print("A", events[0].seq, last, flush=True)  # acknowledged: durable in the spool
"""


def run_until_killed(data_dir: Path, rng: random.Random) -> list[list[str]]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), str(BATCH), str(BLOCK)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout.readline().startswith("READY")
        time.sleep(rng.uniform(0.2, 0.6))
    finally:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
    lines = out.split("\n")
    return [line.split() for line in lines[:-1]]  # the last one may be cut off by the kill


def test_a_killed_spooler_loses_no_acknowledged_batch_and_reuses_no_seq(tmp_path):
    rng = random.Random(14)
    handed_out: list[tuple[int, int]] = []
    acknowledged: set[int] = set()
    for _ in range(KILLS):
        lines = run_until_killed(tmp_path, rng)
        numbered = [(int(a), int(b)) for kind, a, b in lines if kind == "N"]
        assert numbered, "the child numbered nothing before it was killed"
        handed_out += numbered
        acknowledged |= {seq for kind, a, b in lines if kind == "A" for seq in range(int(a), int(b) + 1)}
        spooled = [e.seq for r in Spool(str(tmp_path / "spool"), 1 << 40).load() for e in r.events]
        assert acknowledged <= set(spooled), f"acknowledged seqs lost: {sorted(acknowledged - set(spooled))[:5]}"
        assert spooled == sorted(set(spooled)), "a seq spooled twice"
        state = SeqState(str(tmp_path), BLOCK)
        state.load()
        # the restart continues above both: nothing handed out can be handed out again
        assert max(state.reserved, spooled[-1] if spooled else 0) >= numbered[-1][1], (
            f"handed out up to {numbered[-1][1]}, but a restart would continue after "
            f"{max(state.reserved, spooled[-1] if spooled else 0)}")
    firsts = [first for first, _ in handed_out]
    assert firsts == sorted(firsts) and all(b[0] > a[1] for a, b in itertools.pairwise(handed_out)), (
        "a seq was handed out twice across the restarts")
