"""The embedded chDB store maps every failure onto the store's errors, opening chDB included."""

import pytest

from webapp.store.base import StoreUnavailable
from webapp.store.embedded import Lane


class UnopenableLane(Lane):
    """chDB refuses to open its data directory (a lock held by another process, a damaged file)."""

    def _open(self):
        raise RuntimeError("Code: 76. DB::Exception: Cannot open file")


def test_a_chdb_that_cannot_be_opened_raises_a_store_error_not_unbound_local(tmp_path):
    lane = UnopenableLane(str(tmp_path))
    with pytest.raises(StoreUnavailable, match="Cannot open file"):
        lane.sql("SELECT 1")
