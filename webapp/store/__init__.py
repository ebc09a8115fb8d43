"""Persistence: the backend chosen by CLICKHOUSE_URL, the spool, the writer, and the local seq state."""

import json
import logging
import os

from handlers.resume import add_hole as with_hole
from webapp.settings import Settings
from webapp.store.base import Store

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
    """

    def __init__(self, data_dir: str, block: int):
        self.path = os.path.join(data_dir, "relay-state.json")
        self.block = block
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
        if epoch != self.epoch:
            self.holes = []  # another seq space: the old one's holes mean nothing in it
        self.epoch, self.reserved = epoch, reserved
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"epoch": epoch, "reserved": reserved, "holes": self.holes}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def add_hole(self, epoch: str, first: int, last: int) -> None:
        """Record first..last as never persisted (and save it)."""
        self.holes = with_hole(self.holes if epoch == self.epoch else [], first, last)
        self.epoch = epoch
        self.save(epoch, self.reserved)

    def ensure(self, epoch: str, last_seq: int) -> None:
        """Called as seqs are handed out: extend the reservation before it runs out."""
        if last_seq >= self.reserved:
            self.save(epoch, last_seq + self.block)
