"""Enrichment refreshes per second on a real ClickHouse server: connections kept between refreshes
(webapp/enrich.py) against a connection made and closed per refresh (the code before). No relay.

2,000 topics never seen before, ENRICH_CONCURRENCY=4, `SELECT %(topic)s AS t`; the two ways
alternate, `--rounds` times. Starts a ClickHouse server of its own (tests/support/clickhouse.py)
in a temporary directory.

    flock /tmp/relayhouse-bench.lock .venv/bin/python bench/enrich_pool.py --rounds 2
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.clickhouse import ClickHouseServer  # noqa: E402

from webapp.enrich import Enricher  # noqa: E402
from webapp.metrics import Metrics  # noqa: E402
from webapp.store.clickhouse import ClickHouseStore  # noqa: E402


def refresh_all(url: str, kept: bool, topics: int) -> tuple[float, int]:
    """(refreshes per second, connections made) for `topics` new topics."""
    store = ClickHouseStore(url)
    e = Enricher(store, "SELECT %(topic)s AS t", ttl_ms=600_000, timeout_ms=10_000, metrics=Metrics(), concurrency=4)
    if not kept:
        e._connect = None  # the store's own query(): a connection per refresh, as before
    names = {f"k{i}" for i in range(topics)}
    started = time.perf_counter()
    while e.cached_topics < topics:
        e.values_for(names, wait=False)
        gevent.sleep(0.0005)
    took = time.perf_counter() - started
    e.close()
    store.close()
    return topics / took, e.connects if kept else topics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--topics", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ClickHouseServer(Path(tmp) / "ch").start()
        try:
            url = server.fresh_url()
            ClickHouseStore(url).ensure_schema()
            for round_ in range(1, args.rounds + 1):
                for kept in (False, True):
                    rate, made = refresh_all(url, kept, args.topics)
                    print(f"round {round_}, {'kept' if kept else 'per refresh'}: {rate:.0f} refreshes/s, "
                          f"{made} connections", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
