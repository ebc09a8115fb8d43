"""GET /clients with many idle clients on one worker: how long the answer takes, and the pure listing alone.

    flock /tmp/relayhouse-bench.lock .venv/bin/python bench/clients_listing.py 5000

Starts one relay (the demo feed, no store) with tests/support/relay.py, opens N idle /ws clients
with tests/support/idle.py, times 10 calls each at limit=100 and limit=1000, then times
handlers/clients.py's client_listing over 20,000 made-up client states. Prints the figures.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.idle import open_idle  # noqa: E402
from support.relay import Relay  # noqa: E402

from handlers.clients import ClientState, client_listing  # noqa: E402

CALLS = 10
PURE_CLIENTS = 20_000


def time_route(n: int) -> None:
    relay = Relay(Path(tempfile.mkdtemp(prefix="clients-listing-")), "", {"WORKER_CONNECTIONS": str(n + 100)}).start()
    socks = []
    try:
        socks = open_idle(relay.port, "/ws?snapshot=0&topics=T.*", n)
        for limit in (100, 1000):
            times, size = [], 0
            for _ in range(CALLS):
                t0 = time.perf_counter()
                response = relay.get("/clients", params={"limit": limit})
                times.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200 and response.json()["total"] >= n, response.text[:200]
                size = len(response.content)
            print(f"{n} idle /ws clients, limit={limit}: median {statistics.median(times):.1f} ms, "
                  f"max {max(times):.1f} ms over {CALLS} calls ({size} bytes)")
    finally:
        for sock in socks:
            sock.close()
        relay.stop()


def time_pure() -> None:
    rng = random.Random(1)
    states = [ClientState(i, rng.choice(["ws", "sse"]), rng.choice(["live", "live", "rate", "conflated"]), None,
                          "close", ("T.*", "Q.AAPL"), 100.0 - i / PURE_CLIENTS, rng.randrange(50), rng.randrange(5000))
              for i in range(PURE_CLIENTS)]
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        client_listing(states, limit=100, now_s=200.0, worker=1, key=b"k" * 16)
        best = min(best, time.perf_counter() - t0)
    print(f"client_listing over {PURE_CLIENTS} clients, limit 100: {best * 1000:.1f} ms (best of 5)")


if __name__ == "__main__":
    time_route(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
    time_pure()
