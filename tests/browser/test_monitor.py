"""The monitor page in a real browser: live feed, filter, pause, search, cache, SQL, tokens, reconnects, status."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import support.relay
from playwright.sync_api import expect
from support.relay import Relay
from support.upstream import FakeUpstream
from support.waiting import wait_until

# Requests the browser itself reports as failed when the relay refuses them or is down.
REFUSED = r"Failed to load resource: the server responded with a status of {}"
CONNECTION_REFUSED = r"Failed to load resource: net::ERR_CONNECTION_REFUSED"
WS_FAILED = r"WebSocket connection to '.*' failed"
PHONE = {"width": 390, "height": 844}
STATIC = Path(__file__).resolve().parents[2] / "webapp" / "static"


def publish(relay: Relay, items: list[dict[str, Any]] | dict[str, Any], *, token: str | None = None) -> list[int]:
    """POST /publish (loopback is admin while ADMIN_TOKEN is unset); the new seqs."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = relay.request("POST", "/publish", json=items, headers=headers)
    assert response.status_code == 200, f"/publish answered {response.status_code}: {response.text[:300]}"
    return response.json()["seqs"]


def trade(sym: str, **fields: Any) -> dict[str, Any]:
    return {"ev": "T", "sym": sym, "p": 101.25, "s": 100, **fields}


# -- loading and the live feed ---------------------------------------------------


def test_page_loads_healthy_and_live_without_console_errors(relay: Relay, upstream: FakeUpstream, open_monitor) -> None:
    monitor = open_monitor(relay)
    page = monitor.page
    expect(page.locator("#overall-text")).to_have_text("Healthy")
    expect(page.locator("body")).to_have_class("state-ok")
    expect(page.locator("#upstream-url")).to_have_text(upstream.url)
    expect(page.locator("#upstream-demo")).to_be_hidden()
    expect(page.locator("#upstream-badge")).to_have_text("Connected")
    expect(page.locator("#store-badge")).to_have_text("Off")  # CLICKHOUSE_URL=none
    expect(page.locator("#relay-clients")).to_contain_text("ws 1")
    expect(page.locator("#chart-in")).to_have_attribute("data-samples", re.compile(r"^[1-9]"))


def test_page_and_assets_are_served_open_with_a_strict_content_policy(relay: Relay) -> None:
    page = relay.get("/monitor")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    scripts = sorted(path.name for path in STATIC.glob("*.js"))
    assets = [(name, "javascript") for name in scripts] + [("monitor.css", "text/css"), ("favicon.svg", "image/svg+xml")]
    for name, kind in assets:
        asset = relay.get(f"/monitor/assets/{name}")
        assert asset.status_code == 200, name
        assert kind in asset.headers["Content-Type"], (name, asset.headers["Content-Type"])
        assert "no-cache" in asset.headers["Cache-Control"] and asset.headers["ETag"], (name, asset.headers)
    assert relay.get("/monitor/assets/../routes/monitor.py").status_code == 404
    # one entry module, and every module it imports preloaded, so none waits for its importer to arrive
    entry = re.findall(r'<script type="module" src="/monitor/assets/([\w.-]+)"></script>', page.text)
    preloaded = re.findall(r'<link rel="modulepreload" href="/monitor/assets/([\w.-]+)">', page.text)
    assert entry == ["monitor.js"] and "<script src" not in page.text
    assert sorted(entry + preloaded) == scripts


def test_published_events_appear_within_two_seconds_and_expand_with_the_keyboard(relay: Relay, open_monitor) -> None:
    monitor = open_monitor(relay)
    page = monitor.page
    [seq] = publish(relay, trade("LIVE", note="first"))
    row = monitor.row(seq)
    expect(row).to_be_visible(timeout=2000)
    expect(row.locator(".c-topic")).to_have_text("T.LIVE")
    expect(row.locator(".c-data")).to_contain_text("note=first")

    button = row.locator(".ev-row")
    button.focus()
    page.keyboard.press("Enter")
    expect(button).to_have_attribute("aria-expanded", "true")
    expect(row.locator(".ev-json")).to_contain_text('"sym": "LIVE"')
    page.keyboard.press("Enter")
    expect(row.locator(".ev-json")).to_be_hidden()


