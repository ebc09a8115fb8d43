"""Prefix patterns in a store query on ClickHouse 18.16: one OR per prefix (before) against
webapp.store.base.topic_condition (one has() per prefix length), over 12,045 rows, best of 3.

    .venv/bin/python bench/history_prefixes.py

Starts a private ClickHouse server (tests/support/clickhouse.py) and stops it; prints one line per row.
"""

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from clickhouse_driver import Client  # noqa: E402
from support.clickhouse import ClickHouseServer  # noqa: E402

from webapp.store.base import topic_condition  # noqa: E402


def best_of_3(client: Client, sql: str, params: dict) -> tuple[int, float]:
    best, matched = None, 0
    for _ in range(3):
        started = time.perf_counter()
        matched = client.execute(sql, params)[0][0]
        took = time.perf_counter() - started
        best = took if best is None else min(best, took)
    return matched, best


def main() -> None:
    server = ClickHouseServer(tempfile.mkdtemp(prefix="history-prefixes")).start()
    try:
        client = Client(host="127.0.0.1", port=server.port)
        client.execute("CREATE TABLE default.t (seq UInt64, topic String) ENGINE = MergeTree ORDER BY seq")
        client.execute("INSERT INTO default.t VALUES", [(i, f"T.SYM{i % 500}") for i in range(12045)])
        print("ClickHouse", client.execute("SELECT version()")[0][0])
        for n in (100, 450, 899):
            prefixes = [f"X{i}" for i in range(n - 2)] + ["T.SYM1", "T.SYM22"]
            ors = {f"p{i}": p for i, p in enumerate(prefixes)}
            before = " OR ".join(f"substring(topic, 1, length(%(p{i})s)) = %(p{i})s" for i in range(n))
            after_params: dict = {}
            after = topic_condition(tuple(p + "*" for p in prefixes), after_params)
            for name, where, params in (("an OR per prefix (before)", before, ors),
                                        ("one has() per length (after)", after, after_params)):
                matched, took = best_of_3(client, f"SELECT count() FROM default.t WHERE {where}", params)
                print(f"{n} prefixes, {name}: {matched} rows matched, best of 3 {took * 1000:.0f} ms")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
