"""Runtime and Leadership in a cluster: stream_lag (how far this worker is behind on the Redis stream, None when unknown),
and taking over the lead when Redis blips."""

from types import SimpleNamespace

import pytest
import redis

from handlers import roles
from webapp.health import stream_lag
from webapp.leader import Leadership
from webapp.runtime import Runtime


class Bus:
    def __init__(self, last_seq=0, epoch="E1", ok=True, newest=None, fails=False, assigned_seq=0, outbox_events=0):
        self.last_seq, self.epoch, self.ok = last_seq, epoch, ok
        self._newest, self._fails = newest, fails
        self.assigned_seq, self.outbox_events = assigned_seq, outbox_events

    def newest(self):
        if self._fails:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return self._newest


def lag(role="follower", clustered=True, **bus):
    rt = SimpleNamespace(clustered=clustered, role=role, bus=Bus(**bus))
    return stream_lag(rt)  # a view over the parts it reads, given as plain attributes


def test_a_single_worker_is_never_behind():
    assert lag(role="single", clustered=False, assigned_seq=50, last_seq=10) == 0


def test_the_leader_counts_what_redis_numbered_that_has_not_come_back_and_what_waits_for_a_seq():
    assert lag(role="leader", assigned_seq=120, last_seq=100) == 20
    assert lag(role="leader", assigned_seq=100, last_seq=100) == 0
    assert lag(role="leader", assigned_seq=100, last_seq=100, outbox_events=7) == 7


@pytest.mark.parametrize(("newest", "last_seq", "expected"), [
    ((250, "E1"), 200, 50),  # behind by 50
    ((200, "E1"), 200, 0),  # caught up
    (None, 0, 0),  # an empty stream: nothing to be behind on
    ((5, "E2"), 200, None),  # a new leader's seq space not reached yet: not comparable
])
def test_a_follower_compares_the_streams_newest_seq_with_its_last_read(newest, last_seq, expected):
    assert lag(newest=newest, last_seq=last_seq) == expected


def test_a_follower_whose_redis_is_down_does_not_know():
    assert lag(ok=False, newest=(250, "E1"), last_seq=200) is None


def test_a_follower_whose_redis_fails_on_the_question_does_not_know():
    assert lag(fails=True, last_seq=200) is None


# -- taking over the lead ------------------------------------------------------------------------


class BlippingBus:
    """Redis fails just after the election: reading the stream's tail raises."""

    stream_maxlen = 10_000

    def __init__(self):
        self.released = False
        self.failures = []
        self.lease = SimpleNamespace(release=self._release)
        self.on_fenced = None

    def _release(self):
        self.released = True

    def tail(self, count):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    def _failed(self, exc):
        self.failures.append(exc)


def test_a_leader_elected_during_a_redis_blip_stands_down_and_releases_the_lease(caplog):
    bus = BlippingBus()
    rt = SimpleNamespace(role=roles.CANDIDATE, _leading=["this greenlet"], feeding_writer=False, store=None)
    Leadership(rt, bus).take_over()
    assert rt.role == roles.FOLLOWER and rt._leading == [] and bus.released and len(bus.failures) == 1
    assert "standing down" in caplog.text


# -- store holes: shared through Redis ----------------------------------------------------------


class HoleBus:
    epoch = "E1"

    def __init__(self, shared=(), fails=False):
        self.shared, self.fails = list(shared), fails

    def holes(self, epoch):
        if self.fails:
            raise redis.ConnectionError("down")
        return list(self.shared) if epoch == "E1" else []


def holes(bus, local=(), local_epoch="E1"):
    rt = SimpleNamespace(clustered=True, bus=bus, epoch="E1",
                         seq_state=SimpleNamespace(epoch=local_epoch, holes=list(local)))
    rt.stream_epoch = "E1"
    return Runtime.store_holes(rt)


def test_a_worker_reports_the_holes_any_worker_recorded_merged_with_its_own():
    assert holes(HoleBus([(10, 20)]), local=[(21, 25), (40, 41)]) == [(10, 25), (40, 41)]


def test_without_redis_a_worker_still_reports_its_own_holes():
    assert holes(HoleBus([(10, 20)], fails=True), local=[(40, 41)]) == [(40, 41)]


def test_holes_of_another_epoch_are_not_this_ones():
    assert holes(HoleBus([(10, 20)]), local=[(1, 2)], local_epoch="E0") == [(10, 20)]