def test_topic_filter_shows_only_matching_topics(relay: Relay, open_monitor) -> None:
    monitor = open_monitor(relay)
    page = monitor.page
    page.get_by_label("Topics", exact=True).fill("T.KEEP, Q.KEEP*")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#streambar")).to_have_attribute("data-live-topics", "T.KEEP,Q.KEEP*")
    assert "topics=T.KEEP" in page.url

    dropped, kept, also_kept = publish(relay, [trade("DROP"), trade("KEEP"), {"ev": "Q", "sym": "KEEPER"}])
    expect(monitor.row(also_kept)).to_be_visible(timeout=2000)
    expect(monitor.row(kept)).to_be_visible()
    # the dropped event came first in the same frame: had it been shown, it would be there by now
    expect(monitor.row(dropped)).to_have_count(0)
    topics = set(monitor.rows().evaluate_all("rows => rows.map(r => r.dataset.topic)"))
    assert topics == {"T.KEEP", "Q.KEEPER"}

    page.get_by_label("Topics", exact=True).fill("T.*x*")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#filter-error")).to_contain_text("'*' may only end a pattern")
    expect(page.get_by_label("Topics", exact=True)).to_have_attribute("aria-invalid", "true")


def test_pause_holds_the_view_and_resume_shows_what_arrived(relay: Relay, open_monitor) -> None:
    monitor = open_monitor(relay)
    page = monitor.page
    pause = page.locator("#pause")
    page.locator("body").press("p")  # the keyboard shortcut
    expect(pause).to_have_attribute("aria-pressed", "true")

    [seq] = publish(relay, trade("PAUSED"))
    expect(page.locator("#stream-state")).to_have_text("Paused — 1 new event since", timeout=2000)
    expect(pause).to_have_text("Resume (1)")
    expect(monitor.row(seq)).to_have_count(0)

    pause.click()
    expect(pause).to_have_attribute("aria-pressed", "false")
    expect(monitor.row(seq)).to_be_visible(timeout=2000)
    expect(page.locator("#stream-state")).to_have_text("Live")


def test_rows_stay_put_while_the_reader_is_scrolled_down(relay: Relay, open_monitor) -> None:
    monitor = open_monitor(relay)
    page = monitor.page
    seqs = publish(relay, [trade("SCROLL", i=i) for i in range(60)])
    expect(monitor.row(seqs[-1])).to_be_visible(timeout=2000)
    page.locator("#feed-list").evaluate("list => { list.scrollTop = 300; }")
    anchor = monitor.row(seqs[40])
    before = anchor.bounding_box()

    more = publish(relay, [trade("LATER", i=i) for i in range(5)])
    expect(page.locator("#feed-newer")).to_have_text("↑ 5 newer events", timeout=2000)
    assert anchor.bounding_box() == before
    expect(monitor.row(more[0])).to_have_count(0)

    page.locator("#feed-newer").click()
    expect(monitor.row(more[-1])).to_be_in_viewport()
    assert page.locator("#feed-list").evaluate("list => list.scrollTop") == 0


# -- tools ---------------------------------------------------------------------


def test_search_shows_matching_events(relay: Relay, open_monitor) -> None:
    monitor = open_monitor(relay)
    page = monitor.page
    seqs = publish(relay, [trade("SRCH", note="needle-7f3"), trade("SRCH", note="hay"), trade("OTHER", note="needle-7f3")])
    page.get_by_label("Text contains").fill("needle-7f3")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#search-summary")).to_have_text("2 matching events in the cache, newest first.")
    found = page.locator("#search-results li.ev").evaluate_all("rows => rows.map(r => Number(r.dataset.seq))")
    assert found == [seqs[2], seqs[0]]

    page.get_by_label("Text contains").fill("")
    page.get_by_label("Field path").fill("note")
    page.get_by_label("equals").fill("hay")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#search-summary")).to_have_text("1 matching event in the cache, newest first.")
    expect(page.locator(f'#search-results li.ev[data-seq="{seqs[1]}"]')).to_be_visible()

    page.get_by_label("equals").fill("")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#search-summary")).to_have_text("Give a value for the field (or clear the field).")


