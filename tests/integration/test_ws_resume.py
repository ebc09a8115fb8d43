"""/ws resume with `since` and `epoch`, and slow consumers (contract §3, §10)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from support.clients import RawWsClient
from support.events import data_of, feed, seqs_of, trades, unique_sym

RELAY_ENV: dict[str, str] = {}


@pytest.mark.parametrize(
    "with_epoch, snapshot_parameter",
    [(True, None), (False, None), (True, 0)],
    ids=["since-and-epoch", "since-alone", "since-wins-over-snapshot-0"],
)
def test_resume_after_a_disconnect_delivers_what_was_missed_once(
    relay, upstream, ws, with_epoch, snapshot_parameter
):
    sym = unique_sym()
    topic = f"T.{sym}"
    first_client = ws(relay, topics=topic, snapshot=0)
    epoch = first_client.read_snapshot()["epoch"]
    first = feed(relay, upstream, trades(0, 10, sym))
    last_seen = first_client.wait_for_events(10)[-1]["seq"]
    first_client.close()

    missed = feed(relay, upstream, trades(10, 30, sym))  # while nobody is connected
    resumed = ws(
        relay, topics=topic, since=last_seen, epoch=epoch if with_epoch else None, snapshot=snapshot_parameter
    )
    snapshot = resumed.read_snapshot()

    assert last_seen == first[-1]
    assert snapshot["recovered"] is True
    assert "missing" not in snapshot or not snapshot["missing"]
    assert snapshot["epoch"] == epoch
    assert seqs_of(snapshot["events"]) == missed
    assert data_of(snapshot["events"]) == trades(10, 30, sym)

    live = feed(relay, upstream, trades(30, 35, sym))
    assert seqs_of(resumed.wait_for_events(25)) == missed + live


def test_resume_from_the_latest_seq_sends_an_empty_recovered_snapshot(relay, upstream, ws):
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 3, sym))
    epoch = relay.health()["epoch"]

    client = ws(relay, topics=f"T.{sym}", since=seqs[-1], epoch=epoch)
    snapshot = client.read_snapshot()

    assert snapshot["recovered"] is True and snapshot["events"] == []
    live = feed(relay, upstream, trades(3, 4, sym))
    assert seqs_of(client.wait_for_events(1)) == live


def test_resume_with_a_foreign_epoch_is_not_recovered(relay, upstream, ws):
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 3, sym))
    epoch = relay.health()["epoch"]

    snapshot = ws(relay, topics=f"T.{sym}", since=seqs[0], epoch=f"not-{epoch}").read_snapshot()

    assert snapshot["recovered"] is False
    assert snapshot["epoch"] == epoch


def test_resume_from_before_the_cache_reports_the_missing_range(fresh_upstream, launch_relay, ws):
    relay = launch_relay(fresh_upstream, {"CACHE_MAX_ITEMS": "20"})
    sym = unique_sym()
    seqs = feed(relay, fresh_upstream, trades(0, 50, sym))
    epoch = relay.health()["epoch"]

    client = ws(relay, since=seqs[0] - 1, epoch=epoch)
    snapshot = client.read_snapshot()

    assert snapshot["recovered"] is False
    assert snapshot["missing"] == [seqs[0], seqs[29]]  # inclusive at both ends
    assert seqs_of(snapshot["events"]) == seqs[30:]
    assert data_of(snapshot["events"]) == trades(30, 50, sym)
    live = feed(relay, fresh_upstream, trades(50, 52, sym))
    assert seqs_of(client.wait_for_events(22)) == seqs[30:] + live


def test_a_relay_restarted_without_a_store_has_a_new_epoch_and_old_resumes_are_not_recovered(
    fresh_upstream, launch_relay, ws
):
    relay = launch_relay(fresh_upstream)
    sym = unique_sym()
    seqs = feed(relay, fresh_upstream, trades(0, 5, sym))
    old_epoch = relay.health()["epoch"]

    relay.restart()
    new_epoch = relay.health()["epoch"]
    snapshot = ws(relay, since=seqs[2], epoch=old_epoch).read_snapshot()

    assert new_epoch != old_epoch
    assert snapshot["epoch"] == new_epoch
    assert snapshot["recovered"] is False


# -- slow consumers -------------------------------------------------------------

QUEUE_MAX_EVENTS = 200
QUEUE_MAX_BYTES = 256 * 1024
PAD = "x" * 1000
ROUND = 100  # events per upstream burst


def kernel_send_buffer_max() -> int:
    """How much the relay's kernel may buffer for one socket before its send blocks."""
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


