"""What a burst of started greenlets delays in one gevent loop: a timer wake-up, a Redis round trip, an Event wake-up.

    .venv/bin/python bench/callback_lag.py            # 4,000 greenlets of 0.7 ms CPU (a handshake), unbounded vs 32 at a time

gevent starts a greenlet through its loop's callback queue, and wakes anything waiting on an
Event, a Semaphore, a Queue or a greenlet's end through the same FIFO queue; a timer or a socket
wakes its greenlet directly from the loop's watchers. So with N greenlet starts queued (eager
accepting: one per accepted connection), a wake-up of the first kind waits behind all N, one of the
second kind behind at most one batch (gevent checks the clock every 50 callbacks). Redis is
127.0.0.1:6379 (REDIS_URL to change it).
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402
from gevent.event import Event  # noqa: E402

HANDSHAKE_MS = 0.7


def burn(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def run(n: int, bound: int) -> dict:
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    client.ping()
    res: dict = {"greenlets": n, "bound": bound or "none"}
    woken = Event()

    def timer_probe():
        t = time.perf_counter()
        gevent.sleep(0.05)
        res["timer_late_ms"] = round((time.perf_counter() - t - 0.05) * 1000, 1)

    def redis_probe():
        gevent.sleep(0.05)
        t = time.perf_counter()
        client.ping()
        res["redis_ping_ms"] = round((time.perf_counter() - t) * 1000, 1)

    def event_probe():
        t = time.perf_counter()
        woken.wait()
        res["event_late_ms"] = round((time.perf_counter() - t - 0.05) * 1000, 1)

    def setter():
        gevent.sleep(0.05)
        woken.set()

    probes = [gevent.spawn(f) for f in (timer_probe, redis_probe, event_probe, setter)]
    gevent.sleep(0.01)
    t0 = time.perf_counter()
    done = Event()
    left = [n]

    def one():
        burn(HANDSHAKE_MS)
        left[0] -= 1
        if bound and left[0] >= bound:
            gevent.spawn(one)  # the slot passes on, as webapp/accept.py does
        if left[0] == 0:
            done.set()

    for _ in range(min(bound, n) if bound else n):
        gevent.spawn(one)
    gevent.joinall(probes)
    done.wait()
    res["all_done_s"] = round(time.perf_counter() - t0, 2)
    return res


if __name__ == "__main__":
    for bound in (0, 32, 0, 32):
        print(run(4000, bound), flush=True)