def test_sql_console_shows_the_error_plainly(relay: Relay, open_monitor) -> None:
    monitor = open_monitor(relay)
    monitor.console.allow(REFUSED.format("503"))  # this relay has no store (CLICKHOUSE_URL=none)
    page = monitor.page
    page.get_by_role("tab", name="SQL console").click()
    expect(page.get_by_label("Read-only SQL")).to_have_value(re.compile(r"^SELECT topic, count\(\) AS n FROM relayhouse\.events"))
    page.get_by_label("Read-only SQL").press("Control+Enter")
    expect(page.locator("#sql-error")).to_be_visible()
    expect(page.locator("#sql-error-title")).to_have_text(
        "Query failed: there is no store to query (HTTP 503 SERVICE UNAVAILABLE)")
    expect(page.locator("#sql-error-body")).to_contain_text('"error": "no store: persistence is off')
    expect(page.locator("#sql-table-wrap")).to_be_hidden()

    page.get_by_label("Parameters (JSON object, optional)").fill("{not json")
    page.get_by_role("button", name="Run query").click()
    expect(page.locator("#sql-error-title")).to_have_text("Parameters are not valid JSON")


def test_sql_console_shows_rows_for_a_select_and_a_clear_error_for_a_bad_query(
    fresh_upstream: FakeUpstream, launch_relay, open_monitor
) -> None:
    # CLICKHOUSE_URL empty = unset: the embedded chDB store under DATA_DIR
    relay = launch_relay(fresh_upstream.url, {"CLICKHOUSE_URL": ""})
    seqs = publish(relay, [trade("SQL", i=i) for i in range(3)])
    wait_until(lambda: relay.health()["store"].get("written", 0) >= seqs[-1], 15, "the store to write the events")
    monitor = open_monitor(relay)
    monitor.console.allow(REFUSED.format("400"))  # the bad query and the write, below
    page = monitor.page
    sql = page.get_by_label("Read-only SQL")
    summary = page.locator("#sql-summary")
    page.get_by_role("tab", name="SQL console").click()
    page.get_by_role("button", name="one topic, with a parameter").click()
    page.get_by_label("Parameters (JSON object, optional)").fill('{"topic": "T.SQL"}')
    page.get_by_role("button", name="Run query").click()
    expect(summary).not_to_have_text("Running…", timeout=15_000)  # an answer, either way
    expect(page.locator("#sql-error")).to_be_hidden(timeout=0)
    expect(page.locator("#sql-table-wrap")).to_be_visible(timeout=0)
    expect(page.locator("#sql-table thead th")).to_have_text([re.compile("^seq"), re.compile("^topic"), re.compile("^data")])
    expect(page.locator("#sql-table tbody tr")).to_have_count(3)
    expect(page.locator("#sql-table tbody tr").first).to_contain_text(f"{seqs[-1]}T.SQL")
    expect(summary).to_have_text(re.compile(r"^3 rows · [\d.]+ ms$"))

    page.get_by_label("Parameters (JSON object, optional)").fill("")
    sql.fill("SELECT no_such_column FROM relayhouse.events")
    page.get_by_role("button", name="Run query").click()
    expect(page.locator("#sql-error-title")).to_have_text("Query failed: the query was refused (HTTP 400 BAD REQUEST)")
    expect(page.locator("#sql-error-body")).to_contain_text("no_such_column")
    expect(page.locator("#sql-table-wrap")).to_be_hidden()

    sql.fill("DROP TABLE relayhouse.events")
    page.get_by_role("button", name="Run query").click()
    expect(page.locator("#sql-error-body")).to_contain_text("only read queries are allowed")


