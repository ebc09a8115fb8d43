"""5,000 connect/disconnect cycles: no leaked greenlets, sockets or memory (targets: Reliability).

The worker is found as the one child of the gunicorn master; its open file
descriptors (/proc/PID/fd), threads (/proc/PID/task) and resident memory
(VmRSS) are read before and after. Nothing is added to the app for this.

Greenlets cannot be counted from outside; every one a client costs holds
that client's socket and its hub entry, so a leaked one shows up as a socket
that stays open, as a `clients` count on /health that does not come back
down, and as memory.

Bounds, stated: after the cycles have ended and the relay has had up to
20 s to notice every disconnect, the worker holds no more sockets than
before (+2 for a store connection that may have been reconnected), no more
threads than before (+2: the thread pool may grow), and /health counts only
the canary client. Memory is read after a 500-cycle warm-up, after 2,500
more cycles and after 5,000: each half may add at most 4 MiB (1.6 KB per
cycle), the whole run at most 24 MiB. An open /ws client costs the worker
about 39 KB (measured), so leaking even one client in 25 fails; a one-off
jump of the allocator shows in one half only and does not. The cache is
filled to its bound (CACHE_MAX_ITEMS) first, so events flowing during the
run do not count as growth.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from support.events import trades, unique_sym
from support.waiting import wait_until

from faults.harness import (
    Pump,
    assert_in_order_once,
    assert_store_holds,
    churn_once,
    open_fds,
    rss_bytes,
    store_env,
    thread_count,
    worker_pid,
)

CYCLES = 5000
WARMUP_CYCLES = 500
CONCURRENCY = 4
HALF_GROWTH_BOUND = 4 * 1024 * 1024
TOTAL_GROWTH_BOUND = 24 * 1024 * 1024
CACHE_ITEMS = 2000
SOCKET_SLACK = 2
THREAD_SLACK = 2


def run_cycles(relay, count: int, sym: str, offset: int = 0) -> list[str]:
    target_ws = relay.target("/ws", topics=f"T.{sym}", snapshot=5)
    target_sse = relay.target("/sse", topics=f"T.{sym}", snapshot=1)
    errors: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        try:
            churn_once(relay.port, target_ws, target_sse, (offset + index) % 5)
        except (OSError, AssertionError) as exc:
            with lock:
                errors.append(f"cycle {offset + index} (kind {(offset + index) % 5}): {exc!r}")

    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="churn") as pool:
        list(pool.map(one, range(count)))
    return errors


def settled(relay, pid: int, sockets: int, threads: int) -> bool:
    return (relay.health()["clients"] == 1 and open_fds(pid)["socket"] <= sockets + SOCKET_SLACK
            and thread_count(pid) <= threads + THREAD_SLACK)


def test_5000_connect_disconnect_cycles_leak_no_sockets_threads_or_memory(fresh_upstream, start_relay, store, ws):
    url, probe = store()
    relay = start_relay(fresh_upstream, store_env(url, CACHE_MAX_ITEMS=str(CACHE_ITEMS)))
    pid = worker_pid(relay.proc.pid)
    fresh_upstream.emit(trades(0, CACHE_ITEMS, sym=unique_sym()), batch=100)  # the cache at its bound
    wait_until(lambda: relay.health()["last_seq"] == CACHE_ITEMS, 20, "the cache filled")
    sym = unique_sym()
    canary = ws(relay, topics=f"T.{sym}", snapshot=0)
    canary.read_snapshot()
    pump = Pump(fresh_upstream, sym, 200, per_frame=4).start()  # live events reach the churning clients too
    try:
        errors = run_cycles(relay, WARMUP_CYCLES, sym)
        assert not errors, errors[:5]
        wait_until(lambda: relay.health()["clients"] == 1, 20, "the warm-up clients to be gone")
        time.sleep(1)
        before = {"fds": open_fds(pid), "threads": thread_count(pid), "rss": rss_bytes(pid)}

        started = time.monotonic()
        errors = run_cycles(relay, CYCLES // 2, sym, offset=WARMUP_CYCLES)
        wait_until(lambda: relay.health()["clients"] == 1, 20, "the first half's clients to be gone")
        time.sleep(1)
        middle = rss_bytes(pid)
        errors += run_cycles(relay, CYCLES - CYCLES // 2, sym, offset=WARMUP_CYCLES + CYCLES // 2)
        elapsed = time.monotonic() - started
        assert not errors, f"{len(errors)} cycles failed: {errors[:5]}"
        assert relay.running and worker_pid(relay.proc.pid) == pid, "the worker died or was replaced"
        wait_until(lambda: settled(relay, pid, before["fds"]["socket"], before["threads"]), 20,
                   "the worker to let go of every churned client",
                   describe=lambda: f"clients {relay.health()['clients']}, fds {open_fds(pid)}, "
                                    f"threads {thread_count(pid)}; before {before}")
        time.sleep(1)
        after = {"fds": open_fds(pid), "threads": thread_count(pid), "rss": rss_bytes(pid)}
        total = pump.stop()
    finally:
        pump.stop()

    halves = (middle - before["rss"], after["rss"] - middle)
    mib = 2**20
    print(f"{CYCLES} cycles in {elapsed:.1f}s ({CYCLES / elapsed:.0f}/s); fds {before['fds']} -> {after['fds']}; "
          f"threads {before['threads']} -> {after['threads']}; RSS {before['rss'] / mib:.1f} -> {middle / mib:.1f} -> "
          f"{after['rss'] / mib:.1f} MiB")
    assert after["fds"]["socket"] <= before["fds"]["socket"] + SOCKET_SLACK, (before, after)
    assert after["fds"]["total"] <= before["fds"]["total"] + SOCKET_SLACK, (before, after)
    assert min(halves) <= HALF_GROWTH_BOUND, (
        f"RSS grew by {halves[0] / mib:.1f} then {halves[1] / mib:.1f} MiB per {CYCLES // 2} cycles: a leak")
    assert sum(halves) <= TOTAL_GROWTH_BOUND, f"RSS grew by {sum(halves) / mib:.1f} MiB over {CYCLES} cycles"

    # The stream went on for the one client that stayed, and the store has it all.
    wait_until(lambda: relay.health()["last_seq"] >= CACHE_ITEMS + total, 10, "every event sequenced")
    canary.wait_for_events(total, timeout_s=20)
    assert_in_order_once(canary.events, pump.sent, "the canary client", first_seq=CACHE_ITEMS + 1)
    probe.wait_count(CACHE_ITEMS + total, timeout_s=30)
    assert_store_holds(probe, [(n + 1, n) for n in range(CACHE_ITEMS)]
                       + [(CACHE_ITEMS + 1 + n, n) for n in range(total)])
