"""The cluster role table (handlers/roles.py): transitions, fences, and where a new leader's seqs continue."""

import pytest

from handlers import roles
from handlers.events import make_event
from handlers.roles import SeqSpace, next_role, seq_floor


@pytest.mark.parametrize(("role", "event", "expected"), [
    (roles.FOLLOWER, roles.ELECTED, roles.CANDIDATE),
    (roles.CANDIDATE, roles.CAUGHT_UP, roles.LEADER),
    (roles.CANDIDATE, roles.CATCH_UP_FAILED, roles.FOLLOWER),
    (roles.CANDIDATE, roles.LEASE_LOST, roles.FOLLOWER),
    (roles.LEADER, roles.LEASE_LOST, roles.FOLLOWER),
    (roles.LEADER, roles.SHUTDOWN, roles.STEPPING_DOWN),
    (roles.STEPPING_DOWN, roles.FLUSHED, roles.STOPPED),
    (roles.STEPPING_DOWN, roles.LEASE_LOST, roles.STOPPED),
    (roles.FOLLOWER, roles.SHUTDOWN, roles.STOPPED),
    (roles.STARTING, roles.JOINED, roles.FOLLOWER),
    (roles.STARTING, roles.SHUTDOWN, roles.STOPPED),  # SIGTERM before the stream was reached
])
def test_each_listed_transition_leads_to_its_role(role, event, expected):
    assert next_role(role, event) == expected


@pytest.mark.parametrize(("role", "event"), [
    (roles.FOLLOWER, roles.CAUGHT_UP),  # only a lease holder catches up
    (roles.LEADER, roles.ELECTED),  # elected twice
    (roles.STOPPED, roles.ELECTED),  # a stopping worker never stands again
    (roles.FOLLOWER, roles.FLUSHED),
])
def test_an_event_the_role_does_not_allow_is_an_error(role, event):
    with pytest.raises(roles.RoleError, match=event):
        next_role(role, event)


def test_a_leader_keeps_renewing_its_lease_until_its_flush_is_done():
    role = next_role(roles.LEADER, roles.SHUTDOWN)
    assert roles.holds_lease(role) and roles.may_write_store(role, lease_valid=True)
    role = next_role(role, roles.FLUSHED)
    assert not roles.holds_lease(role) and not roles.may_write_store(role, lease_valid=True)


@pytest.mark.parametrize(("role", "valid", "expected"), [
    (roles.LEADER, True, True),
    (roles.LEADER, False, False),  # paused past its lease: fenced before it knows it lost it
    (roles.CANDIDATE, True, False),  # not caught up yet
    (roles.FOLLOWER, True, False),
    (roles.STEPPING_DOWN, False, False),
    (roles.SINGLE, False, True),  # no cluster, no lease
])
def test_only_a_leader_with_a_surely_valid_lease_may_write_the_store(role, valid, expected):
    assert roles.may_write_store(role, valid) is expected


def space(**kw):
    base = dict(redis_seq=None, redis_epoch=None, stream_seq=0, stream_epoch=None, store_max=0,
                store_epoch=None, seen_seq=0, seen_epoch=None, fresh_epoch="FRESH")
    return seq_floor(**{**base, **kw})


def test_redis_counter_is_the_authority_when_it_exists():
    assert space(redis_seq=500, redis_epoch="E", stream_seq=480, stream_epoch="E", store_max=900,
                 store_epoch="E") == SeqSpace(500, "E")


def test_nothing_to_continue_from_is_a_fresh_epoch_from_zero():
    assert space() == SeqSpace(0, "FRESH")


def test_a_lost_counter_continues_after_the_highest_seq_anyone_could_have_seen():
    assert space(stream_seq=40, stream_epoch="E", store_max=30, store_epoch="E", seen_seq=45,
                 seen_epoch="E") == SeqSpace(45, "E")
    assert space(store_max=30, store_epoch="E") == SeqSpace(30, "E")


def test_a_lost_counter_and_stream_with_a_store_of_another_epoch_ignores_what_this_worker_saw_of_it():
    assert space(store_max=30, store_epoch="S", seen_seq=99, seen_epoch="OTHER") == SeqSpace(30, "S")


