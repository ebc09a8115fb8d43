"""The ClickHouse test harness runs a real server; handlers.sql holds against the real 18.16 parser and chDB.

The harness half proves what store tests rely on: a server on free ports that
answers, keeps its data across a restart on the same port, and refuses
connections while stopped. The SQL half round-trips hostile values through
both engines the relay supports: Debian's clickhouse-server 18.16 (through
clickhouse-driver) and embedded chDB (current ClickHouse).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chdb.session
import pytest
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import clickhouse as clickhouse_support
from support.clickhouse import SCRIPT, ClickHouseServer, free_port, port_refuses

from handlers import jsonx
from handlers.sql import SqlError, check_read_only_sql, json_safe_rows, render_params, to_server_params

# The session-wide server fixture; drop this line once tests/integration/conftest.py imports it.
clickhouse_server = clickhouse_support.clickhouse_server

# Round trips run a few hundred examples against each engine: a few seconds.
ROUND_TRIP = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

NASTY = list("\\'\"`\x00\n\r\t\x08\x0c\x1b\x7f%$?{}:;-/*#") + [
    "\\'", "''", "\\\\", "--", "/*", "*/", "$$", "%(x)s", "%%", "\u2028", "\ufeff", "\U0010ffff", "\x85", "é", "😀",
]
texts = st.lists(st.one_of(st.sampled_from(NASTY), st.characters(codec="utf-8")), max_size=20).map("".join)


# -- the harness ---------------------------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ClickHouseServer]:
    """A server of the test's own, for tests that stop or restart it."""
    server = ClickHouseServer(tmp_path / "clickhouse").start()
    yield server
    server.stop()


def test_the_session_server_answers_and_its_url_works_once_the_database_exists(clickhouse_server):
    client = clickhouse_server.client()
    try:
        assert client.execute("SELECT 1") == [(1,)]
        assert client.execute("SELECT timezone()")[0][0] in ("UTC", "Etc/UTC")
        client.execute(f"CREATE DATABASE IF NOT EXISTS {clickhouse_server.database}")
    finally:
        client.disconnect()
    assert clickhouse_server.url == f"clickhouse://default:@127.0.0.1:{clickhouse_server.port}/{clickhouse_server.database}"
    via_url = Client.from_url(clickhouse_server.url)
    try:
        assert via_url.execute("SELECT currentDatabase()") == [(clickhouse_server.database,)]
    finally:
        via_url.disconnect()
    assert clickhouse_server.fresh_url() != clickhouse_server.fresh_url()


def test_a_restart_keeps_the_port_and_the_data(own_server):
    port = own_server.port
    client = own_server.client()
    client.execute("CREATE DATABASE kept")
    client.execute("CREATE TABLE kept.t (seq UInt64) ENGINE = MergeTree ORDER BY seq")
    client.execute("INSERT INTO kept.t (seq) VALUES", [(1,), (2,), (3,)])
    client.disconnect()

    own_server.restart()

    assert own_server.port == port and own_server.running
    client = own_server.client()
    try:
        assert client.execute("SELECT count(), sum(seq) FROM kept.t") == [(3, 6)]
    finally:
        client.disconnect()


def test_a_stopped_server_refuses_connections_until_it_starts_again(own_server):
    client = own_server.client()
    client.execute("CREATE TABLE default.t (x UInt8) ENGINE = TinyLog")
    client.execute("INSERT INTO default.t (x) VALUES", [(7,)])

    own_server.stop()

    assert not own_server.running
    assert port_refuses(own_server.port)
    with pytest.raises((ch_errors.NetworkError, ch_errors.SocketTimeoutError, EOFError, OSError)):
        client.execute("SELECT 1")
    client.disconnect()

    own_server.start()
    client = own_server.client()
    try:
        assert client.execute("SELECT x FROM default.t") == [(7,)]
    finally:
        client.disconnect()


