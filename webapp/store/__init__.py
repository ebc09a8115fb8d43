"""Persistence: the backend chosen by CLICKHOUSE_URL, the spool, the writer, and the local seq state."""

import json
import logging
import os
from typing import Callable

import gevent
from gevent.monkey import get_original

from handlers.resume import add_hole as with_hole
from webapp.settings import Settings
from webapp.store.base import Store
from webapp.threads import call_in_thread

log = logging.getLogger(__name__)


def make_store(settings: Settings) -> Store | None:
    """The configured backend, built but not connected; None for CLICKHOUSE_URL=none."""
    if settings.store_backend == "none":
        return None
    if settings.store_backend == "clickhouse":
        from webapp.store.clickhouse import ClickHouseStore

        return ClickHouseStore(settings.clickhouse_url, max_rows_to_read=settings.query_max_rows_to_read,
                               max_memory_bytes=settings.query_max_memory_bytes,
                               query_url=settings.clickhouse_query_url)
    from webapp.store.embedded import EmbeddedStore

    return EmbeddedStore(settings.data_dir, max_rows_to_read=settings.query_max_rows_to_read,
                         max_memory_bytes=settings.query_max_memory_bytes,
                         query_timeout_s=settings.query_timeout_s, query_max_rows=settings.query_max_rows)


class SeqState:
    """DATA_DIR/relay-state.json: the epoch and a seq reservation, so no seq is ever reused.

    Seqs are reserved in blocks before they are handed out; after a crash the
    relay continues above the reservation (the events numbered and lost in the
    crash leave a gap that resuming clients see as `missing`, never a reuse).
    A clean shutdown records the exact last seq.

    The ingest never waits on this disk: `ensure` extends the reservation in a
    pool thread half a block before it runs out; only when that extension is
    late (more than half a block numbered during one write) does the caller
    write it itself (`sync_writes` counts those).
    """

    def __init__(self, data_dir: str, block: int,
                 spawn: Callable = lambda fn, *args: gevent.spawn(fn, *args),
                 in_thread: Callable = call_in_thread):
        self.path = os.path.join(data_dir, "relay-state.json")
        self.block = block
        self._spawn = spawn
        self._in_thread = in_thread
        # a real lock, not gevent's: writes come from pool threads and, rarely, from the hub itself
        self._disk = get_original("threading", "Lock")()
        self._extending = False
        self._failed: OSError | None = None  # the last background extension failed with this
        self.sync_writes = 0
        self.epoch: str | None = None
        self.reserved = 0
        # seq ranges of this epoch dropped from persistence (spool full while the store was
        # down): a resume from the store reports them missing instead of skipping them silently
        self.holes: list[tuple[int, int]] = []

    def load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                state = json.loads(f.read())
            self.epoch = str(state["epoch"])
            self.reserved = int(state["reserved"])
            self.holes = [(int(lo), int(hi)) for lo, hi in state.get("holes", [])]
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable %s: %s", self.path, exc)

    def save(self, epoch: str, reserved: int) -> None:
        """Write the state (fsync'd); the new reservation counts only once it is on disk."""
        with self._disk:
            holes = self.holes if epoch == self.epoch else []  # another seq space: the old holes mean nothing
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"epoch": epoch, "reserved": reserved, "holes": holes}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self.epoch, self.reserved, self.holes = epoch, reserved, holes

    def add_hole(self, epoch: str, first: int, last: int) -> None:
        """Record first..last as never persisted (and save it)."""
        self.holes = with_hole(self.holes if epoch == self.epoch else [], first, last)
        self.epoch = epoch
        self.save(epoch, self.reserved)

    def ensure(self, epoch: str, last_seq: int) -> None:
        """Called as seqs are handed out (never yields): extend the reservation before it runs out.

        Raises OSError while the reservation cannot be saved (the caller reports it)."""
        if last_seq >= self.reserved:
            self.sync_writes += 1  # the background extension was late, or failed: no seq past the disk
            self.save(epoch, last_seq + self.block)
            self._failed = None
            return
        if last_seq >= self.reserved - self.block // 2 and not self._extending:
            self._extending = True
            self._spawn(self._extend, epoch, last_seq + self.block)
        if self._failed is not None:
            raise self._failed

    def _extend(self, epoch: str, reserved: int) -> None:
        try:
            self._in_thread(self.save, epoch, reserved)
            self._failed = None
        except OSError as exc:
            self._failed = exc
        finally:
            self._extending = False