@pytest.mark.parametrize(("store_max", "spool_max", "held", "newest", "expected"), [
    (100, 0, range(101, 601), 600, []),  # the stream starts right after the store: everything can be written
    (100, 0, range(50, 601), 600, []),  # the stream overlaps the store
    (100, 0, range(501, 601), 600, [(101, 500)]),  # trimmed before anyone stored them
    (100, 300, range(501, 601), 600, [(301, 500)]),  # this host's spool still has some of them
    (100, 600, range(501, 601), 600, []),
    (None, 0, range(501, 601), 600, []),  # the store could not be asked: nothing is known
    (100, 0, [], 100, []),  # nothing given past the store (an empty stream over a store, a fresh epoch)
    (100, 0, [], 160, [(101, 160)]),  # Redis restarted empty and this worker holds no copy of 101..160
    (100, 0, range(81, 161), 160, []),  # ... its cache holds them: it writes them
    (100, 0, range(141, 161), 160, [(101, 140)]),  # ... only the newest of them
    (100, 0, [*range(101, 121), *range(131, 161)], 160, [(121, 130)]),  # a gap between what it read and the stream
])
def test_a_new_leader_knows_which_seqs_it_can_write_from_nowhere(store_max, spool_max, held, newest, expected):
    assert roles.unfillable(store_max, spool_max, list(held), newest) == expected


def events(first: int, last: int) -> list:
    return [make_event(seq, 1_000, "T.X", {"n": seq}) for seq in range(first, last + 1)]


def seqs(evs: list) -> list[int]:
    return [e.seq for e in evs]


def test_a_new_leader_writes_what_it_read_from_the_streams_copy_and_below_it_from_its_cache():
    # read through 160; the stream holds 131..170 (trimmed below 131): 101..130 from the cache
    assert seqs(roles.reads_to_store(events(101, 160), events(131, 170), 160)) == list(range(101, 161))
    # Redis restarted empty: all of it from the cache
    assert seqs(roles.reads_to_store(events(101, 160), [], 160)) == list(range(101, 161))
    # the stream holds all it read: the cache adds nothing
    assert seqs(roles.reads_to_store(events(101, 160), events(1, 170), 160)) == list(range(1, 161))
    # nothing read yet: only what the reader will deliver (not given here)
    assert roles.reads_to_store([], events(1, 10), 0) == []


# -- how far behind the stream a worker is (/health's lag) -------------------------------------------


def test_the_leader_counts_what_redis_numbered_that_has_not_come_back_and_what_waits_for_a_seq():
    assert roles.leader_lag(assigned_seq=120, last_seq=100, outbox_events=0) == 20
    assert roles.leader_lag(assigned_seq=100, last_seq=100, outbox_events=0) == 0
    assert roles.leader_lag(assigned_seq=100, last_seq=100, outbox_events=7) == 7
    assert roles.leader_lag(assigned_seq=90, last_seq=100, outbox_events=0) == 0  # read back before the answer


@pytest.mark.parametrize(("newest", "last_seq", "read_epoch", "expected"), [
    ((250, "E1"), 200, "E1", 50),  # behind by 50
    ((200, "E1"), 200, "E1", 0),  # caught up
    (None, 0, "E1", 0),  # an empty stream: nothing to be behind on
    ((5, "E2"), 200, "E1", None),  # a new leader's seq space not reached yet: not comparable
    ((250, "E1"), 0, None, 250),  # nothing read yet: every entry is ahead
])
def test_a_follower_compares_the_streams_newest_seq_with_its_last_read(newest, last_seq, read_epoch, expected):
    assert roles.follower_lag(newest, last_seq, read_epoch) == expected


@pytest.mark.parametrize(("role", "leader_accepts", "workers", "expected"), [
    (roles.LEADER, True, 7, True),  # the default: every worker takes clients
    (roles.LEADER, False, 7, False),
    (roles.CANDIDATE, False, 7, False),  # holds the lease: about to lead
    (roles.STEPPING_DOWN, False, 7, False),
    (roles.FOLLOWER, False, 7, True),
    (roles.STARTING, False, 7, True),
    (roles.LEADER, False, 1, True),  # alone on its socket: nobody else would accept them
    (roles.SINGLE, False, 1, True),
])
def test_only_a_lease_holder_with_others_on_its_socket_leaves_new_clients_to_them(role, leader_accepts, workers,
                                                                                    expected):
    assert roles.takes_clients(role, leader_accepts, workers) is expected
