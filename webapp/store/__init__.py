"""Persistence: the backend chosen by CLICKHOUSE_URL, the spool, the writer, and the local seq state."""

import json
import logging
import os
from typing import Callable

import gevent
import gevent.threadpool
from gevent.monkey import get_original

from handlers.resume import add_hole as with_hole
from webapp.settings import Settings
from webapp.store import legacy
from webapp.store.base import Store
from webapp.store.localdb import LocalDB, db_path
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
    """The epoch and a seq reservation in DATA_DIR/relay.sqlite3, so no seq is ever reused.

    Seqs are reserved in blocks before they are handed out; after a crash the
    relay continues above the reservation (the events numbered and lost in the
    crash leave a gap that resuming clients see as `missing`, never a reuse).
    A clean shutdown records the exact last seq. Each save is one transaction,
    fsync'd (localdb.py: a process crash or a power loss keeps it).

    The ingest never waits on this disk: `ensure` extends the reservation in a
    pool thread half a block before it runs out; only when that extension is
    late (more than half a block numbered while one commit was under way, or
    the disk failing) does the caller write it itself, on its own thread,
    rather than number past the disk (`sync_writes` counts those).
    """

    def __init__(self, data_dir: str, block: int,
                 spawn: Callable = lambda fn, *args: gevent.spawn(fn, *args),
                 in_thread: Callable | None = None, durable: bool = True):
        self.db = LocalDB(db_path(data_dir), durable=durable)
        self.path = self.db.path
        self.legacy_path = os.path.join(data_dir, legacy.STATE_NAME)
        self.block = block
        self._spawn = spawn
        # its own thread by default: an extension never queues behind other work in the hub's pool
        self._in_thread = in_thread or self._on_own_thread
        self._pool = None
        # a real lock, not gevent's: writes come from pool threads and, rarely, from the hub itself;
        # re-entrant, so that add_hole changes the holes and saves them in one piece
        self._disk = get_original("threading", "RLock")()
        self._extending = False
        self._failed: OSError | None = None  # the last background extension failed with this
        self._unsaved = False  # holes recorded in memory that the disk has not taken yet
        self.sync_writes = 0
        self.epoch: str | None = None
        self.reserved = 0
        # seq ranges of this epoch dropped from persistence (spool full while the store was
        # down): a resume from the store reports them missing instead of skipping them silently
        self.holes: list[tuple[int, int]] = []

    def load(self) -> None:
        """The saved state; the previous version's relay-state.json is imported first (once)."""
        self._migrate()
        rows = self.db.read("SELECT epoch, reserved, holes FROM state WHERE id = 1")
        if rows:
            epoch, reserved, holes = rows[0]
            self.epoch, self.reserved = epoch, reserved
            self.holes = [(int(lo), int(hi)) for lo, hi in json.loads(holes)]

    def _migrate(self) -> None:
        try:
            old = legacy.read_state(self.legacy_path)
        except ValueError as exc:
            log.error("ignoring unreadable %s: %s", self.legacy_path, exc)
            old = None
        if old is None:
            if os.path.exists(self.legacy_path):
                os.replace(self.legacy_path, self.legacy_path + ".unreadable")
            return
        with self._disk, self.db.transaction() as conn:
            row = conn.execute("SELECT epoch, reserved FROM state WHERE id = 1").fetchone()
            # a crash after an earlier import and before the rename: never lower a reservation
            reserved = max(old["reserved"], row[1]) if row and row[0] == old["epoch"] else old["reserved"]
            if row is None or row[0] == old["epoch"]:
                conn.execute("INSERT OR REPLACE INTO state (id, epoch, reserved, holes) VALUES (1, ?, ?, ?)",
                             (old["epoch"], reserved, json.dumps(old["holes"])))
        os.replace(self.legacy_path, self.legacy_path + ".migrated")
        log.info("%s imported into %s (epoch %s, reserved %d)", self.legacy_path, self.path, old["epoch"], reserved)

    def save(self, epoch: str, reserved: int) -> None:
        """Write the state (one fsync'd transaction); the new reservation counts only once it is committed."""
        with self._disk:
            holes = self.holes if epoch == self.epoch else []  # another seq space: the old holes mean nothing
            with self.db.transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO state (id, epoch, reserved, holes) VALUES (1, ?, ?, ?)",
                             (epoch, reserved, json.dumps(holes)))
            self.epoch, self.reserved, self.holes = epoch, reserved, holes
            self._unsaved = False

    def add_hole(self, epoch: str, first: int, last: int) -> None:
        """Record first..last as never persisted (and save it; when that fails, the next extension does)."""
        with self._disk:  # else an extension saving beside it could put back the holes it read before
            self.holes = with_hole(self.holes if epoch == self.epoch else [], first, last)
            self.epoch = epoch
            self._unsaved = True
            self.save(epoch, self.reserved)

    def ensure(self, epoch: str, last_seq: int) -> None:
        """Called as seqs are handed out (never yields): extend the reservation before it runs out.

        Raises OSError while the reservation cannot be saved (the caller reports it)."""
        if last_seq >= self.reserved:
            self.sync_writes += 1  # the background extension was late, or failed: no seq past the disk
            self.save(epoch, last_seq + self.block)
            self._failed = None
            return
        near = last_seq >= self.reserved - self.block // 2
        if (near or self._unsaved) and not self._extending:
            self._extending = True
            self._spawn(self._extend, epoch, last_seq + self.block if near else self.reserved)
        if self._failed is not None:
            raise self._failed

    def _on_own_thread(self, fn, *args):
        if self._pool is None:
            self._pool = gevent.threadpool.ThreadPool(1)  # made on first use: in the worker, after the fork
        return call_in_thread(fn, *args, pool=self._pool)

    def _extend(self, epoch: str, reserved: int) -> None:
        try:
            self._in_thread(self.save, epoch, reserved)
            self._failed = None
        except OSError as exc:
            self._failed = exc
        finally:
            self._extending = False
