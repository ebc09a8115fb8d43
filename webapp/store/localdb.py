"""DATA_DIR/relay.sqlite3: the one local database (the write spool and the seq reservation), in WAL mode.

Why sqlite3 (the standard library's): one file instead of segment files plus a
JSON state file; an append, a reservation or a delete is one transaction, so a
crash mid-write leaves the last committed state — no torn record to detect and
cut off; reads and deletes take a range of rows, so nothing reloads the whole
spool. Measured against the files it replaced in docs/benchmarks.md ("Spool
and reservation on sqlite3").

Durability (`synchronous`): in WAL mode a committed transaction is in the WAL
file before `commit()` returns, so a process crash (SIGKILL, OOM) never loses
one, whatever `synchronous` says. Appends and reservations commit with
`synchronous=FULL` (the WAL is fsync'd at each commit), so they survive a
power loss too, as the fsync'd files did; deletes commit with `NORMAL` (not
fsync'd): after a power loss a deleted spool row can come back, and the
writer's exactly-once filter (only seqs above the store's maximum) skips it.

A sqlite3 connection belongs to the thread that opened it (`check_same_thread`),
so each thread gets its own; callers keep every call off the gevent hub
(webapp/threads.py), the one exception being a late seq reservation
(SeqState.ensure). sqlite's errors leave here as OSError (ENOSPC for a full
disk), the error the callers already handle for a failing disk.
"""

import errno
import os
import sqlite3
from contextlib import contextmanager, suppress

from gevent.monkey import get_original

DB_NAME = "relay.sqlite3"
BUSY_TIMEOUT_S = 30.0  # another thread's transaction (sqlite has one writer at a time)
# The WAL is copied into the database and restarted once it holds this many pages (4 KiB), and cut
# back to WAL_KEEP_BYTES after: a spool that is emptied batch by batch then reuses the same pages
# of both files instead of growing the WAL to sqlite's default 4 MiB, which a nearly full disk
# (tests/faults/test_spool_disk_full.py: 256 KiB) cannot give. Measured in docs/benchmarks.md.
WAL_CHECKPOINT_PAGES = 16
WAL_KEEP_BYTES = 1 << 20

SCHEMA = (
    # one row per spooled record (a slice of a batch), in append order = seq order
    "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL,"
    " last_seq INTEGER NOT NULL, events INTEGER NOT NULL, payload BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), epoch TEXT NOT NULL,"
    " reserved INTEGER NOT NULL, holes TEXT NOT NULL)",
    # files of the previous version already imported (a crash mid-migration imports none twice)
    "CREATE TABLE IF NOT EXISTS migrated (name TEXT PRIMARY KEY)",
)

_local_class = get_original("threading", "local")  # per real thread, not per greenlet


def db_path(data_dir: str) -> str:
    return os.path.join(data_dir, DB_NAME)


def as_os_error(exc: sqlite3.Error) -> OSError:
    code = getattr(exc, "sqlite_errorcode", None)
    full = code == sqlite3.SQLITE_FULL or "full" in str(exc)
    return OSError(errno.ENOSPC if full else errno.EIO, f"{DB_NAME}: {exc}")


class LocalDB:
    """One database file; `transaction()` on the calling thread's own connection."""

    def __init__(self, path: str, durable: bool = True):
        self.path = path
        self.durable = durable  # False (tests): no fsync at all
        self._local = _local_class()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            # isolation_level=None: transactions are begun and ended here, explicitly
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new file
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
                conn.execute(f"PRAGMA journal_size_limit = {WAL_KEEP_BYTES}")
                for statement in SCHEMA:
                    conn.execute(statement)
            except sqlite3.Error:
                conn.close()
                raise
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self, durable: bool = True):
        """BEGIN IMMEDIATE … COMMIT on this thread's connection; `durable`: fsync'd at commit."""
        try:
            conn = self._connection()
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable and self.durable else 'NORMAL' if self.durable else 'OFF'}")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise as_os_error(exc) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise as_os_error(exc) from exc
        except BaseException:
            _rollback(conn)
            raise

    def read(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise as_os_error(exc) from exc

    def vacuum(self) -> None:
        """Give the pages of deleted rows back to the file system (after a drain)."""
        try:
            self._connection().execute("PRAGMA incremental_vacuum")
        except sqlite3.Error as exc:
            raise as_os_error(exc) from exc

    def close(self) -> None:
        """Close this thread's connection (the others close with their threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        # the failure being raised says more; sqlite rolls back on its own when it cannot
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
