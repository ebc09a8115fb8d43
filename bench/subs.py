"""What upstream subscriptions that follow the clients cost (UPSTREAM_SUBSCRIBE=polygon), side by side with them off.

    .venv/bin/python bench/subs.py [--cycles 400] [--rounds 2]

Against one relay (one gunicorn gevent worker, CLICKHOUSE_URL=none) fed by the
tests' fake Polygon upstream, for each mode (off, polygon), alternated over
rounds on the same machine:

- churn: `cycles` sequential /ws connect -> snapshot -> close, each client on
  a topic of its own (`T.Sn`), so with the feature on every connect is a new
  upstream pattern and every close a leaving one; connections per second;
- lag (polygon only): from a client's snapshot (it is registered) to the
  upstream receiving the subscribe for its topic, p50/p90/max over `cycles`
  clients (the 50 ms batching window is in it by design).

Prints a table; figures on a shared machine are noisy: compare the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.clients import WsClient  # noqa: E402
from support.relay import Relay  # noqa: E402
from support.upstream import FakeUpstream  # noqa: E402


def churn(relay: Relay, cycles: int, tag: str) -> float:
    started = time.perf_counter()
    for n in range(cycles):
        client = WsClient(relay.ws_url("/ws", topics=f"T.S{tag}{n}", snapshot=0))
        client.read_snapshot()
        client.close()
    return cycles / (time.perf_counter() - started)


def lag(relay: Relay, upstream: FakeUpstream, cycles: int, tag: str) -> list[float]:
    record = upstream.connections[-1]
    lags = []
    for n in range(cycles):
        topic = f"T.L{tag}{n}"
        client = WsClient(relay.ws_url("/ws", topics=topic, snapshot=0))
        client.read_snapshot()
        registered = time.perf_counter()
        deadline = registered + 10
        while not any(action == "subscribe" and topic in params for action, params in record.actions()):
            if time.perf_counter() > deadline:
                raise AssertionError(f"no subscribe for {topic}")
            time.sleep(0.001)
        lags.append((time.perf_counter() - registered) * 1000)
        client.close()
    return lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with __import__("tempfile").TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for mode in ("off", "polygon"):
                upstream = FakeUpstream(polygon=True).start()
                env = {"UPSTREAM_UNSUBSCRIBE_DELAY_MS": "200", "LOG_LEVEL": "WARNING"}
                if mode == "polygon":
                    env["UPSTREAM_SUBSCRIBE"] = "polygon"
                relay = Relay(Path(tmp) / f"{mode}{round_}", upstream.url, env).start()
                try:
                    tag = f"{mode[0].upper()}{round_}X"
                    rate = churn(relay, args.cycles, tag)
                    row = {"round": round_ + 1, "mode": mode, "connects_per_s": rate}
                    if mode == "polygon":
                        lags = sorted(lag(relay, upstream, args.cycles, tag))
                        row.update(p50=statistics.median(lags), p90=lags[int(len(lags) * 0.9)], max=lags[-1],
                                   messages=sum(len(c.actions()) for c in upstream.connections))
                    rows.append(row)
                finally:
                    relay.stop()
                    upstream.stop()
    print("| round | UPSTREAM_SUBSCRIBE | connect+close cycles/s | subscribe lag p50 ms | p90 ms | max ms | upstream messages |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        lagcols = (f"{r['p50']:.1f} | {r['p90']:.1f} | {r['max']:.1f} | {r['messages']}" if "p50" in r
                   else "– | – | – | –")
        print(f"| {r['round']} | {r['mode']} | {r['connects_per_s']:.0f} | {lagcols} |")


if __name__ == "__main__":
    main()