def test_the_script_is_idempotent(tmp_path: Path):
    directory, port, http_port = tmp_path / "ch", str(free_port()), str(free_port())

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=90, check=False)

    try:
        first, again = script("start", str(directory), port, http_port), script("start", str(directory), port, http_port)
        assert first.returncode == 0, first.stderr
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        stopped, again = script("stop", str(directory)), script("stop", str(directory))
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert again.returncode == 0 and "not running" in again.stdout
    assert script("install").returncode == 0  # already installed: says so, changes nothing


def test_a_start_that_fails_exits_non_zero_with_the_log(tmp_path: Path, clickhouse_server):
    # the session server already holds this port
    result = subprocess.run(["bash", str(SCRIPT), "start", str(tmp_path / "ch"), str(clickhouse_server.port), str(free_port())],
                            capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode != 0
    assert "already answers" in result.stderr


def test_relay_reader_reads_and_sets_limits_but_cannot_write(clickhouse_server):
    reader = clickhouse_server.client(user="relay_reader")
    try:
        assert reader.execute("SELECT 1", settings={"max_execution_time": 5, "max_result_rows": 10}) == [(1,)]
        with pytest.raises(ch_errors.ServerException) as refused:
            reader.execute("CREATE TABLE default.nope (x UInt8) ENGINE = Memory")
        assert refused.value.code == 164  # READONLY
    finally:
        reader.disconnect()


# -- handlers.sql against both engines ----------------------------------------------


@pytest.fixture
def server(clickhouse_server) -> Iterator[Client]:
    """A driver connection to the session server, closed before the conftest counts sockets."""
    client = clickhouse_server.client()
    yield client
    client.disconnect()


@pytest.fixture(scope="module")
def chdb_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    session = chdb.session.Session(str(tmp_path_factory.mktemp("chdb")))
    yield session
    session.close()


def on_chdb(session: Any, sql: str, params: dict[str, str] | None = None) -> list[Any]:
    """The first row of a query on chDB, through its JSON output (chDB 4.4 leaves 64-bit integers unquoted)."""
    result = session.query(sql, "JSONCompact", params=params) if params is not None else session.query(sql, "JSONCompact")
    return json.loads(result.bytes())["data"][0]


@ROUND_TRIP
@given(text=texts)
@example(text="'); DROP TABLE t; --")
@example(text="\\")
@example(text="a\\'b''c")
@example(text="*/ SELECT 1 /*")
@example(text="x\x00y\n\rz")
def test_any_text_renders_to_a_literal_that_reads_back_unchanged(server, chdb_session, text):
    sql = render_params("SELECT %(t)s AS a, [%(t)s, %(t)s] AS b, length(%(t)s) AS n", {"t": text})
    expected_bytes = len(text.encode())
    assert server.execute(sql) == [(text, [text, text], expected_bytes)]
    assert on_chdb(chdb_session, sql) == [text, [text, text], expected_bytes]


@ROUND_TRIP
@given(text=texts, items=st.lists(texts, max_size=4))
def test_any_text_binds_as_a_chdb_query_parameter_unchanged(chdb_session, text, items):
    sql, values = to_server_params("SELECT %(t)s AS a, %(items)s AS b, length(%(t)s) AS n",
                                   {"t": text, "items": items})
    assert on_chdb(chdb_session, sql, values) == [text, items, len(text.encode())]


@ROUND_TRIP
@given(number=st.floats(allow_nan=False, allow_infinity=False))
@example(number=5e-324)
@example(number=-0.0)
@example(number=1.7976931348623157e308)
@example(number=2.2250738585072014e-308)
def test_any_finite_float_renders_exactly(server, chdb_session, number):
    sql = render_params("SELECT %(x)s", {"x": number})
    (got,), = server.execute(sql)
    assert got == number and math.copysign(1.0, got) == math.copysign(1.0, number)
    bits = struct.unpack("<Q", struct.pack("<d", number))[0]
    # JSON would lose -0.0 and print big floats as integers: compare the bits
    assert int(on_chdb(chdb_session, f"SELECT reinterpretAsUInt64(toFloat64({sql[len('SELECT '):]}))")[0]) == bits


@ROUND_TRIP
@given(number=st.integers(min_value=-(2**63), max_value=2**64 - 1))
@example(number=-(2**63))
@example(number=2**64 - 1)
@example(number=-1)
def test_any_64_bit_integer_renders_exactly(server, chdb_session, number):
    sql = render_params("SELECT %(n)s, 1 -%(n)s", {"n": number})  # `-` then a negative: no `--` comment
    got = server.execute(sql)[0]
    assert got[0] == number and len(got) == 2
    assert int(on_chdb(chdb_session, sql)[0]) == number
    sql, values = to_server_params("SELECT %(n)s", {"n": number})
    assert int(on_chdb(chdb_session, sql, values)[0]) == number


def test_integers_beyond_64_bits_are_still_literals_read_as_floats(server, chdb_session):
    for number in (2**64, -(2**63) - 1, 10**30):
        sql = render_params("SELECT %(n)s", {"n": number})
        assert server.execute(sql)[0][0] == pytest.approx(float(number))
        assert float(on_chdb(chdb_session, sql)[0]) == pytest.approx(float(number))


def arrays(leaf: st.SearchStrategy[Any], depth: int, min_size: int = 0) -> st.SearchStrategy[list[Any]]:
    """Arrays ClickHouse 18.16 can type: one leaf kind, nulls only among leaves, and no `[]` beside
    `[[]]` (18.16 finds no common type for empty arrays of different depths)."""
    if depth == 0:
        return st.lists(st.one_of(st.none(), leaf), min_size=min_size, max_size=4)
    return st.lists(arrays(leaf, depth - 1, min_size=1 if depth > 1 else 0), min_size=min_size, max_size=3)


LEAVES = st.sampled_from([st.integers(min_value=0, max_value=2**31), st.booleans(), texts])


@ROUND_TRIP
@given(value=st.tuples(LEAVES, st.integers(min_value=0, max_value=2)).flatmap(lambda pick: arrays(*pick)))
def test_nested_lists_render_as_arrays(server, chdb_session, value):
    sql = render_params("SELECT %(v)s", {"v": value})
    expected = _as_clickhouse(value)
    assert list(server.execute(sql)[0]) == [expected]
    assert on_chdb(chdb_session, sql) == [expected]


def _as_clickhouse(value: Any) -> Any:
    """Booleans render as 1/0."""
    return [_as_clickhouse(v) for v in value] if isinstance(value, list) else int(value) if isinstance(value, bool) else value


def test_other_values_render_the_same_on_both_engines(server, chdb_session):
    params = {"none": None, "yes": True, "no": False, "day": dt.date(2024, 2, 29),
              "moment": dt.datetime(2024, 2, 29, 23, 59, 58),
              "aware": dt.datetime(2024, 3, 1, 8, 59, 58, tzinfo=dt.timezone(dt.timedelta(hours=9))),
              "empty": [], "tuple": (1, 2)}
    sql = render_params(
        "SELECT %(none)s IS NULL, %(yes)s, %(no)s, toDate(%(day)s), toDateTime(%(moment)s, 'UTC'), "
        "toDateTime(%(aware)s, 'UTC'), length(%(empty)s), %(tuple)s",
        params,
    )
    row = server.execute(sql)[0]
    moment = dt.datetime(2024, 2, 29, 23, 59, 58)
    assert row[:4] == (1, 1, 0, dt.date(2024, 2, 29))
    assert [v.replace(tzinfo=None) for v in row[4:6]] == [moment, moment]
    assert row[6:] == (0, [1, 2])
    assert on_chdb(chdb_session, sql) == [1, 1, 0, "2024-02-29", "2024-02-29 23:59:58", "2024-02-29 23:59:58", 0, [1, 2]]


def test_server_parameters_bind_every_supported_type_on_chdb(chdb_session):
    params = {"none": None, "yes": True, "big": 2**64 - 1, "huge": -(2**100), "f": -1.5e-320, "day": dt.date(2024, 2, 29),
              "moment": dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.timezone.utc),
              "nested": [["a", None], []], "mixed": [1, 2.5], "flags": [True, False], "empty": []}
    sql, values = to_server_params(", ".join(f"%({name})s" for name in params).join(("SELECT ", "")), params)
    row = on_chdb(chdb_session, sql, values)
    assert row == [None, True, 2**64 - 1, -(2**100), -1.5e-320, "2024-02-29",
                   "2024-02-29 23:59:58.123456", [["a", None], []], [1, 2.5], [True, False], []]