def test_clear_cache_empties_it(relay: Relay, open_monitor) -> None:
    monitor = open_monitor(relay)
    page = monitor.page
    publish(relay, [trade("CLEAR", i=i) for i in range(5)])
    page.get_by_role("tab", name="Cache", exact=True).click()
    items = page.locator("#cache-items")
    expect(items).to_have_attribute("data-items", re.compile(r"^[1-9]"))

    page.get_by_role("button", name="Clear cache…").click()
    page.get_by_role("button", name="Yes, clear it").click()
    expect(page.locator("#clear-result")).to_have_text(re.compile(r"^Cleared \d+ events? from the cache\.$"))
    assert relay.get("/cache/stats").json()["items"] == 0
    expect(items).to_have_attribute("data-items", "0")
    expect(page.locator("#relay-cache")).to_have_text("0 events")
    expect(page.locator("#activity")).to_contain_text("Cache cleared")


def test_cache_limits_are_applied(relay: Relay, open_monitor) -> None:
    monitor = open_monitor(relay)
    page = monitor.page
    page.get_by_role("tab", name="Cache", exact=True).click()
    ttl = page.get_by_label("TTL (seconds)")
    expect(ttl).to_have_value(re.compile(r"^\d+$"))
    ttl.fill("1800")
    page.get_by_label("Max items").fill("5000")
    page.get_by_role("button", name="Apply limits").click()
    expect(page.locator("#config-result")).to_have_text("Applied: TTL 1,800 s, at most 5,000 events.")
    assert relay.get("/cache/config").json() == {"ttl_seconds": 1800, "max_items": 5000}

    ttl.fill("0")
    page.get_by_role("button", name="Apply limits").click()
    expect(page.locator("#config-result")).to_have_text("TTL must be a whole number from 1 to 31,536,000.")


# -- tokens, restarts and a failing upstream -----------------------------------


def test_tokens_are_asked_for_once_and_kept_in_the_browser(fresh_upstream: FakeUpstream, launch_relay, open_monitor) -> None:
    relay = launch_relay(fresh_upstream.url, {"API_TOKENS": "tok-1,tok-2", "ADMIN_TOKEN": "adm-1"})
    monitor = open_monitor(relay, wait_live=False)
    monitor.console.allow(REFUSED.format("401"), WS_FAILED)
    page = monitor.page
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#token-title")).to_have_text("API token required")
    page.get_by_label("API token (one of API_TOKENS)").fill("tok-2")
    page.keyboard.press("Enter")
    monitor.wait_live()
    assert page.evaluate("localStorage.getItem('relayhouse.apiToken')") == "tok-2"
    [seq] = publish(relay, trade("AUTH"), token="adm-1")
    expect(monitor.row(seq)).to_be_visible(timeout=2000)

    page.reload()
    monitor.wait_live()
    expect(dialog).to_be_hidden()
    expect(monitor.row(seq)).to_be_visible()  # from the snapshot

    page.get_by_role("tab", name="Cache", exact=True).click()
    page.get_by_role("button", name="Clear cache…").click()
    page.get_by_role("button", name="Yes, clear it").click()
    expect(page.locator("#token-title")).to_have_text("Admin token required")
    page.get_by_label("Admin token (ADMIN_TOKEN)").fill("adm-1")
    page.get_by_role("button", name="Save token").click()
    expect(page.locator("#clear-result")).to_have_text(re.compile(r"^Cleared \d+ events? from the cache\.$"))
    assert page.evaluate("localStorage.getItem('relayhouse.adminToken')") == "adm-1"


