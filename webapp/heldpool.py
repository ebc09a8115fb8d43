"""gunicorn's per-worker connection pool, counting connections held without a greenlet (webapp/conn.py)."""

from __future__ import annotations

import weakref

import gevent
import gevent.pool


class HeldPool(gevent.pool.Pool):
    """gunicorn's per-worker connection pool, counting held connections as members.

    A request greenlet that hands its connection over gives its pool slot to the
    connection (`keep_slot`); closing the connection frees it (`release_slot`), which
    also wakes an accept loop that stopped because the pool was full.
    """

    instances: weakref.WeakSet = weakref.WeakSet()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.held = 0
        HeldPool.instances.add(self)

    def free_count(self) -> int:
        if self.size is None:
            return 1
        return max(0, self.size - len(self) - self.held)

    def keep_slot(self, greenlet) -> bool:
        if greenlet not in self.greenlets:
            return False
        greenlet.unlink(self._discard)
        gevent.pool.Group._discard(self, greenlet)  # no longer a member; its semaphore permit stays taken
        self.held += 1
        return True

    def release_slot(self) -> None:
        self.held -= 1
        self._semaphore.release()


def pool_slot_of(greenlet) -> HeldPool | None:
    for pool in HeldPool.instances:
        if pool.keep_slot(greenlet):
            return pool
    return None