def test_history_style_filters_bind_on_chdb_and_injection_stays_data(chdb_session):
    chdb_session.query("CREATE TABLE IF NOT EXISTS default.ev (seq UInt64, topic String) ENGINE = MergeTree ORDER BY seq")
    chdb_session.query("INSERT INTO default.ev VALUES (1, 'T.AAPL'), (2, 'Q.MSFT'), (3, 'x'' OR 1=1 --')")
    sql, values = to_server_params(
        "SELECT groupArray(seq) FROM (SELECT seq FROM default.ev WHERE topic IN %(topics)s AND seq > %(since)s ORDER BY seq)",
        {"topics": ["T.AAPL", "x' OR 1=1 --"], "since": 0},
    )
    assert on_chdb(chdb_session, sql, values) == [[1, 3]]


def test_what_the_lexer_calls_strings_and_comments_the_engines_do_too(server, chdb_session):
    # each query is vetted, then must run on both engines with the result shown
    cases = {
        "SELECT 'a\\';b', 'c''d' -- ; SELECT 2\n": ["a';b", "c'd"],
        "SELECT `x;y` FROM (SELECT 1 AS `x;y`) /* ; FORMAT */ ;": [1],
        'SELECT "a\\"b" FROM (SELECT 2 AS `a"b`)': [2],
        "SELECT 3 // SETTINGS\n": [3],
        "SELECT concat('a', '-', 'b'), 100 % 7": ["a-b", 2],
    }
    for sql, expected in cases.items():
        clean = check_read_only_sql(sql)
        assert list(server.execute(clean)[0]) == expected, sql
        assert on_chdb(chdb_session, clean) == expected, sql


