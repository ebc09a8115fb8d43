"""A worker's role in a cluster as a table: follower → candidate → leader → stepping down, and what each may do.

h11's `_state.py` shape: the transitions are one dict, an event the table does
not list for the current role is a protocol error (a bug in the shell), and
every decision the leadership shell makes about its role is a pure function
here. `seq_floor` is the arithmetic of a new leader's seq space.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from handlers.events import Event

STARTING = "starting"  # not yet reading the stream
SINGLE = "single"  # no Redis: this process is the whole relay
FOLLOWER = "follower"  # reads the stream, serves its clients, stands for leader
CANDIDATE = "candidate"  # holds the lease, catching up with the stream and the store
LEADER = "leader"  # holds the lease and the upstream; its events get seqs in Redis, its writer fills the store
STEPPING_DOWN = "stepping_down"  # shutting down: still holds (and renews) the lease until its writer has flushed
STOPPED = "stopped"  # released or gave up the lease; will not stand again

# events
JOINED = "joined"  # the stream's tail is read; the worker reads it from there on
ELECTED = "elected"  # the lease was acquired
CAUGHT_UP = "caught_up"  # stream tail read, seq space seeded: may lead
CATCH_UP_FAILED = "catch_up_failed"  # Redis failed before leading started
LEASE_LOST = "lease_lost"  # renew refused, an append fenced, or Redis down past the lease
SHUTDOWN = "shutdown"  # SIGTERM
FLUSHED = "flushed"  # the writer flushed (or gave up): the lease may go


class RoleError(Exception):
    """An event the current role does not allow (a bug in the shell, never the network's fault)."""


TRANSITIONS: dict[str, dict[str, str]] = {
    STARTING: {JOINED: FOLLOWER, SHUTDOWN: STOPPED},
    FOLLOWER: {ELECTED: CANDIDATE, SHUTDOWN: STOPPED, LEASE_LOST: FOLLOWER},
    CANDIDATE: {CAUGHT_UP: LEADER, CATCH_UP_FAILED: FOLLOWER, LEASE_LOST: FOLLOWER, SHUTDOWN: STEPPING_DOWN},
    LEADER: {LEASE_LOST: FOLLOWER, SHUTDOWN: STEPPING_DOWN},
    # a lease lost while flushing: the writer is fenced at once, nothing more may be written
    STEPPING_DOWN: {FLUSHED: STOPPED, LEASE_LOST: STOPPED, SHUTDOWN: STEPPING_DOWN},
    STOPPED: {SHUTDOWN: STOPPED, LEASE_LOST: STOPPED, FLUSHED: STOPPED},
}


def next_role(role: str, event: str) -> str:
    try:
        return TRANSITIONS[role][event]
    except KeyError:
        raise RoleError(f"event {event!r} is not allowed in role {role!r}") from None


def holds_lease(role: str) -> bool:
    """Roles that must keep renewing the lease (and never let it lapse while they may write)."""
    return role in (CANDIDATE, LEADER, STEPPING_DOWN)


def takes_clients(role: str, leader_accepts: bool, workers: int) -> bool:
    """Whether a worker accepts new client connections: always, unless LEADER_ACCEPTS is off, it
    holds the lease (or is about to), and other workers on its socket can take them instead."""
    return leader_accepts or workers < 2 or not holds_lease(role)


def may_write_store(role: str, lease_valid: bool) -> bool:
    """The store writer's fence: only a lease holder, and only while its lease is surely valid."""
    if role == SINGLE:
        return True
    return role in (LEADER, STEPPING_DOWN) and lease_valid


def leads(role: str) -> bool:
    """Holds the upstream and ingests (the single process always does)."""
    return role in (SINGLE, LEADER)


@dataclass(frozen=True, slots=True)
class SeqSpace:
    """Where a new leader's seqs continue: after `floor`, in `epoch`."""

    floor: int
    epoch: str


def seq_floor(*, redis_seq: int | None, redis_epoch: str | None, stream_seq: int, stream_epoch: str | None,
              store_max: int, store_epoch: str | None, seen_seq: int, seen_epoch: str | None,
              fresh_epoch: str) -> SeqSpace:
    """The seq space a new leader seeds in Redis when Redis holds none (or a stale one).

    Redis's own counter, when present, is the authority: the append script
    numbers from it, so nothing below it is ever reused. When Redis lost it (a
    restart without persistence), the floor is the highest seq anyone could
    have seen in the surviving epoch: the stream's tail, the store, and what
    this worker itself read before the loss. Nothing to continue from: a
    fresh epoch from 0.
    """
    if redis_epoch is not None:
        floor = redis_seq or 0
        if stream_epoch == redis_epoch:
            floor = max(floor, stream_seq)
        return SeqSpace(floor, redis_epoch)
    epoch = stream_epoch or store_epoch or seen_epoch
    if epoch is None:
        return SeqSpace(0, fresh_epoch)
    floor = 0
    if stream_epoch == epoch:
        floor = max(floor, stream_seq)
    if store_epoch == epoch or (store_epoch is None and store_max):
        floor = max(floor, store_max)
    if seen_epoch == epoch:
        floor = max(floor, seen_seq)
    if floor == 0:
        return SeqSpace(0, fresh_epoch)
    return SeqSpace(floor, epoch)


def reads_to_store(cached: list[Event], stream: list[Event], read_through: int) -> list[Event]:
    """What a new leader gives its writer of what its own reader read (up to `read_through`, in the
    stream's epoch): the stream's copy where the stream still holds it, and below the stream's oldest
    entry — trimmed, or the whole stream lost with a Redis that restarted empty — its cache's copy.
    Ascending seq; the writer inserts only what the store lacks."""
    oldest = stream[0].seq if stream else None
    return ([e for e in cached if oldest is None or e.seq < oldest]
            + [e for e in stream if e.seq <= read_through])


def unfillable(store_max: int | None, spool_max: int, held: Iterable[int], newest: int) -> list[tuple[int, int]]:
    """The seq ranges a new leader can write from nowhere: above what the store and its spool hold, up to
    `newest` (the last seq given in its seq space), and not `held` (ascending, repeats allowed: the seqs it
    has a copy of, read by its own reader or still in the stream). Empty when nothing is lost, or when the
    store could not be asked (then nothing is known)."""
    if store_max is None:
        return []
    lost = []
    expected = max(store_max, spool_max) + 1
    for seq in held:
        if seq > newest:
            break
        if seq > expected:
            lost.append((expected, seq - 1))
        expected = max(expected, seq + 1)
    if expected <= newest:
        lost.append((expected, newest))
    return lost


def leader_lag(assigned_seq: int, last_seq: int, outbox_events: int) -> int:
    """How far a leader is behind on the stream: the events Redis numbered for it that its own reader has
    not read back yet, plus those still waiting in its outbox for a seq."""
    return max(0, assigned_seq - last_seq) + outbox_events


def follower_lag(newest: tuple[int, str] | None, last_seq: int, read_epoch: str | None) -> int | None:
    """How far a follower is behind: the stream's newest (seq, epoch) — None for an empty stream — minus the
    last seq it read. None (not known) when the newest entry is of an epoch this worker has not reached yet:
    a new leader's seq space, where the two numbers cannot be compared."""
    if newest is None:
        return 0
    seq, epoch = newest
    if read_epoch is not None and epoch != read_epoch:
        return None
    return max(0, seq - last_seq)