def test_a_slow_consumer_is_closed_with_1013_others_get_everything_and_it_resumes_losslessly(
    fresh_upstream, launch_relay, ws
):
    # At most enough bytes to fill the stalled socket's kernel buffers and
    # the relay's queue bound twice over, so the bound must be crossed.
    count = math.ceil(2 * (kernel_send_buffer_max() + QUEUE_MAX_BYTES + 65536) / (len(PAD) + 100))
    relay = launch_relay(
        fresh_upstream,
        {
            "WS_QUEUE_MAX_EVENTS": str(QUEUE_MAX_EVENTS),
            "WS_QUEUE_MAX_BYTES": str(QUEUE_MAX_BYTES),
            "CACHE_MAX_ITEMS": str(count + 1000),
        },
    )
    sym = unique_sym()
    topic = f"T.{sym}"
    slow = RawWsClient("127.0.0.1", relay.port, relay.target("/ws", topics=topic, snapshot=0))
    try:
        fast = ws(relay, topics=topic, snapshot=0)
        epoch = fast.read_snapshot()["epoch"]
        clients = relay.health()["clients"]

        # In rounds the fast client keeps up with, so the relay writes many
        # frames, not one huge batch: the stalled client's queue then grows
        # frame by frame while nobody else is held back. Stop once the relay
        # has let go of the stalled client, then read what it was sent, as a
        # slow (not dead) reader would, before the relay's close allowance ends.
        seqs: list[int] = []
        for start in range(0, count, ROUND):
            seqs += feed(relay, fresh_upstream, trades(start, min(start + ROUND, count), sym, pad=PAD))
            assert seqs_of(fast.wait_for_events(len(seqs), timeout_s=10)) == seqs
            if relay.health()["clients"] < clients:
                break
        seen = slow.read_until_close(timeout_s=15)
    finally:
        slow.close()

    # Nobody else was held back, and the feed goes on for them.
    more = feed(relay, fresh_upstream, trades(len(seqs), len(seqs) + 3, sym, pad=PAD))
    assert seqs_of(fast.wait_for_events(len(seqs) + 3)) == seqs + more
    seqs += more

    frames = [json.loads(text) for text in seen.texts]
    summary = [(f.get("type"), len(f.get("events", ())), f.get("reason")) for f in frames]
    assert frames and frames[0]["type"] == "snapshot", summary[:3]
    closing = frames[-1]
    assert (closing.get("type"), closing.get("reason")) == ("closing", "slow_consumer"), (
        f"frames (type, events, reason) before the close: {summary[-5:]}, close {seen.code}"
    )
    assert seen.got_close_frame and seen.code == 1013, (seen.code, seen.reason)
    received = [event for frame in frames if frame["type"] in ("snapshot", "events") for event in frame["events"]]
    received_seqs = seqs_of(received)
    assert received_seqs == seqs[: len(received_seqs)], "what the slow client got must be gap-free"
    assert len(received_seqs) < len(seqs), "the stalled client cannot have been sent everything"
    # the bound counts the kernel's part too: the relay's socket holds at most half of WS_QUEUE_MAX_BYTES
    # or 256 KiB (SO_SNDBUF, doubled by the kernel), the client's its 4 KiB (doubled); two rounds in flight.
    # Without the cap the kernel took megabytes: dropped after 2,700 events fed (~3 MB) instead of 600.
    kernel = 2 * max(QUEUE_MAX_BYTES // 4, 256 * 1024) + 2 * 4096
    fed_bytes = (len(seqs) - 3) * (len(PAD) + 100)
    assert fed_bytes <= QUEUE_MAX_BYTES + kernel + 2 * ROUND * (len(PAD) + 100), fed_bytes
    print(f"stalled client dropped after {len(seqs) - 3} events fed, {len(received_seqs)} of them sent to it")

    last = received_seqs[-1] if received_seqs else seqs[0] - 1
    resumed = ws(relay, topics=topic, since=last, epoch=epoch)
    snapshot = resumed.read_snapshot()
    assert snapshot["recovered"] is True
    assert seqs_of(snapshot["events"]) == [seq for seq in seqs if seq > last]
