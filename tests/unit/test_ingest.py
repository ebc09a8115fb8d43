"""Ingest of one large upstream frame in parts (webapp/ingest.py, INGEST_CHUNK)."""

from __future__ import annotations

import orjson

from webapp.ingest import INGEST_CHUNK, Ingest
from webapp.metrics import Metrics


def test_a_large_frame_is_numbered_and_handed_on_in_parts_with_the_loop_let_run_between_them():
    """1.5 M elements in one piece held the loop ~5 s (a leader lost its lease). In parts, with a turn of
    the loop between them; an event of another source (POST /publish) that comes between two parts takes
    the next seq there, and every seq is handed out once, in order."""
    handed: list[list] = []
    ingest = Ingest(lambda events, receipt=False: handed.append(events), Metrics(), topic_fields=("sym",),
                    max_frame_bytes=1 << 30)
    turns = []

    def between():
        turns.append(ingest.last_seq)
        if len(turns) == 1:
            ingest.publish(b'{"sym": "P"}', 1000)

    ingest.between_chunks = between
    n = 2 * INGEST_CHUNK + 1
    frame = orjson.dumps([{"sym": "U", "n": i} for i in range(n)])
    events = ingest.handle_frame(frame, False, 1000)
    assert [len(part) for part in handed] == [INGEST_CHUNK, 1, INGEST_CHUNK, 1]
    assert turns == [INGEST_CHUNK, 2 * INGEST_CHUNK + 1]
    assert [e.data["n"] for e in events] == list(range(n))
    seqs = [e.seq for part in handed for e in part]
    assert seqs == list(range(1, n + 2))  # the frame's and the publish's, each once, in order
    assert handed[1][0].data == {"sym": "P"} and handed[1][0].seq == INGEST_CHUNK + 1


def test_without_the_hook_or_for_a_small_frame_the_elements_go_in_one_piece():
    handed: list[list] = []
    ingest = Ingest(handed.append, Metrics(), topic_fields=("sym",), max_frame_bytes=1 << 30)
    ingest.handle_frame(orjson.dumps([{"sym": "U"}] * (INGEST_CHUNK + 1)), False, 1000)
    ingest.between_chunks = lambda: None
    ingest.handle_frame(orjson.dumps([{"sym": "U"}] * INGEST_CHUNK), False, 1000)
    assert [len(part) for part in handed] == [INGEST_CHUNK + 1, INGEST_CHUNK]
