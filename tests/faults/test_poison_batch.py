"""A batch the store refuses every time goes to a dead-letter file; the writer moves on, also after a restart.

The refusal is the server's own, not a fake: a MATERIALIZED column added to
the relay's table with `throwIf(topic = 'T.POISON')` makes ClickHouse refuse
any INSERT holding such a row, deterministically, as a type or constraint
error on a real batch would.
"""

from __future__ import annotations

import json
import os
import signal

from support.events import unique_sym
from support.waiting import wait_until

from faults.harness import metric_value, store_env

POISON = {"ev": "T", "sym": "POISON", "n": -1}


def poison_the_table(probe) -> None:
    wait_until(lambda: probe.facts()["count"] >= 0, 20, "the relay's table")
    probe.client.execute(f"ALTER TABLE {probe.db}.events ADD COLUMN poison UInt8 "
                         f"MATERIALIZED throwIf(topic = 'T.POISON')")


def trades(sym: str, first: int, n: int) -> list[dict]:
    return [{"ev": "T", "sym": sym, "n": i} for i in range(first, first + n)]


def test_a_refused_batch_is_dead_lettered_reported_and_missing_on_resume_while_later_ones_are_stored(
        fresh_upstream, start_relay, store, ws):
    url, probe = store()
    relay = start_relay(fresh_upstream, store_env(url, STORE_POISON_ATTEMPTS="3", CACHE_MAX_ITEMS="5"))
    sym = unique_sym()
    fresh_upstream.emit(trades(sym, 0, 20), batch=10)
    probe.wait_count(20, timeout_s=20)
    poison_the_table(probe)
    fresh_upstream.emit([POISON], batch=None)  # seq 21, alone in its batch: the writer is idle
    health = wait_until(lambda: (h := relay.health())["store"]["dead_letter"]["events"] == 1 and h, 30,
                        "the poison batch to be dead-lettered", describe=lambda: str(relay.health()["store"]))
    assert health["store"]["dead_letter"]["last"] == [21, 21]
    fresh_upstream.emit(trades(sym, 20, 20), batch=10)
    probe.wait_count(40, timeout_s=20)
    assert probe.facts() == {"count": 40, "unique": 40, "min": 1, "max": 41}
    wait_until(lambda: relay.health()["store"]["ok"], 10, "the store to be ok again")

    (letter,) = (relay.data_dir / "dead-letter").iterdir()
    header, *lines = letter.read_bytes().splitlines()
    assert json.loads(header)["first_seq"] == 21 and "throwIf" in json.loads(header)["reason"]
    assert [json.loads(line)["data"] for line in lines] == [POISON]
    assert metric_value(relay.get("/metrics").text, "relayhouse_store_dead_letter_events") == 1

    # the cache holds 5 events: a resume from the start comes from the store, which lacks seq 21
    client = ws(relay, since=0, topics="*")
    snapshot = client.read_snapshot()
    assert snapshot["recovered"] is False and snapshot["missing"][1] == 21, snapshot
    assert [e["seq"] for e in snapshot["events"]] == list(range(22, 42))

    # after a restart with a cache large enough for everything, warmed from the store: the gap at 21
    # is still reported, not skipped in silence
    relay.settings["CACHE_MAX_ITEMS"] = "1000"
    relay.restart()
    client = ws(relay, since=10, topics="*")
    snapshot = client.read_snapshot()
    assert (snapshot["recovered"], snapshot["missing"]) == (False, [11, 21]), snapshot
    assert [e["seq"] for e in snapshot["events"]] == list(range(22, 42))
    live = ws(relay, since=25, topics="*").read_snapshot()  # a resume past the hole is whole
    assert live["recovered"] is True and [e["seq"] for e in live["events"]] == list(range(26, 42))


def test_a_poison_batch_left_in_the_spool_by_a_crash_does_not_crash_loop_the_restart(
        fresh_upstream, start_relay, store):
    url, probe = store()
    relay = start_relay(fresh_upstream, store_env(url, STORE_POISON_ATTEMPTS="1000"))
    sym = unique_sym()
    fresh_upstream.emit(trades(sym, 0, 10), batch=10)
    probe.wait_count(10, timeout_s=20)
    poison_the_table(probe)
    fresh_upstream.emit([POISON, *trades(sym, 10, 9)], batch=10)  # seqs 11..20 in one refused batch
    wait_until(lambda: "throwIf" in (relay.health()["store"]["last_error"] or ""), 20, "the refusals")
    os.killpg(relay.proc.pid, signal.SIGKILL)
    relay.wait_exit(10)
    relay.settings["STORE_POISON_ATTEMPTS"] = "3"
    relay.restart()
    wait_until(lambda: relay.health()["store"]["dead_letter"]["events"] == 10, 30, "the dead letter after restart",
               describe=lambda: str(relay.health()["store"]))
    base = relay.health()["last_seq"]  # after a crash seq continues above the reservation
    fresh_upstream.emit(trades(sym, 19, 10), batch=10)
    facts = probe.wait_count(20, timeout_s=20)
    assert facts == {"count": 20, "unique": 20, "min": 1, "max": base + 10}, facts
    assert relay.health()["tasks"]["writer"]["crashes"] == 0
