"""/metrics reads each part's own state when it is scraped: no push keeps it current, and every documented name is there."""

import re
from pathlib import Path

import pytest
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from handlers import probes
from handlers.events import make_event
from webapp import create_app
from webapp.metrics import FROM_PARTS, Metrics
from webapp.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# where /metrics names are documented (docs/clickhouse.md names a ClickHouse user relayhouse_query: not a metric)
DOCS = ("docs/api.md", "docs/operations.md", "docs/scaling.md", "docs/polygon.md")
STORES = {"none": {"CLICKHOUSE_URL": "none"}, "chdb": {"CLICKHOUSE_URL": ""}}


def make_runtime(tmp_path, store="none"):
    settings = Settings.from_env({"UPSTREAM_URL": "ws://127.0.0.1:9/feed", "DATA_DIR": str(tmp_path), **STORES[store]})
    app = create_app(settings)
    return app.test_client(), app.extensions["relayhouse"]


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    text = client.get("/metrics").get_data(as_text=True)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def documented_names() -> set[str]:
    return {name for doc in DOCS for name in re.findall(r"\brelayhouse_[a-z_]+[a-z]", (ROOT / doc).read_text())}


@pytest.mark.parametrize("store", STORES)
def test_a_scrape_shows_what_the_parts_hold_now_without_any_push(tmp_path, store):
    client, rt = make_runtime(tmp_path, store)
    before = scrape(client)
    assert before[("relayhouse_upstream_reconnects_total", ())] == 0
    assert before[("relayhouse_upstream_connected", ())] == 0
    # the parts change on their own; nobody calls a metrics hook
    rt.upstream.state.reconnects = 7
    rt.upstream.state.connected = True
    rt.cache.add([make_event(seq, 1000, "T.A", {"n": seq}) for seq in (1, 2, 3)], 1000)
    rt.ingest.upstream_frames = 11
    rt.ingest.numbered["upstream"] = 5
    after = scrape(client)
    assert after[("relayhouse_upstream_reconnects_total", ())] == 7
    assert after[("relayhouse_upstream_connected", ())] == 1
    assert after[("relayhouse_cache_items", ())] == 3
    assert after[("relayhouse_upstream_frames_total", ())] == 11
    assert after[("relayhouse_events_in_total", (("source", "upstream"),))] == 5
    # a scrape reads, it does not count: the same state scraped again gives the same values
    assert scrape(client) == after


def test_the_store_parts_are_read_at_scrape_time_too(tmp_path):
    client, rt = make_runtime(tmp_path, "chdb")
    rt.writer.dropped = 4
    rt.writer.spool_full = True
    rt.writer.ok = False
    values = scrape(client)
    assert values[("relayhouse_store_dropped_events", ())] == 4
    assert values[("relayhouse_spool_full", ())] == 1
    assert values[("relayhouse_store_ok", ())] == 0


@pytest.mark.parametrize("store", STORES)
def test_the_metrics_text_parses_and_has_every_documented_name(tmp_path, store):
    client, _ = make_runtime(tmp_path, store)
    text = client.get("/metrics").get_data(as_text=True)
    families = list(text_string_to_metric_families(text))  # raises on text that is not Prometheus' format
    # the health listener's /metrics: the same text and two gauges of its thread (handlers/probes.py)
    on_listener = list(text_string_to_metric_families(probes.metrics_answer(text.encode(), 0.25, 0.5).decode()))
    assert len(on_listener) == len(families) + 2
    shown = {f.name for f in on_listener} | {s.name for f in on_listener for s in f.samples}
    # a counter family is named without _total in the parser's view; its samples carry it
    shown |= {f.name + "_total" for f in on_listener if f.type == "counter"}
    documented = documented_names()
    assert len(documented) >= 30  # the docs were read
    assert sorted(documented - shown) == []
    for name, (kind, _, labels) in FROM_PARTS.items():
        family = next(f for f in families if f.name == "relayhouse_" + name)
        assert family.type == kind
        if not labels:  # one sample, whatever the parts hold
            assert [s.name for s in family.samples] == ["relayhouse_" + name + ("_total" if kind == "counter" else "")]


def test_a_name_read_from_the_parts_cannot_also_be_declared_on_the_path():
    metrics = Metrics()
    metrics.read_parts(dict)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("relayhouse_upstream_reconnects", "again", registry=metrics.registry)


def test_the_upstream_reconnect_counter_never_goes_back_when_the_worker_leads_again(tmp_path):
    client, rt = make_runtime(tmp_path)
    rt.upstream.state.reconnects = 4  # a first term as leader (in a cluster a worker may lead several times)
    first = rt.upstream
    rt._lead()  # a new upstream connection for the new term (to a port that refuses)
    try:
        assert rt.upstream is not first
        assert scrape(client)[("relayhouse_upstream_reconnects_total", ())] >= 4
    finally:
        rt.shutdown()



def test_the_ingests_own_reservation_writes_are_shown(tmp_path):
    """A late background extension makes the ingest write the reservation itself: /health and /metrics count it."""
    client, rt = make_runtime(tmp_path, "chdb")
    rt.seq_state.sync_writes = 3
    assert client.get("/health").get_json()["store"]["reservation_sync_writes"] == 3
    assert scrape(client)[("relayhouse_seq_reservation_sync_writes_total", ())] == 3
