"""The leader's outbox: a running count, a bound kept by a gate the upstream reader waits on, refusals said."""

import gevent
import pytest

from handlers.events import make_event
from webapp.bus.outbox import FULL_ERROR, Outbox
from webapp.bus.receipt import NoLeader, Receipt


def events(n: int) -> list:
    return [make_event(i + 1, 1_000, "T.X", {"n": i}) for i in range(n)]


def test_the_gate_closes_at_the_bound_and_opens_once_a_group_is_taken():
    hits = []
    outbox = Outbox(5, on_full=lambda: hits.append(1))
    outbox.put(events(3), None)
    assert not outbox.full and outbox.events == 3
    outbox.put(events(3), None)  # the upstream's frames are never refused: the bound is kept by the gate
    assert outbox.full and outbox.events == 6 and outbox.peak == 6 and hits == [1]
    reader = gevent.spawn(outbox.wait_for_room)
    gevent.sleep(0.01)
    assert not reader.dead  # the upstream reader waits
    outbox.take()
    reader.join(1)
    assert reader.dead and outbox.events == 3 and outbox.status()["full_since"] is None
    assert outbox.status()["times_full"] == 1


def test_a_publish_while_full_is_refused_at_once_and_never_queued():
    outbox = Outbox(2)
    outbox.put(events(2), None)
    ticket = Receipt(1)
    assert outbox.put(events(1), ticket) is False
    with pytest.raises(NoLeader, match="outbox is full"):
        ticket.seqs(0.01)
    assert outbox.events == 2 and len(outbox) == 1 and outbox.refused == 1 and "BUS_OUTBOX_MAX" in FULL_ERROR


def test_what_is_discarded_is_counted_and_its_callers_told():
    outbox = Outbox(100)
    ticket = Receipt(2)
    outbox.put(events(4), None)
    outbox.put(events(2), ticket)
    assert outbox.discard("lost the leader lease") == 6
    assert outbox.events == 0 and outbox.discarded == 6 and not outbox
    with pytest.raises(NoLeader, match="lost the leader lease"):
        ticket.seqs(0.01)


def test_failing_appends_are_timed_from_the_first_failure_until_one_works(caplog):
    outbox = Outbox(2)
    assert outbox.stuck_for(1e12) == (0.0, 0.0)
    outbox.put(events(2), None)
    outbox.full_since = 1_000.0
    outbox.append_failed("refused: OutOfMemoryError: command not allowed")
    outbox.append_failing_since = 1_000.0
    outbox.append_failed("refused: OutOfMemoryError: command not allowed")  # the first failure's time is kept
    assert outbox.stuck_for(1_012.5) == (12.5, 12.5)
    status = outbox.status()
    assert status["append_error"].startswith("refused: OutOfMemoryError") and status["append_failures"] == 2
    assert [r.levelname for r in caplog.records if "appends failing" in r.message] == ["ERROR"]  # throttled
    outbox.appended()
    outbox.take()
    assert outbox.stuck_for(1_013.0) == (0.0, 0.0) and outbox.status()["append_error"] is None


def test_discarding_the_outbox_ends_its_failing_appends():
    outbox = Outbox(10)
    outbox.put(events(1), None)
    outbox.append_failed("unavailable: ConnectionError: refused")
    outbox.discard("lost the leader lease")
    assert outbox.stuck_for(1e12) == (0.0, 0.0) and outbox.append_error is None
