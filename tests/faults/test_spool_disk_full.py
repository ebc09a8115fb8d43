"""A full disk under the spool while the store is down (targets: Reliability; docs/clickhouse.md "Bounds").

DATA_DIR (where relay.sqlite3 holds the spool and the seq reservation) is a
256 KiB tmpfs of the test's own (the test runs as root, as CI does). With
ClickHouse stopped the spool fills it; then:

- a clear error: `store.spool_full` and `store.last_error` on /health, one
  log line saying the spool cannot take a batch, `relayhouse_spool_full 1`
  and `relayhouse_store_dropped_events` on /metrics;
- no crash: the same worker keeps serving, and clients get every event;
- the events that could be kept nowhere are counted, and only those are
  missing from the store in the end;
- recovery when space returns (the tmpfs is grown, as an operator would free
  space): batches are spooled again, `spool_full` clears, and once ClickHouse
  is back every event spooled or written is in the store exactly once;
- a client resuming from before the outage is told, as `missing`, the range up
  to the last seq the store never got, and gets every event after it; the
  same after a restart (the dropped ranges are kept in DATA_DIR).

Where mounting is not permitted the test says so and uses SPOOL_MAX_BYTES
as the bound instead; space then returns when the store drains the spool.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.events import unique_sym
from support.waiting import wait_until

from faults.harness import Pump, assert_in_order_once, metric_value, store_env, worker_pid

SPOOL_FS = "256k"
SPOOL_FS_BYTES = 256 * 1024
ROOMY_FS = "16m"
# ~25 events (about 5 KB) per spool record: smaller than a buffered file's 8 KiB buffer, as most
# batches are, so a record that meets a full disk is left half in the file, half in the buffer.
RATE_PER_S = 250
FULL_LOG_LINE = "spool cannot take a batch"


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, str], bool]]:
    """tmpfs(path, size) mounts a tmpfs there (False when not permitted); every mount is undone at teardown."""
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> bool:
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"cannot mount a tmpfs ({result.stderr.strip()}): using SPOOL_MAX_BYTES instead")
            return False
        mounted.append(path)
        return True

    yield mount
    for path in mounted:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)  # still busy: detach it now, free it later


def remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def test_a_full_spool_disk_is_reported_survived_and_recovered_from(
        clickhouse_server, fresh_upstream, tmpfs, start_relay, store, ws):
    url, probe = store()
    on_tmpfs = []
    env = store_env(url, CACHE_MAX_ITEMS="200")  # a small cache: the resumes below reach into the store

    def small_spool(relay) -> None:
        on_tmpfs.append(tmpfs(relay.data_dir, SPOOL_FS))
        if not on_tmpfs[0]:
            relay.settings["SPOOL_MAX_BYTES"] = str(SPOOL_FS_BYTES)

    relay = start_relay(fresh_upstream, env, prepare=small_spool)
    pid = worker_pid(relay.proc.pid)
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    log_start = relay.log_size()
    pump = Pump(fresh_upstream, sym, RATE_PER_S, per_frame=5).start()
    try:
        probe.wait_count(250, timeout_s=15)
        clickhouse_server.stop()
        try:
            stopped_seq = relay.health()["last_seq"]
            wait_until(lambda: relay.health()["store"]["spool_full"] is True, 30, "the spool to fill up",
                       describe=lambda: str(relay.health()["store"]))
            full_seq = relay.health()["last_seq"]
            time.sleep(3)  # stay full a while: batches keep coming and cannot be kept
            assert relay.running and worker_pid(relay.proc.pid) == pid, (
                "the worker crashed (gunicorn replaced it) while the spool's disk was full")
            health = relay.get("/health")
            assert health.status_code == 200, health.text
            body = health.json()
            assert body["status"] == "degraded", body
            assert body["store"]["spool_full"] is True and body["store"]["dropped"] > 0, body["store"]
            assert body["store"]["ok"] is False and body["store"]["last_error"], body["store"]
            metrics = relay.get("/metrics").text
            assert metric_value(metrics, "relayhouse_spool_full") == 1
            assert metric_value(metrics, "relayhouse_store_dropped_events") >= body["store"]["dropped"]  # read later
            client.wait_for_events(len(pump.sent), timeout_s=5)  # clients never notice

            if on_tmpfs[0]:
                remount(relay.data_dir, ROOMY_FS)  # space returns
                returned_seq = relay.health()["last_seq"]
                wait_until(lambda: relay.health()["store"]["spool_full"] is False, 10,
                           "batches to be spooled again once there is space")
                dropped = relay.health()["store"]["dropped"]
                time.sleep(2)
                assert relay.health()["store"]["dropped"] == dropped, "still dropping with space to spare"
                assert metric_value(relay.get("/metrics").text, "relayhouse_spool_full") == 0
        finally:
            clickhouse_server.start()
        if not on_tmpfs[0]:
            returned_seq = relay.health()["last_seq"]
            wait_until(lambda: relay.health()["store"]["spool_full"] is False, 20, "the spool to take batches again")
        time.sleep(2)
        total = pump.stop()
    finally:
        pump.stop()

    wait_until(lambda: relay.health()["last_seq"] >= total, 10, "every event sequenced")
    wait_until(lambda: relay.health()["store"]["spooled"] == 0 and relay.health()["store"]["pending"] == 0, 30,
               "the spool to be written back", describe=lambda: str(relay.health()["store"]))
    health = relay.health()
    dropped = health["store"]["dropped"]
    assert health["status"] == "ok" and health["store"]["spool_full"] is False, health
    assert worker_pid(relay.proc.pid) == pid, "the worker was replaced: it crashed"
    log = relay.log_text(log_start)
    assert log.count(FULL_LOG_LINE) == 1 or not on_tmpfs[0], f"the full spool should be said once:\n{log[-3000:]}"
    crashes = [line for line in log.splitlines() if "CRITICAL" in line or "> failed with " in line]
    assert not crashes, crashes[:5]

    client.wait_for_events(total, timeout_s=20)
    assert_in_order_once(client.events, pump.sent, "the client", first_seq=1)

    rows = probe.seq_n()
    facts = probe.facts()
    assert facts["count"] == facts["unique"], f"duplicates in the store: {facts}"
    assert all(n == seq - 1 for seq, n in rows), "a stored event has the wrong seq"
    missing = sorted(set(range(1, total + 1)) - {seq for seq, _ in rows})
    print(f"{total} events; spool full from seq ~{full_seq}, space back at ~{returned_seq}; "
          f"{dropped} dropped, {len(missing)} missing from the store")
    assert len(missing) == dropped, (
        f"{len(missing)} events missing from the store, {dropped} counted as dropped: "
        f"missing {missing[:5]}..{missing[-5:]}")
    assert missing and missing[0] > stopped_seq, "events from before the outage were lost"
    assert missing[-1] <= returned_seq + RATE_PER_S, "events after space returned were lost"

    # resuming from before the outage reaches into the store, which lacks the dropped range:
    # the client is told instead of being handed a silent gap
    since = stopped_seq - 10
    for when in ("running", "restarted"):
        resumed = ws(relay, topics=f"T.{sym}", since=since)
        snapshot = resumed.read_snapshot()
        assert snapshot.get("missing"), f"{when}: a resume across dropped events reported nothing missing"
        first_missing, last_missing = snapshot["missing"]
        assert first_missing == since + 1 and last_missing >= missing[-1], (when, snapshot["missing"], missing[-1])
        seqs = [e["seq"] for e in resumed.events]
        assert seqs == list(range(last_missing + 1, total + 1)), f"{when}: not every event after the missing range"
        assert snapshot["recovered"] is False
        resumed.close()
        if when == "running":
            relay.restart()

