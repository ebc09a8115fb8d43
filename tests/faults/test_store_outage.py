"""ClickHouse stopped for 60 s under 1,000 events/s, then restarted (targets: Reliability).

The feed and the clients carry on through the outage (nobody waits on the
store), /health and /metrics say what is happening, the spool grows, and
after the restart every event is in the store exactly once (raw rows, no
FINAL) with the spool empty again.
"""

from __future__ import annotations

import time

from support.events import unique_sym
from support.waiting import wait_until

from faults.harness import Pump, assert_in_order_once, assert_store_holds, metric_value, store_env

OUTAGE_S = 60.0
RATE_PER_S = 1000
MIN_RATE_PER_S = 900  # the pump must really have kept this up during the outage
LIVE_LAG_S = 2.0  # a client is never further behind the relay than this, store down or not


def test_clickhouse_down_for_a_minute_under_load_then_back_keeps_every_event_once(
        clickhouse_server, fresh_upstream, start_relay, store, ws, sse):
    url, probe = store()
    relay = start_relay(fresh_upstream, store_env(url, STORE_RETRY_MAX_MS="2000"))
    sym = unique_sym()
    topic = f"T.{sym}"
    clients = [ws(relay, topics=topic, snapshot=0) for _ in range(3)]
    for client in clients:
        client.read_snapshot()
    stream = sse(relay, topics=topic, snapshot=0)
    streamed: list[dict] = []
    pump = Pump(fresh_upstream, sym, RATE_PER_S, per_frame=50).start()
    try:
        time.sleep(3)
        probe.wait_count(1000, timeout_s=10)  # the store keeps up before the outage

        clickhouse_server.stop()
        down_at = time.monotonic()
        spooled_seen = []
        try:
            wait_until(lambda: relay.health()["store"]["ok"] is False, 15, "the relay to see the store down")
            while time.monotonic() - down_at < OUTAGE_S:
                # every few seconds: clients are live, /health and /metrics say degraded and spooling
                time.sleep(5)
                health = relay.health()
                sent = len(pump.sent)
                assert health["status"] == "degraded" and health["store"]["ok"] is False, health["store"]
                assert health["store"]["last_error"], health["store"]
                spooled_seen.append(health["store"]["spooled"])
                metrics = relay.get("/metrics").text
                assert metric_value(metrics, "relayhouse_store_ok") == 0
                assert metric_value(metrics, "relayhouse_spool_events") > 0
                for client in clients:
                    client.wait_for_events(sent, timeout_s=LIVE_LAG_S)
                streamed += stream.events(sent - len(streamed), timeout_s=LIVE_LAG_S)
            rate = pump.rate_between(down_at, time.monotonic())
        finally:
            clickhouse_server.start()
        back_at = time.monotonic()
        time.sleep(3)
        total = pump.stop()
    finally:
        pump.stop()

    assert rate >= MIN_RATE_PER_S, f"only {rate:.0f} events/s reached the relay during the outage"
    assert spooled_seen == sorted(spooled_seen) and spooled_seen[-1] >= 0.8 * RATE_PER_S * 50, (
        f"the spool should have grown through the outage: {spooled_seen}")
    wait_until(lambda: relay.health()["last_seq"] >= total, 15, f"the relay to sequence all {total} events")
    for index, client in enumerate(clients):
        client.wait_for_events(total, timeout_s=30)
        assert_in_order_once(client.events, pump.sent, f"/ws client {index}", first_seq=1)
    streamed += stream.events(total - len(streamed), timeout_s=30)
    assert_in_order_once(streamed, pump.sent, "/sse client", first_seq=1)

    facts = probe.wait_count(total, timeout_s=60)
    caught_up_s = time.monotonic() - back_at
    assert facts == {"count": total, "unique": total, "min": 1, "max": total}, facts
    assert_store_holds(probe, [(n + 1, n) for n in range(total)])
    wait_until(lambda: relay.health()["store"]["spooled"] == 0, 20, "the spool to be written back")
    health = relay.health()
    assert health["status"] == "ok" and health["store"]["ok"] is True, health
    assert health["store"]["dropped"] == 0 and not health["store"]["spool_full"], health["store"]
    assert not list((relay.data_dir / "spool").glob("*.seg")), "spool segments left after the write-back"
    print(f"{total} events, {rate:.0f}/s during a {OUTAGE_S:.0f} s outage; store whole {caught_up_s:.1f} s after "
          f"ClickHouse was back; spool peaked at {max(spooled_seen)} events")