def test_placeholders_render_then_vet_then_run(server, chdb_session):
    sql = check_read_only_sql(render_params(
        "SELECT %(a)s AS a, count() FROM system.one WHERE %(a)s LIKE 'x%%' -- note: %%\n;", {"a": "x'; DROP TABLE t --"}))
    assert server.execute(sql) == [("x'; DROP TABLE t --", 1)]
    assert on_chdb(chdb_session, sql) == ["x'; DROP TABLE t --", 1]


def test_settings_and_format_clauses_that_both_engines_accept_are_refused(server, chdb_session):
    for sql in ("SELECT 1 SETTINGS max_execution_time = 1000", "SELECT 1 FORMAT TabSeparated"):
        server.execute(sql)  # both engines would take it ...
        chdb_session.query(sql)
        with pytest.raises(SqlError):  # ... the relay does not
            check_read_only_sql(sql)


def test_driver_results_become_json_the_contract_promises(server):
    rows, columns = server.execute(
        "SELECT toUInt64(18446744073709551615), toInt64(-9007199254740993), 9007199254740992, "
        "toDecimal64(1.5, 3), toDecimal128('12345678901234567890.123', 3), nan, -inf, "
        "toDateTime('2024-02-29 23:59:58', 'Asia/Tokyo'), toDate('2024-02-29'), "
        "toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0'), [nan, 1.5], tuple(1, 'a'), CAST(NULL AS Nullable(UInt8)), "
        "toFixedString('ab', 2), CAST('a' AS Enum8('a' = 1))",
        with_column_types=True,
    )
    out = json_safe_rows(columns, rows)
    assert out == [["18446744073709551615", "-9007199254740993", 9007199254740992, 1.5, "12345678901234567890.123",
                    None, None, "2024-02-29 23:59:58", "2024-02-29", "61f0c404-5cb3-11e7-907b-a6006ad3dba0",
                    [None, 1.5], [1, "a"], None, "ab", "a"]]
    assert jsonx.loads(jsonx.dumps(out)) == out
