"""The leader lease: one Redis key holding the holder's token, set NX with a time-out and renewed while alive."""

import time

import redis

from webapp.bus.scripts import RELEASE, RENEW


class LostLease(Exception):
    """The lease is someone else's: this worker must stop acting as leader."""


class Lease:
    """The leader lease: a key set NX with a time-out, renewed while alive."""

    def __init__(self, client: redis.Redis, key: str, holder: str, lease_ms: int):
        self.client = client
        self.key = key
        self.holder = holder
        self.lease_ms = lease_ms
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self.held_until = 0.0  # monotonic time until which we know the lease is ours

    def acquire(self) -> bool:
        started = time.monotonic()
        if self.client.set(self.key, self.holder, nx=True, px=self.lease_ms):
            self.held_until = started + self.lease_ms / 1000.0
            return True
        return False

    def renew(self) -> bool:
        started = time.monotonic()
        if self._renew(keys=[self.key], args=[self.holder, self.lease_ms]):
            self.held_until = started + self.lease_ms / 1000.0
            return True
        self.held_until = 0.0
        return False

    def release(self) -> None:
        self.held_until = 0.0
        self._release(keys=[self.key], args=[self.holder])

    def current_holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if value else None

    @property
    def valid(self) -> bool:
        return time.monotonic() < self.held_until

