"""Settings are built from a plain mapping; every bad variable is reported at once."""

import pytest

from webapp.settings import Settings, SettingsError


def test_an_empty_environment_gives_the_contract_defaults():
    s = Settings.from_env({})
    assert (s.port, s.web_concurrency, s.upstream_url, s.topic_fields) == (8000, 1, None, ("ev", "sym"))
    assert (s.cache_max_items, s.cache_ttl_seconds, s.data_dir) == (10_000, 3600, "./data")
    assert (s.ws_queue_max_events, s.ws_queue_max_bytes) == (10_000, 8_388_608)
    assert (s.query_timeout_s, s.query_max_rows) == (10, 10_000)
    assert s.api_tokens == () and s.admin_token is None and s.store_backend == "chdb"


def test_values_are_parsed_into_their_types():
    s = Settings.from_env({
        "PORT": "9001", "UPSTREAM_URL": "wss://socket.polygon.io/stocks",
        "UPSTREAM_INIT": '[{"action":"auth","params":"K"},{"action":"subscribe","params":"T.*"}]',
        "UPSTREAM_HEADERS": '{"X-Key": "abc"}', "TOPIC_FIELDS": "ev, sym ,x",
        "API_TOKENS": "a, b,,", "CLICKHOUSE_URL": "none",
    })
    assert s.port == 9001
    assert s.upstream_init == ({"action": "auth", "params": "K"}, {"action": "subscribe", "params": "T.*"})
    assert s.upstream_headers == (("X-Key", "abc"),)
    assert s.topic_fields == ("ev", "sym", "x")
    assert s.api_tokens == ("a", "b")
    assert s.store_backend == "none"


def test_a_clickhouse_url_selects_the_server_backend():
    assert Settings.from_env({"CLICKHOUSE_URL": "clickhouse://u:p@db:9000/relay"}).store_backend == "clickhouse"


def test_every_bad_variable_is_named_in_one_error():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({
            "PORT": "eighty", "UPSTREAM_URL": "http://example/feed", "UPSTREAM_INIT": "[not json",
            "UPSTREAM_HEADERS": "[1]", "CACHE_MAX_ITEMS": "0", "CLICKHOUSE_URL": "mysql://x",
            "REDIS_URL": "http://x", "LOG_LEVEL": "loud",
        })
    named = [p.split(":")[0] for p in caught.value.problems]
    assert named == ["PORT", "UPSTREAM_URL", "UPSTREAM_INIT", "UPSTREAM_HEADERS", "CACHE_MAX_ITEMS",
                     "CLICKHOUSE_URL", "REDIS_URL", "LOG_LEVEL"]
    assert str(caught.value).startswith("invalid configuration:")


def test_inconsistent_backoff_bounds_are_refused():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"UPSTREAM_BACKOFF_MIN_MS": "5000", "UPSTREAM_BACKOFF_MAX_MS": "100"})
    assert caught.value.problems == ["UPSTREAM_BACKOFF_MIN_MS: larger than UPSTREAM_BACKOFF_MAX_MS"]


def test_blank_values_mean_unset():
    assert Settings.from_env({"PORT": " ", "UPSTREAM_URL": ""}).port == 8000


def test_every_setting_is_documented_with_its_variable():
    names = [name for name, _default, doc in Settings.documentation() if doc]
    assert len(names) == len(set(names)) == len(Settings.documentation())


def test_enrichment_sql_is_checked_at_start():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"ENRICH_SQL": "DELETE FROM t WHERE topic = %(topic)s"})
    assert caught.value.problems[0].startswith("ENRICH_SQL:")
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"ENRICH_SQL": "SELECT %(sym)s"})
    assert caught.value.problems == ["ENRICH_SQL: only %(topic)s can be filled, not sym"]
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"ENRICH_SQL": "SELECT 1", "CLICKHOUSE_URL": "none"})
    assert caught.value.problems == ["ENRICH_SQL: needs a store (CLICKHOUSE_URL is none, or unset with REDIS_URL)"]
    assert Settings.from_env({"ENRICH_SQL": "SELECT count() FROM t WHERE topic = %(topic)s"}).enrich_sql


def test_a_cluster_without_a_clickhouse_server_runs_without_persistence():
    # the embedded chDB store is one process's files; several workers cannot share it
    assert Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}).store_backend == "none"
    both = Settings.from_env({"REDIS_URL": "redis://r:6379/0", "CLICKHOUSE_URL": "clickhouse://u:p@h:9000/d"})
    assert both.store_backend == "clickhouse"


def test_upstream_subscriptions_and_token_topics_are_parsed():
    s = Settings.from_env({"UPSTREAM_SUBSCRIBE": "polygon", "UPSTREAM_TOPICS": "T.SPY, Q.*",
                           "UPSTREAM_UNSUBSCRIBE_DELAY_MS": "250", "API_TOKENS": "a,b",
                           "TOKEN_TOPICS": '{"a": ["T.*", "Q.AAPL"]}'})
    assert (s.upstream_subscribe, s.upstream_topics, s.upstream_unsubscribe_delay_ms) == ("polygon", ("T.SPY", "Q.*"), 250)
    assert s.topic_scope("a") == ("T.*", "Q.AAPL")
    assert s.topic_scope("b") is None and s.topic_scope(None) is None
    assert Settings.from_env({}).upstream_subscribe is None
    assert Settings.from_env({"UPSTREAM_SUBSCRIBE": "none"}).upstream_subscribe is None


@pytest.mark.parametrize(("env", "problem"), [
    ({"UPSTREAM_SUBSCRIBE": "yes"}, "UPSTREAM_SUBSCRIBE: expected polygon"),
    ({"UPSTREAM_SUBSCRIBE": "polygon", "UPSTREAM_TOPICS": "T.AA*"}, "UPSTREAM_TOPICS: expected patterns like T.AAPL"),
    ({"UPSTREAM_TOPICS": "T.SPY"}, "UPSTREAM_TOPICS: needs UPSTREAM_SUBSCRIBE=polygon"),
    ({"UPSTREAM_UNSUBSCRIBE_DELAY_MS": "-1"}, "UPSTREAM_UNSUBSCRIBE_DELAY_MS: -1 is outside"),
    ({"API_TOKENS": "a", "TOKEN_TOPICS": "{a: 1}"}, "TOKEN_TOPICS: malformed JSON"),
    ({"API_TOKENS": "a", "TOKEN_TOPICS": '["T.*"]'}, "TOKEN_TOPICS: expected a JSON object"),
    ({"API_TOKENS": "a", "TOKEN_TOPICS": '{"a": []}'}, "TOKEN_TOPICS: entry 1: expected a non-empty list"),
    ({"API_TOKENS": "a", "TOKEN_TOPICS": '{"a": ["T*x"]}'}, "TOKEN_TOPICS: entry 1: '*' may only end"),
    ({"API_TOKENS": "a", "TOKEN_TOPICS": '{"secret-b": ["T.*"]}'}, "TOKEN_TOPICS: 1 of its tokens are not in API_TOKENS"),
])
def test_bad_subscription_settings_stop_start_up_with_a_clear_message(env, problem):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems
    assert "secret-b" not in str(caught.value)  # a token is never shown


def test_a_lease_too_short_to_leave_a_leader_a_second_for_an_insert_is_refused():
    with pytest.raises(SettingsError, match="LEADER_LEASE_MS: 1000 is outside 1500"):
        Settings.from_env({"LEADER_LEASE_MS": "1000"})
    assert Settings.from_env({"LEADER_LEASE_MS": "1500"}).leader_lease_ms == 1500
