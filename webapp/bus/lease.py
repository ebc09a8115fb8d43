"""The leader lease: redis-py's Lock on one key, holding this worker's name as its token, renewed while alive.

redis.lock.Lock is the same pattern the lease needs (SET NX PX with a token,
compare-and-PEXPIRE to renew, compare-and-DEL to release, each atomic in
Redis), so the lease uses it rather than scripts of its own. Two things are
added here: the token is this worker's name (`holder`), not Lock's random
UUID, because the fence lives in the append and seed scripts (bus/scripts.py),
which compare the key's value with the token they are given inside the same
atomic call that numbers events — the name also tells /health who leads; and
`held_until`, the monotonic time until which the lease is surely ours, counted
from before each request was sent, which the store writer's fence and
`watch_lease` read. The token is kept on the Lock object, not thread-local:
under gevent's patching a thread-local is greenlet-local, and the lease is
taken in one greenlet and released in another.
"""

import time

import redis
from redis.exceptions import LockError


class LostLease(Exception):
    """The lease is someone else's: this worker must stop acting as leader."""


class Lease:
    """The leader lease: a key set NX with a time-out, renewed while alive."""

    def __init__(self, client: redis.Redis, key: str, holder: str, lease_ms: int):
        self.client = client
        self.key = key
        self.holder = holder
        self.lease_ms = lease_ms
        self._lock = client.lock(key, timeout=lease_ms / 1000.0, thread_local=False)
        self.held_until = 0.0  # monotonic time until which we know the lease is ours

    def acquire(self) -> bool:
        started = time.monotonic()
        if self._lock.acquire(blocking=False, token=self.holder):
            self.held_until = started + self.lease_ms / 1000.0
            return True
        return False

    def renew(self) -> bool:
        """Reset the lease's time-out to lease_ms; False (and no longer held) when the key is not ours."""
        started = time.monotonic()
        try:
            self._lock.reacquire()
        except LockError:  # not ours (taken over, lapsed), or never acquired here
            self.held_until = 0.0
            return False
        self.held_until = started + self.lease_ms / 1000.0
        return True

    def release(self) -> bool:
        """Delete the key if it is still ours; False when it is not (lapsed or taken over: nothing to delete)."""
        self.held_until = 0.0
        try:
            self._lock.release()
        except LockError:
            return False
        return True

    def current_holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if value else None

    @property
    def valid(self) -> bool:
        return time.monotonic() < self.held_until
