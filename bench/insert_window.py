"""The store side of a cluster's residual window, measured on a fresh ClickHouse server (18.16 in CI).

1. How long one `ClickHouseStore.insert` of 150 / 1000 / 5000 events takes (the time a writer is
   inside an insert, after its fence check).
2. What the server does with an insert whose client stalls 3 s between two blocks, with and without
   `receive_timeout=1` (what the relay sets on inserts in a cluster): dropped, or landed after the pause.

    PYTHONPATH=.:tests .venv/bin/python bench/insert_window.py
"""

import statistics
import tempfile
import time
from pathlib import Path

from clickhouse_driver import Client
from support.clickhouse import ClickHouseServer

from handlers.events import make_event
from webapp.store.clickhouse import ClickHouseStore


def insert_times(server: ClickHouseServer) -> None:
    store = ClickHouseStore(server.fresh_url())
    store.ensure_schema()
    seq = 0
    for rows in (150, 1000, 5000):
        times = []
        for _ in range(30):
            batch = [make_event(seq + i + 1, 1764124800000 + i, "T.AAPL",
                                {"ev": "T", "sym": "AAPL", "p": 191.2, "s": 100, "n": seq + i}) for i in range(rows)]
            seq += rows
            started = time.perf_counter()
            store.insert(batch)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        print(f"insert of {rows} events: p50 {statistics.median(times):.1f} ms, "
              f"p90 {times[int(len(times) * 0.9)]:.1f} ms, max {times[-1]:.1f} ms")
    store.close()


def stalled_insert(server: ClickHouseServer, settings: dict | None) -> int:
    client = Client("127.0.0.1", port=server.port, settings={"insert_block_size": 1})
    table = f"default.stall_{int(time.time() * 1000)}"
    client.execute(f"CREATE TABLE {table} (x UInt64) ENGINE = MergeTree ORDER BY x")

    def rows():
        yield (1,)
        yield (2,)
        time.sleep(3)  # the writer stalls inside its insert
        yield (3,)

    try:
        client.execute(f"INSERT INTO {table} (x) VALUES", rows(), settings=settings)
    except Exception as exc:  # noqa: BLE001 - reporting whatever the driver raises is the point here
        print(f"  the insert failed on the client: {type(exc).__name__}")
    client.disconnect()
    reader = Client("127.0.0.1", port=server.port)
    landed = reader.execute(f"SELECT count() FROM {table}")[0][0]
    reader.disconnect()
    return landed


def main() -> None:
    server = ClickHouseServer(Path(tempfile.mkdtemp())).start()
    try:
        print("server", Client("127.0.0.1", port=server.port).execute("SELECT version()")[0][0])
        insert_times(server)
        print("stalled 3 s inside an insert, no receive_timeout: rows landed =", stalled_insert(server, None))
        print("stalled 3 s inside an insert, receive_timeout=1: rows landed =",
              stalled_insert(server, {"receive_timeout": 1}))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