def test_reconnects_after_a_relay_restart_and_shows_events_published_meanwhile(
    fresh_upstream: FakeUpstream, launch_relay, open_monitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = launch_relay(fresh_upstream.url)
    monitor = open_monitor(relay)
    monitor.console.allow(CONNECTION_REFUSED, WS_FAILED, REFUSED.format("503"))
    page = monitor.page
    [before] = publish(relay, trade("BEFORE"))
    expect(monitor.row(before)).to_be_visible(timeout=2000)

    relay.send_signal(signal.SIGTERM)
    assert relay.wait_exit(15) == 0
    relay.stop()  # reaps the group; nothing is left running
    expect(page.locator("#link-text")).to_contain_text("Disconnected — reconnecting")
    expect(page.locator("#stream-state")).to_have_text("Disconnected — reconnecting…")
    expect(page.locator("body")).to_have_class("state-bad")

    port = relay.port
    monkeypatch.setattr(support.relay, "free_port", lambda: port)  # come back where the page looks
    relay.start()
    meanwhile = publish(relay, [trade("MEANWHILE", i=i) for i in range(3)])
    for seq in meanwhile:
        # seq restarts in the new epoch (no store), so these may share seqs with old rows
        expect(page.locator(f'#feed-list li.ev[data-topic="T.MEANWHILE"][data-seq="{seq}"]')).to_be_visible(timeout=10_000)
    expect(page.locator("#stream-state")).to_have_text("Live")
    expect(page.locator("#feed-list .marker", has_text="new seq space")).to_be_visible()
    expect(page.locator("#activity")).to_contain_text("Relay restarted: new epoch")
    [after] = publish(relay, trade("AFTER"))
    expect(page.locator(f'#feed-list li.ev[data-topic="T.AFTER"][data-seq="{after}"]')).to_be_visible(timeout=2000)


def test_status_turns_red_when_the_upstream_stops(fresh_upstream: FakeUpstream, launch_relay, open_monitor,
                                                  artifacts: Path) -> None:
    relay = launch_relay(fresh_upstream.url, {"STARTUP_GRACE_S": "0"})
    monitor = open_monitor(relay)
    page = monitor.page
    expect(page.locator("#overall-text")).to_have_text("Healthy")

    fresh_upstream.stop()
    expect(page.locator("#overall-text")).to_have_text("Degraded — upstream disconnected", timeout=5000)
    expect(page.locator("body")).to_have_class("state-bad")
    expect(page.locator("#upstream-badge")).to_have_text("Disconnected")
    expect(page.locator("#group-upstream")).to_have_attribute("data-state", "bad")
    red, green, blue = rgb(page.locator("#overall").evaluate("e => getComputedStyle(e).color"))
    assert red > 180 and green < 120 and blue < 120, (red, green, blue)
    expect(page.locator("#activity")).to_contain_text("Upstream disconnected")
    page.screenshot(path=str(artifacts / "monitor-degraded-1280x800.png"), animations="disabled")

    fresh_upstream.start()
    expect(page.locator("#overall-text")).to_have_text("Healthy", timeout=10_000)


def rgb(css: str) -> tuple[int, int, int]:
    red, green, blue = (int(x) for x in re.findall(r"\d+", css)[:3])
    return red, green, blue


# -- screenshots on the demo feed ------------------------------------------------


def test_demo_feed_streams_and_screenshots_are_saved(launch_relay, open_monitor, artifacts: Path) -> None:
    # UPSTREAM_URL empty = unset: the built-in demo feed, as a new user sees it
    relay = launch_relay("", {"DEMO_RATE": "20"})
    started = time.monotonic()
    desktop = open_monitor(relay)
    page = desktop.page
    expect(page.locator("#overall-text")).to_have_text("Healthy")
    expect(page.locator("#upstream-demo")).to_have_text("demo")
    expect(desktop.rows().nth(39)).to_be_attached(timeout=10_000)
    expect(page.locator("#chart-in")).to_have_attribute("data-samples", re.compile(r"^([6-9]|\d\d+)$"), timeout=15_000)
    assert time.monotonic() - started < 20
    rows = desktop.rows().count()
    assert rows <= 200
    page.screenshot(path=str(artifacts / "monitor-1280x800.png"), animations="disabled")
    page.screenshot(path=str(artifacts / "monitor-1280-full.png"), full_page=True, animations="disabled")
    desktop.context.close()  # one streaming page at a time keeps the run quick

    light = open_monitor(relay, color_scheme="light")
    expect(light.rows().nth(19)).to_be_attached(timeout=10_000)
    expect(light.page.locator("#chart-in")).to_have_attribute("data-samples", re.compile(r"^([3-9]|\d\d+)$"))
    light.page.screenshot(path=str(artifacts / "monitor-1280x800-light.png"), animations="disabled")
    light.context.close()

    phone = open_monitor(relay, viewport=PHONE, is_mobile=True, has_touch=True)
    expect(phone.rows().nth(19)).to_be_attached(timeout=10_000)
    expect(phone.page.locator("#chart-in")).to_have_attribute("data-samples", re.compile(r"^([3-9]|\d\d+)$"))
    overflow = phone.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    # viewport shots: rows out of view are not painted (content-visibility), so a full-page one shows them blank
    phone.page.screenshot(path=str(artifacts / "monitor-390-phone.png"), animations="disabled")
    phone.page.locator("#feed").scroll_into_view_if_needed()
    phone.page.screenshot(path=str(artifacts / "monitor-390-phone-feed.png"), animations="disabled")


def test_the_upstream_panel_lists_the_subscriptions_with_their_clients(launch_relay, open_monitor) -> None:
    fake = FakeUpstream(polygon=True).start()
    try:
        relay = launch_relay(fake, {"UPSTREAM_SUBSCRIBE": "polygon", "UPSTREAM_TOPICS": "AM.SPY"})
        monitor = open_monitor(relay)  # its own /ws (topics *) changes nothing upstream
        page = monitor.page
        expect(page.locator("#upstream-subs")).to_have_text("AM.SPY ×0")
        from support.clients import WsClient
        clients = [WsClient(relay.ws_url("/ws", topics="T.AAPL,Q.*", snapshot=0)) for _ in range(2)]
        try:
            expect(page.locator("#upstream-subs")).to_have_text("AM.SPY ×0, Q.* ×2, T.AAPL ×2", timeout=10_000)
        finally:
            for client in clients:
                client.close()
    finally:
        fake.stop()


def test_the_subscriptions_row_is_hidden_when_the_relay_does_not_manage_them(relay: Relay, open_monitor) -> None:
    page = open_monitor(relay).page
    expect(page.locator("#upstream-badge")).to_have_text("Connected")
    expect(page.locator("#upstream-subs")).to_be_hidden()


def test_the_rate_control_thins_the_feed_to_the_newest_value_per_topic_and_back(relay: Relay, open_monitor) -> None:
    monitor = open_monitor(relay)
    page = monitor.page
    page.get_by_label("Rate", exact=True).select_option("1")
    assert "max_hz=1" in page.url
    wait_until(lambda: relay.health()["clients_by_mode"]["rate"] >= 1, 5, "the page to ask for 1 event/s per topic")
    expect(page.locator("#stream-state")).to_have_text("Live · at most 1 / s per topic")

    seqs = publish(relay, [trade("RATED", n=n) for n in range(5)])  # one batch: only the newest goes out
    expect(monitor.row(seqs[-1])).to_be_visible(timeout=3000)
    for seq in seqs[:-1]:
        expect(monitor.row(seq)).to_have_count(0)
    expect(page.locator("#stream-conflated-count")).to_have_text("4")
    expect(page.locator("#relay-clients")).to_contain_text("rate 1", timeout=10_000)

    page.get_by_label("Rate", exact=True).select_option("")
    wait_until(lambda: relay.health()["clients_by_mode"]["rate"] == 0, 5, "the page to ask for every event")
    every = publish(relay, [trade("RATED", n=n) for n in range(3)])
    for seq in every:
        expect(monitor.row(seq)).to_be_visible(timeout=3000)
    assert "max_hz" not in page.url


# -- the clients view ----------------------------------------------------------


def test_the_clients_view_lists_a_rated_client_with_its_mode_and_rate_and_shows_patterns_as_text(
        relay: Relay, open_monitor) -> None:
    from support.clients import WsClient

    hostile = "<img src=x onerror=document.body.dataset.pwned=1>"
    other = WsClient(relay.ws_url("/ws", topics=f"T.RATED,{hostile}", snapshot=0, max_hz=2))
    try:
        other.read_snapshot()
        monitor = open_monitor(relay)
        page = monitor.page
        page.get_by_role("tab", name="Clients", exact=True).click()
        table = page.get_by_role("table", name="Clients of this worker, slowest first")
        rated = table.get_by_role("row").filter(has_text="T.RATED")
        expect(rated).to_have_count(1)
        expect(rated.get_by_role("cell").nth(0)).to_have_text("rate")
        expect(rated.get_by_role("cell").nth(1)).to_have_text("2 / s per topic")
        expect(rated.get_by_role("cell").nth(2)).to_have_text("ws")
        expect(rated.get_by_role("cell").nth(3)).to_have_text(f"T.RATED, {hostile}")  # as text, never as HTML
        assert table.locator("img").count() == 0 and page.evaluate("document.body.dataset.pwned") is None
        expect(table.get_by_role("columnheader")).to_have_text(
            ["Mode", "Rate", "Transport", "Topics", "Queued", "Connected for"])
        body = relay.get("/clients").json()
        summary = page.locator("#clients-summary")
        expect(summary).to_have_text(re.compile(rf"^Showing (\d+) of \1 clients · worker {body['worker']} · live \d+ · rate \d+"))

        # the page's own stream asks for a rate: its row follows within a refresh
        page.get_by_label("Rate", exact=True).select_option("0.2")
        expect(table.get_by_role("row").filter(has_text="1 / 5 s per topic")).to_have_count(1, timeout=8000)
    finally:
        other.close()


def test_the_clients_view_says_how_many_it_shows_of_how_many_and_when_there_are_none(
        relay: Relay, open_monitor) -> None:
    monitor = open_monitor(relay)
    page = monitor.page
    row = {"id": "a1b2c3d4e5f6", "transport": "sse", "mode": "conflated", "max_hz": None, "on_slow": "conflate",
           "topics": {"patterns": ["Q.*"], "count": 40}, "connected_s": 3725.2, "queued_events": 12,
           "queued_bytes": 2048}
    answers = iter([
        {"worker": 77, "total": 2345, "by_mode": {"live": 2000, "rate": 300, "conflated": 45}, "groups_total": 0,
         "groups": [], "clients": [row]},
        {"worker": 78, "total": 0, "by_mode": {"live": 0, "rate": 0, "conflated": 0}, "groups_total": 0,
         "groups": [], "clients": []},
    ])
    page.route("**/clients?*", lambda route: route.fulfill(json=next(answers)))
    page.get_by_role("tab", name="Clients", exact=True).click()
    summary = page.locator("#clients-summary")
    expect(summary).to_have_text("Showing 1 of 2,345 clients · worker 77 · live 2,000 · rate 300 · conflated 45")
    cells = page.locator("#clients-rows tr").first.get_by_role("cell")
    expect(cells).to_have_text(["conflated", "every event", "sse", "Q.* +39 more", "12 ev · 2.0 KiB", "1 h 2 min"])
    expect(page.locator("#clients-empty")).to_be_hidden()

    page.get_by_role("button", name="Refresh", exact=True).click()
    expect(summary).to_have_text("Showing 0 of 0 clients · worker 78")
    expect(page.locator("#clients-empty")).to_have_text("No client is connected to this worker.")
    expect(page.locator("#clients-table-wrap")).to_be_hidden()
