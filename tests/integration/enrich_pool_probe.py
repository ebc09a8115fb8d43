"""Run by test_enrich_pool.py in a process of its own, patched like a gunicorn gevent worker (so
refreshes really overlap on the server): enrichment against a real ClickHouse server, watched from
the server's side, reported as one JSON line.

    python tests/integration/enrich_pool_probe.py CLICKHOUSE_URL CONCURRENCY TOPICS
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from webapp.enrich import Enricher  # noqa: E402
from webapp.metrics import Metrics  # noqa: E402
from webapp.store.clickhouse import ClickHouseStore  # noqa: E402

MARK = "enrich_pool_mark"  # a column alias: how the watcher tells enrichment queries from its own


class Watcher:
    """Polls system.processes on a connection of its own: the client port of every enrichment query;
    reads the server's count of open connections on another (a Client is one greenlet's at a time)."""

    def __init__(self, store: ClickHouseStore):
        self.client = store._client()
        self.counter = store._client()
        self.ports: dict[str, int] = {}  # query_id -> the client port of the connection running it
        self.topics: dict[str, int] = {}  # topic -> that port
        self.polled = gevent.event.Event()
        self._greenlet = gevent.spawn(self._run)
        self.polled.wait(10)

    def _run(self) -> None:
        while True:
            for query_id, port, text in self.client.execute(
                    "SELECT query_id, port, query FROM system.processes "
                    "WHERE query LIKE %(mark)s AND query NOT LIKE '%%system.processes%%'",
                    {"mark": f"%AS {MARK}%"}):
                self.ports[query_id] = port
                self.topics[text.split("'")[1]] = port
            self.polled.set()
            gevent.sleep(0.02)

    def tcp_connections(self) -> int:
        return int(self.counter.execute("SELECT value FROM system.metrics WHERE metric = 'TCPConnection'")[0][0])

    def stop(self) -> None:
        self._greenlet.kill()
        self.client.disconnect()
        self.counter.disconnect()


def counting_sessions(store: ClickHouseStore) -> list:
    """Count connections where the relay makes them (the driver boundary): ClickHouseStore.query_session."""
    made = []
    make = store.query_session

    def query_session():
        made.append(make())
        return made[-1]

    store.query_session = query_session
    return made


def settle(probe, want: int, timeout_s: float = 10.0) -> int:
    """The server counts a closed connection out a moment later: wait (bounded) for `want`."""
    deadline = time.monotonic() + timeout_s
    value = probe()
    while value != want and time.monotonic() < deadline:
        gevent.sleep(0.05)
        value = probe()
    return value


def main(url: str, concurrency: int, topics: int) -> dict:
    store = ClickHouseStore(url)
    store.ensure_schema()  # the test's database
    watcher = Watcher(store)
    baseline = watcher.tcp_connections()  # the watcher's own connections, and whoever else is connected
    made = counting_sessions(store)
    # each refresh takes 0.3 s on the server: the watcher sees every one of them
    e = Enricher(store, f"SELECT %(topic)s AS t, sleep(0.3) AS {MARK}", ttl_ms=600_000, timeout_ms=10_000,
                 metrics=Metrics(), concurrency=concurrency)
    names = [f"k{i}" for i in range(topics)]
    with gevent.Timeout(120):
        while e.cached_topics < len(names):  # those that found every slot taken are asked again
            e.values_for(set(names), wait=False)
            gevent.sleep(0.01)
    pooled = {"made": len(made), "open": e.connections, "ports": sorted(set(watcher.ports.values())),
              "seen": len(watcher.ports), "tcp_extra": settle(watcher.tcp_connections, baseline + len(made)) - baseline}

    # one connection, a query that fails on it, then another query
    failing = Enricher(store, f"SELECT toUInt8(%(topic)s) AS t, sleep(0.3) AS {MARK}", ttl_ms=600_000,
                       timeout_ms=10_000, metrics=Metrics(), concurrency=1)
    before = len(made)
    answers = [failing.values_for({topic}) for topic in ("1", "2", "not a number", "3")]
    failed = {"made": len(made) - before, "answers": answers, "errors": failing.errors,
              "ports": {topic: watcher.topics.get(topic) for topic in ("1", "2", "3")},
              "first_closed": not made[before].client.connection.connected}

    e.close()
    failing.close()
    closed = {"all_disconnected": not any(s.client.connection.connected for s in made),
              "tcp_extra": settle(watcher.tcp_connections, baseline) - baseline}
    watcher.stop()
    return {"pooled": pooled, "failed": failed, "closed": closed}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
