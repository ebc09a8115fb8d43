"""Persistence against the real thing: a ClickHouse 18.16 server (started by the harness) and embedded chDB.

Every test compares what the upstream sent, what clients received and what
the store holds: each event exactly once (count() = uniqExact(seq) without
FINAL), nothing lost, seqs never reused.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
from support.clickhouse import ClickHouseServer, clickhouse_server  # noqa: F401
from support.events import trades, unique_sym
from support.waiting import wait_until

BACKENDS = ["clickhouse", "chdb"]


def store_env(backend: str, server: ClickHouseServer | None, **extra: str) -> dict[str, str]:
    env = {"STORE_BATCH_MS": "100", "STORE_RETRY_MAX_MS": "300", **extra}
    if backend == "clickhouse":
        env["CLICKHOUSE_URL"] = server.fresh_url()
    else:
        env.pop("CLICKHOUSE_URL", None)
        env["CLICKHOUSE_URL"] = ""  # unset: the embedded chDB store
    return env


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def server(backend: str, request: pytest.FixtureRequest) -> ClickHouseServer | None:
    return request.getfixturevalue("clickhouse_server") if backend == "clickhouse" else None


def query(relay, sql: str, **params: Any) -> list[list[Any]]:
    response = relay.request("POST", "/query", json={"sql": sql, "params": params})
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def db_of(relay) -> str:
    url = relay.settings.get("CLICKHOUSE_URL")
    return url.rsplit("/", 1)[1] if url else "relayhouse"


def stored(relay) -> dict[str, int]:
    db = db_of(relay)
    rows = query(relay, f"SELECT count(), uniqExact(seq), min(seq), max(seq) FROM {db}.events")
    count, unique, low, high = (int(v) for v in rows[0])
    return {"count": count, "unique": unique, "min": low, "max": high}


def wait_stored(relay, n: int, timeout_s: float = 30) -> dict[str, int]:
    wait_until(lambda: stored(relay)["count"] >= n, timeout_s, f"{n} rows in the store",
               describe=lambda: str(stored(relay)))
    return stored(relay)


def test_events_published_under_load_land_exactly_once(backend, server, fresh_upstream, launch_relay):
    relay = launch_relay(fresh_upstream, store_env(backend, server))
    sym = unique_sym()
    fresh_upstream.emit(trades(0, 6000, sym=sym), batch=100)
    facts = wait_stored(relay, 6000)
    assert facts == {"count": 6000, "unique": 6000, "min": 1, "max": 6000}
    db = db_of(relay)
    rows = query(relay, f"SELECT seq, visitParamExtractInt(data, 'n') FROM {db}.events WHERE topic = %(t)s ORDER BY seq",
                 t=f"T.{sym}")
    assert [(int(s), int(n)) for s, n in rows] == [(i + 1, i) for i in range(6000)]


def test_history_serves_ranges_and_resists_injection(backend, server, fresh_upstream, launch_relay):
    relay = launch_relay(fresh_upstream, store_env(backend, server))
    a, b = unique_sym(), unique_sym()
    fresh_upstream.emit(trades(0, 50, sym=a) + trades(0, 50, sym=b), batch=25)
    wait_stored(relay, 100)
    got = relay.get("/history", params={"topics": f"T.{a}", "limit": 10}).json()["events"]
    assert [e["data"]["n"] for e in got] == list(range(40, 50))  # the most recent 10, ascending
    got = relay.get("/history", params={"since": 95, "limit": 10}).json()["events"]
    assert [e["seq"] for e in got] == [96, 97, 98, 99, 100]
    got = relay.get("/history", params={"topics": "T.*", "since": 10, "limit": 3}).json()["events"]
    assert [e["seq"] for e in got] == [11, 12, 13]
    # many prefixes of several lengths (grouped by length in bytes: one has() each), one of them a's
    many = ",".join([f"X{i}*" for i in range(300)] + [f"T.{a}*", "é*", "T.ZZZZZZZZZZZZZZZZ*"])
    answer = relay.get("/history", params={"topics": many, "limit": 100})
    assert answer.status_code == 200, answer.text[:300]
    got = answer.json()["events"]
    assert {e["topic"] for e in got} == {f"T.{a}"} and len(got) == 50, {e["topic"] for e in got}
    ts = got[0]["ts"]
    assert relay.get("/history", params={"from_ts": ts, "to_ts": ts, "limit": 1}).json()["events"]
    for bad in ({"since": "1 OR 1=1"}, {"from_ts": "0; DROP TABLE x"}, {"limit": "10000000"}, {"limit": "0"},
                {"to_ts": "now()"}, {"topics": "a*b"}, {"from_ts": 5, "to_ts": 4}):
        response = relay.get("/history", params=bad)
        assert response.status_code == 400, (bad, response.text)
    for hostile in ("x') OR 1=1 --", "T.' OR '1'='1*", "\\'; DROP TABLE events; --", "%(limit)s", "{x:String}"):
        response = relay.get("/history", params={"topics": hostile})
        assert response.status_code == 200 and response.json() == {"events": []}, (hostile, response.text)
    assert stored(relay)["count"] == 100  # the table is still there and whole


def test_a_resume_older_than_the_cache_comes_from_the_store(backend, server, fresh_upstream, launch_relay, ws):
    relay = launch_relay(fresh_upstream, store_env(backend, server, CACHE_MAX_ITEMS="100", RESUME_PAGE_EVENTS="300"))
    sym = unique_sym()
    fresh_upstream.emit(trades(0, 1000, sym=sym), batch=100)  # the resume below reads 4 pages of 300
    wait_stored(relay, 1000)
    epoch = relay.health()["epoch"]
    client = ws(relay, since=10, epoch=epoch, topics=f"T.{sym}")
    snapshot = client.read_snapshot()
    assert snapshot["recovered"] is True and "missing" not in snapshot
    assert [e["seq"] for e in snapshot["events"]] == list(range(11, 1001))
    fresh_upstream.emit(trades(1000, 1010, sym=sym), batch=5)
    live = client.wait_for_seq(1010)
    assert [e["seq"] for e in live] == list(range(11, 1011))


def test_a_restart_continues_seq_keeps_the_epoch_and_warms_the_cache(backend, server, fresh_upstream, launch_relay):
    relay = launch_relay(fresh_upstream, store_env(backend, server))
    sym = unique_sym()
    fresh_upstream.emit(trades(0, 300, sym=sym), batch=50)
    wait_stored(relay, 300)
    epoch = relay.health()["epoch"]
    relay.send_signal(signal.SIGTERM)
    assert relay.wait_exit(15) == 0
    relay.restart()
    health = relay.health()
    assert (health["epoch"], health["last_seq"]) == (epoch, 300)
    recent = relay.get("/cache/recent", params={"limit": 5}).json()["events"]
    assert [e["seq"] for e in recent] == [296, 297, 298, 299, 300]
    fresh_upstream.emit(trades(300, 310, sym=sym), batch=10)
    facts = wait_stored(relay, 310)
    assert facts == {"count": 310, "unique": 310, "min": 1, "max": 310}


def test_sigterm_flushes_what_is_pending(backend, server, fresh_upstream, launch_relay):
    # a long batch interval: without the flush these events would still be waiting
    relay = launch_relay(fresh_upstream, store_env(backend, server, STORE_BATCH_MS="60000", STORE_BATCH_ROWS="1000000"))
    fresh_upstream.emit(trades(0, 500, sym=unique_sym()), batch=50)
    wait_until(lambda: relay.health()["last_seq"] == 500, 10, "500 events sequenced")
    assert relay.health()["store"]["pending"] == 500
    relay.send_signal(signal.SIGTERM)
    assert relay.wait_exit(15) == 0
    relay.restart()
    assert stored(relay) == {"count": 500, "unique": 500, "min": 1, "max": 500}


def test_sigkill_under_load_loses_nothing_spooled_and_never_reuses_a_seq(backend, server, fresh_upstream,
                                                                          launch_relay, ws):
    relay = launch_relay(fresh_upstream, store_env(backend, server))
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    stop = threading.Event()
    sent = []

    def pump():
        n = 0
        while not stop.is_set():
            try:
                fresh_upstream.emit(trades(n, n + 20, sym=sym), batch=20)
            except AssertionError:
                return  # the relay is gone
            sent.append(n)
            n += 20
            time.sleep(0.01)

    pumper = threading.Thread(target=pump)
    pumper.start()
    try:
        wait_until(lambda: stored(relay)["count"] >= 2000, 30, "2000 stored events under load")
        relay.send_signal(signal.SIGKILL)
        relay.wait_exit(10)
    finally:
        stop.set()
        pumper.join(10)
    seen_before = [e["seq"] for e in client.events]
    relay.restart()
    after = relay.health()["last_seq"]
    assert after >= max(seen_before, default=0), "seq went backwards: a seq would be reused"
    facts = stored(relay)
    # every event the store or the spool had acknowledged is there, exactly once, with no hole below the max
    assert facts["count"] == facts["unique"] == facts["max"] and facts["min"] == 1, facts
    fresh_upstream.emit(trades(10**6, 10**6 + 10, sym=sym), batch=10)
    wait_until(lambda: stored(relay)["max"] >= after + 10, 30, "new events after the restart stored")
    facts = stored(relay)
    assert facts["count"] == facts["unique"]
    rows = query(relay, f"SELECT min(seq) FROM {db_of(relay)}.events WHERE visitParamExtractInt(data, 'n') >= 1000000")
    assert int(rows[0][0]) > after


def test_clickhouse_stopped_under_load_then_restarted_keeps_every_event_once(clickhouse_server, fresh_upstream,  # noqa: F811
                                                                              launch_relay, ws):
    relay = launch_relay(fresh_upstream, store_env("clickhouse", clickhouse_server))
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    fresh_upstream.emit(trades(0, 500, sym=sym), batch=50)
    wait_stored(relay, 500)
    clickhouse_server.stop()
    try:
        for start in range(500, 3000, 100):  # the feed carries on while the store is down
            fresh_upstream.emit(trades(start, start + 100, sym=sym), batch=50)
            time.sleep(0.05)
        received = client.wait_for_seq(3000, timeout_s=20)
        assert [e["seq"] for e in received] == list(range(1, 3001))
        wait_until(lambda: relay.health()["store"]["ok"] is False, 10, "the store marked down")
        health = relay.health()
        assert health["status"] == "degraded" and health["store"]["spooled"] > 0
        assert relay.get("/query", params={"sql": "SELECT 1"}).status_code == 503
    finally:
        clickhouse_server.start()
    facts = wait_stored(relay, 3000, timeout_s=60)
    assert facts == {"count": 3000, "unique": 3000, "min": 1, "max": 3000}
    wait_until(lambda: relay.health()["store"]["spooled"] == 0, 20, "the spool written back")
    assert relay.health()["status"] == "ok"


READ_ONLY_REFUSALS = [
    "INSERT INTO {db}.events (seq) VALUES (999999)",
    "DROP TABLE {db}.events",
    "ALTER TABLE {db}.events DELETE WHERE 1",
    "CREATE TABLE {db}.evil (a UInt8) ENGINE = Memory",
    "SET readonly = 0",
    "SELECT 1; DROP TABLE {db}.events",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT 1 SETTINGS max_execution_time = 100000",
    "INSERT INTO system.numbers SELECT 1",
    "TRUNCATE TABLE {db}.events",
]


def test_query_refuses_writes_ddl_settings_and_multi_statements(backend, server, fresh_upstream, launch_relay):
    relay = launch_relay(fresh_upstream, store_env(backend, server))
    fresh_upstream.emit(trades(0, 10, sym=unique_sym()), batch=10)
    wait_stored(relay, 10)
    db = db_of(relay)
    for sql in READ_ONLY_REFUSALS:
        response = relay.request("POST", "/query", json={"sql": sql.format(db=db)})
        assert response.status_code == 400, (sql, response.text)
        assert response.json()["error"]
    assert stored(relay)["count"] == 10


def test_query_is_read_only_by_the_servers_own_setting(clickhouse_server):  # noqa: F811
    # the relay's parse check aside, the server refuses a write under readonly=2
    client = clickhouse_server.client()
    with pytest.raises(Exception, match="readonly"):
        client.execute("CREATE TABLE default.x (a UInt8) ENGINE = Memory", settings={"readonly": 2})


def test_query_limits_cut_off_long_and_large_queries(backend, server, fresh_upstream, launch_relay):
    relay = launch_relay(fresh_upstream, store_env(backend, server, QUERY_TIMEOUT_S="1", QUERY_MAX_ROWS="1000",
                                                   QUERY_MAX_ROWS_TO_READ="100000000000"))
    big = relay.request("POST", "/query", json={"sql": "SELECT number FROM system.numbers LIMIT 50000"})
    assert big.status_code == 200
    body = big.json()
    assert body["truncated"] is True and body["row_count"] == 1000 and body["rows"][0] == [0]
    slow = relay.request("POST", "/query", json={"sql": "SELECT count() FROM system.numbers WHERE modulo(number, 7) = 3"})
    assert slow.status_code == 504, slow.text
    bad = relay.request("POST", "/query", json={"sql": "SELECT no_such_column FROM system.one"})
    assert bad.status_code == 400 and "no_such_column" in bad.json()["error"]
    typed = relay.request("POST", "/query", json={
        "sql": "SELECT toUInt64(18446744073709551615) AS u, toDecimal64(1.25, 2) AS d, nan AS n, "
               "toDate('2026-11-26') AS day, %(s)s AS s",
        "params": {"s": "it's \\ fine"}}).json()
    assert typed["rows"] == [["18446744073709551615", 1.25, None, "2026-11-26", "it's \\ fine"]]


def test_query_params_and_errors_are_json(backend, server, fresh_upstream, launch_relay):
    relay = launch_relay(fresh_upstream, store_env(backend, server))
    assert relay.request("POST", "/query", json={"sql": "SELECT %(missing)s"}).status_code == 400
    assert relay.request("POST", "/query", data=b"not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert relay.request("POST", "/query", json={"sql": ""}).status_code == 400
    assert relay.request("POST", "/query", json={"sql": "SELECT 1", "params": [1]}).status_code == 400
    ok = relay.get("/query", params={"sql": "SELECT 41 + 1 AS answer"}).json()
    assert ok["columns"] == [{"name": "answer", "type": "UInt16"}] and ok["rows"] == [[42]]


def test_enrichment_merges_results_and_survives_slow_and_failing_queries(backend, server, fresh_upstream,
                                                                          launch_relay, ws):
    slow = launch_relay(fresh_upstream, store_env(
        backend, server, ENRICH_SQL="SELECT sleep(1) AS slept, %(topic)s AS about", ENRICH_TIMEOUT_MS="50",
        ENRICH_TTL_MS="600000"))
    sym = unique_sym()
    client = ws(slow, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    fresh_upstream.emit(trades(0, 1, sym=sym), batch=None)
    first = client.wait_for_seq(1)[0]
    assert "enrichment" not in first  # the query takes 1 s; the event waited at most 50 ms
    wait_until(lambda: slow.get("/metrics").text.count('relayhouse_enrich_errors_total{kind="timeout"} 1.0') == 1,
               5, "the late enrichment counted")
    # once the slow result is in, later events carry it
    sent = [1]

    def enriched() -> bool:
        fresh_upstream.emit(trades(sent[0], sent[0] + 1, sym=sym), batch=None)
        sent[0] += 1
        return "enrichment" in client.wait_for_seq(sent[0])[-1]

    wait_until(enriched, 15, "an enriched event", interval_s=0.2)
    event = client.events[-1]
    assert event["enrichment"] == {"slept": 0, "about": f"T.{sym}"}


def test_failing_enrichment_is_counted_and_never_stops_the_feed(backend, server, fresh_upstream, launch_relay, ws):
    relay = launch_relay(fresh_upstream, store_env(backend, server, ENRICH_SQL="SELECT no_such_column FROM system.one"))
    sym = unique_sym()
    client = ws(relay, topics=f"T.{sym}", snapshot=0)
    client.read_snapshot()
    fresh_upstream.emit(trades(0, 200, sym=sym), batch=20)
    received = client.wait_for_seq(200)
    assert [e["data"]["n"] for e in received] == list(range(200)) and not any("enrichment" in e for e in received)
    assert 'relayhouse_enrich_errors_total{kind="error"}' in relay.get("/metrics").text


def test_a_topic_with_a_lone_surrogate_is_stored_with_the_events_around_it(backend, server, fresh_upstream,
                                                                            launch_relay):
    """JSON may carry "\\udfff", UTF-8 cannot: such a topic made the store refuse its whole batch, and the
    writer dead-lettered the 25 good events beside it. The topic now has U+FFFD in its place."""
    relay = launch_relay(fresh_upstream, store_env(backend, server))
    sym = unique_sym()
    fresh_upstream.emit(['[{"ev":"T","sym":"%s","n":0},{"ev":"T\\udfff","sym":"%s","n":1},'
                         '{"ev":"T","sym":"%s","n":2}]' % (sym, sym, sym)], batch=None)
    assert wait_stored(relay, 3) == {"count": 3, "unique": 3, "min": 1, "max": 3}
    got = relay.get("/history", params={"since": 0, "limit": 10}).json()["events"]
    assert [(e["topic"], e["data"]["n"]) for e in got] == [(f"T.{sym}", 0), (f"T\ufffd.{sym}", 1), (f"T.{sym}", 2)]
    assert got[1]["data"]["ev"] == "T\udfff"  # the element itself is kept as it came
    assert relay.health()["status"] == "ok"


def test_a_scoped_token_resumes_from_the_store_only_within_its_topics(backend, server, fresh_upstream, launch_relay,
                                                                        ws):
    """TOKEN_TOPICS on a resume older than the cache: a subscription wholly outside the scope is empty, and
    its store half read every topic ('no patterns' was taken as 'all': 12,451 events of 41 topics for
    topics=X.NONE, found by an outside audit)."""
    relay = launch_relay(fresh_upstream, store_env(backend, server, CACHE_MAX_ITEMS="20", API_TOKENS="full,scoped",
                                                   TOKEN_TOPICS='{"scoped": ["T.OWN*"]}'))
    relay.http.headers["Authorization"] = "Bearer full"
    own, other = f"OWN{unique_sym()}", unique_sym()
    fresh_upstream.emit(trades(0, 100, sym=other) + trades(0, 50, sym=own) + trades(100, 200, sym=other), batch=50)
    wait_stored(relay, 250)
    epoch = relay.health()["epoch"]
    outside = ws(relay, since=1, epoch=epoch, topics="X.NONE", token="scoped").read_snapshot()
    assert outside["events"] == []
    within = ws(relay, since=1, epoch=epoch, token="scoped").read_snapshot()
    assert {e["topic"] for e in within["events"]} == {f"T.{own}"} and len(within["events"]) == 50


def test_a_resume_while_the_store_hangs_is_served_from_the_spool(clickhouse_server, fresh_upstream,  # noqa: F811
                                                                 launch_relay, ws):
    """ClickHouse stops answering (a partition: connections open, nothing moves); the events go to the spool.
    A resume older than the cache gets them from the spool, recovered (before: `missing` for all of them), and
    /health counts the hung insert's batch as spooled (before: neither pending nor spooled)."""
    from support.cluster import StallingProxy

    proxy = StallingProxy(clickhouse_server.port)
    url = clickhouse_server.fresh_url().replace(f":{clickhouse_server.port}/", f":{proxy.port}/")
    direct = clickhouse_server.client(database=url.rsplit("/", 1)[1])
    try:
        relay = launch_relay(fresh_upstream, {"CLICKHOUSE_URL": url, "STORE_BATCH_MS": "100", "CACHE_MAX_ITEMS": "20"})
        sym = unique_sym()
        fresh_upstream.emit(trades(0, 50, sym=sym), batch=10)
        wait_until(lambda: direct.execute("SELECT count() FROM events")[0][0] == 50, 20, "seqs 1..50 stored")
        epoch = relay.health()["epoch"]
        proxy.stall()
        try:
            fresh_upstream.emit(trades(50, 150, sym=sym), batch=10)
            wait_until(lambda: relay.health()["store"]["spooled"] >= 100, 15, "seqs 51..150 in the spool",
                       describe=lambda: str(relay.health()["store"]))
            snapshot = ws(relay, topics=f"T.{sym}", since=60, epoch=epoch).read_snapshot()  # cache: 131..150
            assert snapshot["recovered"] is True and "missing" not in snapshot, snapshot.get("missing")
            assert [e["seq"] for e in snapshot["events"]] == list(range(61, 151))
            assert [e["data"]["n"] for e in snapshot["events"]] == list(range(60, 150))
            # older than the spool: the store's part, which a hung store cannot give; told at once (before:
            # after the driver's 30 s I/O time-out, the snapshot at 35 s)
            started = time.monotonic()
            snapshot = ws(relay, topics=f"T.{sym}", since=10, epoch=epoch).read_snapshot(timeout_s=20)
            assert time.monotonic() - started < 15
            assert snapshot["recovered"] is False and snapshot["missing"] == [11, 50]
            assert [e["seq"] for e in snapshot["events"]] == list(range(51, 151))
        finally:
            proxy.resume()
        wait_until(lambda: direct.execute("SELECT count(), uniqExact(seq) FROM events")[0] == (150, 150), 30,
                   "every event stored once after the stall")
    finally:
        direct.disconnect()
        proxy.close()


def test_a_resume_from_another_seq_space_gets_the_store_s_events_too_and_is_never_recovered(
        backend, server, fresh_upstream, launch_relay, ws):
    """Another epoch, or a since past the relay's last seq: every matching event still held, from seq 1 on,
    `recovered: false`. Before, the store's part was reported missing ([1, 350] with a cache of 50), and
    since=0 of another epoch said `recovered: true` (an outside audit)."""
    relay = launch_relay(fresh_upstream, store_env(backend, server, CACHE_MAX_ITEMS="50"))
    sym = unique_sym()
    fresh_upstream.emit(trades(0, 400, sym=sym), batch=100)
    wait_stored(relay, 400)
    epoch = relay.health()["epoch"]
    for params in ({"since": 100, "epoch": "another-epoch"}, {"since": 0, "epoch": "another-epoch"},
                   {"since": 10_000, "epoch": epoch}):
        snapshot = ws(relay, topics=f"T.{sym}", **params).read_snapshot()
        assert snapshot["recovered"] is False, params
        assert "missing" not in snapshot, (params, snapshot.get("missing"))
        assert [e["seq"] for e in snapshot["events"]] == list(range(1, 401)), params
