"""/query reads the relay's own database and nothing else (contract §10, issue 12), on embedded chDB (the
README's default) and on a ClickHouse server: no table function reaches a host file, a URL or another
server, in any spelling or nesting, and no SETTINGS in the text lifts a limit.

Two lines are tested apart:
- the engine's: the stores' /query session (readonly=1) run directly, without the text check — every
  table function the engine lists is refused by the engine itself (READONLY / ACCESS_DENIED);
- both together: the hostile corpus over HTTP, answered with a JSON 4xx every time.
In both, the file functions point at a marker file the test wrote and the network functions at a
listener the test runs: the marker must never come back, and the listener must never hear a byte.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.clickhouse import ClickHouseServer, clickhouse_server  # noqa: F401
from support.relay import Relay
from support.waiting import wait_until

from handlers.sql import ALLOWED_TABLE_FUNCTIONS, REFUSAL_CODES
from webapp.store.base import QueryRefused, QueryTimedOut, StoreError

MARKER = "relayhouse-sandbox-marker-5d1f0c"
MAX_BYTES = 200_000  # QUERY_MAX_BYTES of the module's relays


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection made to it (SSRF detector)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            self.connections.append(peer)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    lis = Listener()
    yield lis
    lis.close()


@pytest.fixture(scope="module")
def marker_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sandbox") / "marker.txt"
    path.write_text(MARKER + "\n")
    return path


def call_args(name: str, marker: Path, port: int) -> str:
    """Arguments that would make `name` read the marker or connect to the listener, were it allowed."""
    lowered = name.lower()
    if lowered.startswith("file") or lowered in ("filesystem", "deltalakelocal", "iceberglocal", "paimonlocal"):
        return f"'{marker}', 'LineAsString'"
    if lowered.startswith(("remote", "cluster", "mysql", "postgresql", "mongodb", "redis", "arrowflight")):
        return f"'127.0.0.1:{port}', 'db', 'tbl', 'user', 'password'"
    if lowered in ("executable", "executablepool"):
        return f"'cat {marker}', 'LineAsString', 'x String'"
    return f"'http://127.0.0.1:{port}/{name}', 'LineAsString'"


def spellings(name: str) -> list[str]:
    mixed = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(name))
    return [name, f"`{name}`", f'"{name}"', mixed]


POSITIONS = {
    "top": "SELECT * FROM {call}",
    "subquery": "SELECT * FROM (SELECT * FROM {call})",
    "with": "WITH (SELECT count() FROM {call}) AS c SELECT c",
    "cte": "WITH t AS (SELECT * FROM {call}) SELECT * FROM t",
    "in": "SELECT 1 FROM system.one WHERE 1 IN (SELECT count() FROM {call})",
    "join": "SELECT * FROM system.one AS a ALL INNER JOIN (SELECT 0 AS dummy FROM {call}) AS b USING dummy",
    "function": "SELECT {call}",
    "comment": "SELECT * FROM {name} /* between */ ({args})",
}
OVERRIDES = ["", " SETTINGS readonly = 0", " SETTINGS max_execution_time = 0"]


def corpus(names: frozenset[str], marker: Path, port: int) -> list[str]:
    out = []
    for name in sorted(names - ALLOWED_TABLE_FUNCTIONS, key=str.lower):
        if name.lower() in ALLOWED_TABLE_FUNCTIONS:
            continue
        args = call_args(name, marker, port)
        for spelled in spellings(name):
            for position in POSITIONS.values():
                for override in OVERRIDES:
                    out.append(position.format(call=f"{spelled}({args})", name=spelled, args=args) + override)
    return out


# -- the two backends ------------------------------------------------------------------------------


def chdb_table_functions() -> frozenset[str]:
    import chdb

    return frozenset(chdb.query("SELECT name FROM system.table_functions", "CSV").bytes().decode().replace('"', "").split())


@pytest.fixture(scope="module", params=["chdb", "clickhouse"])
def backend(request, upstream, clickhouse_server: ClickHouseServer,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Relay, frozenset[str]]]:
    """A relay on the README's defaults (no API_TOKENS, chDB) or on the ClickHouse server, and the names the
    engine lists in system.table_functions."""
    if request.param == "chdb":
        relay = Relay(tmp_path_factory.mktemp("sandbox-chdb"), upstream.url,
                      {"QUERY_TIMEOUT_S": "3", "QUERY_MAX_BYTES": str(MAX_BYTES)})
        relay.settings.pop("CLICKHOUSE_URL", None)  # unset: the embedded chDB store, as `make run` has it
        relay.settings.pop("API_TOKENS", None)
        names = chdb_table_functions()
    else:
        relay = Relay(tmp_path_factory.mktemp("sandbox-ch"), upstream.url,
                      {"CLICKHOUSE_URL": clickhouse_server.fresh_url(), "QUERY_TIMEOUT_S": "3",
                       "QUERY_MAX_BYTES": str(MAX_BYTES)})
        names = server_table_functions(clickhouse_server)
    relay.start()
    upstream.emit([{"ev": "T", "sym": sym, "p": 100 + i, "s": i} for i, sym in enumerate(["AAPL", "MSFT", "NVDA"] * 3)])
    wait_until(lambda: query(relay, "SELECT count() FROM relayhouse.events" if request.param == "chdb"
                             else f"SELECT count() FROM {relay.settings['CLICKHOUSE_URL'].rsplit('/', 1)[1]}.events"
                             ).status_code == 200, 30, "/query answering")
    yield request.param, relay, names
    relay.stop()


def query(relay: Relay, sql: str) -> requests.Response:
    return relay.request("POST", "/query", json={"sql": sql}, timeout=30)


def db_name(kind: str, relay: Relay) -> str:
    return "relayhouse" if kind == "chdb" else relay.settings["CLICKHOUSE_URL"].rsplit("/", 1)[1]


# -- both lines, over HTTP ---------------------------------------------------------------------------


def test_every_table_function_in_every_spelling_and_nesting_is_refused_with_a_json_4xx(backend, marker_file,
                                                                                     listener):
    kind, relay, names = backend
    assert len(names) >= 10, names  # the engine's list, not an empty one
    hostile = corpus(names, marker_file, listener.port)
    session = requests.Session()
    bad = []
    for sql in hostile:
        response = session.post(relay.url + "/query", json={"sql": sql}, timeout=30)
        if not (400 <= response.status_code < 500) or MARKER in response.text \
                or not response.headers.get("Content-Type", "").startswith("application/json") \
                or "error" not in response.json():
            bad.append((sql, response.status_code, response.text[:200]))
    session.close()
    assert not bad, f"{len(bad)} of {len(hostile)} hostile queries were not refused with a JSON 4xx: {bad[:5]}"
    assert listener.connections == [], f"the relay connected to the test's listener: {listener.connections[:5]}"


def test_ordinary_analytics_on_the_events_table_still_work(backend):
    kind, relay, _ = backend
    db = db_name(kind, relay)
    wait_until(lambda: query(relay, f"SELECT count() FROM {db}.events").json()["rows"][0][0] >= 3, 30,
               "a few events stored")
    queries = [
        f"SELECT topic, count(), max(seq) FROM {db}.events GROUP BY topic ORDER BY topic",
        f"SELECT count() FROM {db}.events AS e ALL INNER JOIN (SELECT number AS seq FROM system.numbers LIMIT 1000) "
        "AS n USING seq",
        "SELECT number FROM system.numbers LIMIT 5",
        "SELECT sum(number) FROM system.one ARRAY JOIN range(10) AS number",
    ]
    if kind == "chdb":  # current releases: numbers() and window functions; 18.16 has neither in readonly=1
        queries += [
            f"SELECT seq, row_number() OVER (PARTITION BY topic ORDER BY seq) FROM {db}.events ORDER BY seq LIMIT 5",
            "SELECT count() FROM numbers(1000) AS a JOIN numbers(10) AS b ON a.number = b.number",
        ]
    for sql in queries:
        response = query(relay, sql)
        assert response.status_code == 200, (sql, response.text)


def test_the_servers_own_listings_are_refused_and_the_relays_tables_are_listed(backend):
    """SHOW PROCESSLIST answered 200 with other callers' running statements (a /history topic among them)."""
    kind, relay, _ = backend
    db = db_name(kind, relay)
    for sql in ["SHOW PROCESSLIST", "SHOW TABLES FROM system", "SHOW DATABASES", "SHOW GRANTS",
                "SHOW COLUMNS FROM processes FROM system", "DESC TABLE system.processes", "EXISTS TABLE system.one"]:
        response = query(relay, sql)
        assert response.status_code == 400, (sql, response.status_code, response.text)
        assert "error" in response.json()
    for sql in ["SHOW TABLES", f"SHOW TABLES FROM {db}"]:
        response = query(relay, sql)
        assert response.status_code == 200, (sql, response.text)
        assert ["events"] in response.json()["rows"], (sql, response.text)
    response = query(relay, f"DESCRIBE TABLE {db}.events")
    assert response.status_code == 200 and ["seq", "UInt64"] in [row[:2] for row in response.json()["rows"]]


def test_unicode_spaces_and_quotes_never_hide_a_call_or_a_system_table(backend, marker_file):
    """An outside audit read /proc/self/environ (ADMIN_TOKEN and all) through /query on chDB: current releases
    read U+00A0 and friends as spaces and typographic quotes as quotes, the text check read them as
    punctuation, so `file\u00a0(` was not a call to it. 18.16 refuses these characters itself."""
    kind, relay, _ = backend
    path = str(marker_file)
    hostile = [
        *(f"SELECT file{space}('{path}')" for space in ("\u00a0", "\u2003", "\u3000", "\u200b", "\u2028",
                                                         "\u0085", "\u202f", "\u205f", "\ufeff")),
        f"SELECT \u201cfile\u201d('{path}')",
        f"SELECT \u2018'\u2019 AS a, file('{path}') AS b, \u2018'\u2019 AS c",
        "SELECT * FROM system\u00a0.processes",
        "SELECT * FROM information_schema\u00a0.tables",
        "SELECT * FROM merge\u00a0('system', '^one$')",
    ]
    for sql in hostile:
        response = query(relay, sql)
        assert response.status_code == 400 and MARKER not in response.text, (sql, response.status_code,
                                                                               response.text[:200])
        if kind == "chdb":  # 18.16's own syntax error would be a 400 too: the relay's refusal, by name
            assert "outside a string" in response.json()["error"], (sql, response.text[:200])
    ok = query(relay, "SELECT 'caf\u00e9 \u201cquoted\u201d' AS s /* \u00a0 */ -- \u3000")
    assert ok.status_code == 200 and ok.json()["rows"] == [["caf\u00e9 \u201cquoted\u201d"]], ok.text


def test_another_database_on_the_same_engine_is_not_readable(backend, clickhouse_server):  # noqa: F811
    """An outside audit read `other.secret` through /query on the server backend (SHOW and DESCRIBE of it were
    refused, SELECT was not). Its names are refused in every position and quoting; the relay's own
    tables, qualified or by alias, still work."""
    kind, relay, _ = backend
    db = db_name(kind, relay)
    if kind == "clickhouse":
        client = clickhouse_server.client()
        client.execute("CREATE DATABASE IF NOT EXISTS sandbox_other")
        client.execute("CREATE TABLE IF NOT EXISTS sandbox_other.secret (s String) ENGINE = Memory")
        client.execute("INSERT INTO sandbox_other.secret VALUES", [(MARKER,)])
        client.disconnect()
        other = "sandbox_other"
    else:
        other = "default"  # chDB's own second database
    forms = [
        f"SELECT * FROM {other}.secret",
        f"SELECT * FROM `{other}`.`secret`",
        f'SELECT * FROM "{other}".secret',
        f"SELECT * FROM {other}/**/./**/secret",
        f"SELECT seq FROM {db}.events AS e ALL INNER JOIN {other}.secret AS s ON 1 = 1",
        f"SELECT count() FROM {db}.events WHERE topic IN {other}.secret",
        f"WITH (SELECT any(s) FROM {other}.secret) AS x SELECT x",
        f"SELECT 1 AS s UNION ALL SELECT * FROM {other}.secret",
        f"SELECT {other}.secret.s FROM {other}.secret",
        f"SELECT dictGet('{other}.d', 'v', toUInt64(1))",
        f"SELECT joinGet('{other}.j', 'v', 1)",
        f"SELECT hasColumnInTable('{other}', 'secret', 's')",
    ]
    for sql in forms:
        response = query(relay, sql)
        assert response.status_code == 400 and MARKER not in response.text, (sql, response.status_code,
                                                                               response.text[:200])
        error = response.json()["error"]
        assert "not the relay's database" in error or "is not allowed" in error, (sql, error)
    for sql in [f"SELECT e.seq FROM {db}.events AS e ORDER BY e.seq LIMIT 1",
                f"SELECT events.seq FROM {db}.events ORDER BY seq LIMIT 1", "SELECT count() FROM events"]:
        response = query(relay, sql)
        assert response.status_code == 200, (sql, response.text[:200])


def test_a_float_column_comes_back_as_numbers_alike_on_both_backends(backend):
    """chDB writes a whole float without its point, read back as an integer and, past 2^53, sent as a
    string: a Float64 column mixed numbers and strings there, floats on the server (an outside audit)."""
    kind, relay, _ = backend
    response = query(relay, "SELECT toFloat64(number) * 1e17 AS f, [toFloat64(number) * 1e19] AS a, "
                            "toNullable(toFloat32(number)) AS n FROM system.numbers LIMIT 3")
    assert response.status_code == 200, response.text
    rows = response.json()["rows"]
    assert rows == [[0, [0], 0], [1e17, [1e19], 1], [2e17, [2e19], 2]], rows
    assert all(isinstance(v, float) for v in (rows[1][0], rows[2][0], rows[1][1][0], rows[2][1][0])), rows


def test_a_result_over_query_max_bytes_is_a_400_naming_it_and_one_under_it_comes_back(backend):
    kind, relay, _ = backend
    # 100 rows: 50 kB under the bound, 500 kB over it; materialize(): a constant column counts in full too
    under = query(relay, f"SELECT materialize('{'x' * 500}') AS s FROM system.numbers LIMIT 100")
    assert under.status_code == 200, under.text
    assert under.json()["rows"] == [["x" * 500]] * 100
    for sql in [f"SELECT materialize('{'x' * 5000}') AS s FROM system.numbers LIMIT 100",
                f"SELECT '{'x' * 5000}' AS s FROM system.numbers LIMIT 100"]:
        over = query(relay, sql)
        assert over.status_code == 400, (sql, over.status_code, over.text[:200])
        assert "QUERY_MAX_BYTES" in over.json()["error"]
    assert query(relay, "SELECT 1 AS one").json()["rows"] == [[1]]  # the session is fine afterwards


def test_a_body_or_sql_that_is_not_clean_json_text_is_a_400_naming_it(backend):
    kind, relay, _ = backend
    headers = {"Content-Type": "application/json"}
    surrogate = relay.request("POST", "/query", data=b'{"sql": "SELECT \'\\ud800\'"}', headers=headers)
    assert surrogate.status_code == 400 and "'sql'" in surrogate.json()["error"], surrogate.text
    nan = relay.request("POST", "/query", data=b'{"sql": "SELECT %(x)s", "params": {"x": NaN}}', headers=headers)
    assert nan.status_code == 400 and "JSON" in nan.json()["error"], nan.text
    for params in [0, "", [], 1.5, True]:
        response = relay.request("POST", "/query", json={"sql": "SELECT 1", "params": params})
        assert response.status_code == 400 and "'params'" in response.json()["error"], (params, response.text)
    assert relay.request("POST", "/query", json={"sql": "SELECT 1", "params": None}).status_code == 200


def test_settings_in_the_text_never_lift_a_limit(backend):
    kind, relay, _ = backend
    for sql in ["SELECT count() FROM system.numbers SETTINGS max_rows_to_read = 0, max_execution_time = 0",
                "SELECT * FROM (SELECT count() FROM system.numbers SETTINGS max_execution_time = 0)",
                "SELECT 1 SETTINGS readonly = 0", "SELECT 1 SETTINGS readonly = 2"]:
        response = query(relay, sql)
        assert response.status_code == 400, (sql, response.status_code, response.text)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_generated_spelling_or_nesting_of_a_forbidden_function_returns_the_marker(backend, marker_file, listener,
                                                                                      data):
    kind, relay, _ = backend
    name = data.draw(st.sampled_from(["file", "url", "remote", "s3", "executable", "mysql", "input"]))
    cased = "".join(data.draw(st.sampled_from([c.lower(), c.upper()])) for c in name)
    quote = data.draw(st.sampled_from(["", "`", '"']))
    gap = data.draw(st.sampled_from(["", " ", "\n", "/* x */", "-- c\n"]))
    call = f"{quote}{cased}{quote}{gap}({call_args(name, marker_file, listener.port)})"
    sql = f"SELECT * FROM {call}"
    for _ in range(data.draw(st.integers(0, 6))):
        sql = data.draw(st.sampled_from([
            "SELECT * FROM ({})", "WITH t AS ({}) SELECT * FROM t", "SELECT 1 FROM system.one WHERE 1 IN ({})",
            "SELECT * FROM system.one AS a ALL INNER JOIN ({}) AS b USING dummy",
        ])).format(sql)
    sql += data.draw(st.sampled_from(OVERRIDES))
    response = query(relay, sql)
    assert MARKER not in response.text
    assert 400 <= response.status_code < 500, (sql, response.status_code, response.text[:200])
    assert listener.connections == []


# -- the engine's line alone -------------------------------------------------------------------------


def server_table_functions(server: ClickHouseServer) -> frozenset[str]:
    client = server.client()
    try:
        return frozenset(row[0] for row in client.execute("SELECT name FROM system.table_functions"))
    finally:
        client.disconnect()


@pytest.fixture(scope="module", params=["chdb", "clickhouse"])
def engine_store(request, clickhouse_server: ClickHouseServer,  # noqa: F811
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The backend's store object, as the relay builds it, used directly: no text check in front of it."""
    if request.param == "chdb":
        from webapp.store.embedded import EmbeddedStore

        store, names = EmbeddedStore(str(tmp_path_factory.mktemp("engine-chdb")), query_timeout_s=2), chdb_table_functions()
    else:
        from webapp.store.clickhouse import ClickHouseStore

        store, names = ClickHouseStore(clickhouse_server.fresh_url()), server_table_functions(clickhouse_server)
    store.ensure_schema()
    yield request.param, store, names
    store.close()


REACHING = {  # table functions given arguments they would act on: a file to read, a peer to connect to
    "file": "'{marker}', 'LineAsString'",
    "url": "'http://127.0.0.1:{port}/url', 'LineAsString'",
    "s3": "'http://127.0.0.1:{port}/bucket/key.csv', 'LineAsString'",
    "remote": "'127.0.0.1:{port}', system.one",
    "remoteSecure": "'127.0.0.1:{port}', system.one",
    "mysql": "'127.0.0.1:{port}', 'db', 'tbl', 'user', 'password'",
    "postgresql": "'127.0.0.1:{port}', 'db', 'tbl', 'user', 'password'",
}


def test_the_engine_itself_refuses_every_table_function_outside_the_allowed_ones(engine_store, marker_file,
                                                                                listener):
    """Without handlers/sql.py's check in front. Every table function the engine lists is refused (none
    runs); those given arguments they would act on are refused for lack of rights (READONLY or
    ACCESS_DENIED), not for a fault in the arguments. Breaking it (readonly=2 in the store's session)
    makes file() read the marker on chDB and url() connect to the listener on both."""
    kind, store, names = engine_store
    ran, not_for_rights = [], []
    # the ones that act on their arguments first: a broken engine line fails here, fast
    ordered = sorted(names & set(REACHING), key=list(REACHING).index) + sorted(names - set(REACHING), key=str.lower)
    for i, name in enumerate(ordered):
        if name.lower() in ALLOWED_TABLE_FUNCTIONS:
            continue
        if i == len(names & set(REACHING)):
            assert not ran and not not_for_rights, f"ran: {ran[:5]}; refused, but not for lack of rights: {not_for_rights[:5]}"
        template = REACHING.get(name)
        args = (template or call_args(name, marker_file, listener.port)).format(marker=marker_file, port=listener.port)
        for position in (POSITIONS["top"], POSITIONS["subquery"], POSITIONS["with"]):
            sql = position.format(call=f"{name}({args})")
            try:
                result = store.query(sql, 2, 10)
                ran.append((sql, str(result.rows)[:100]))
            except QueryRefused as exc:
                if template is not None and exc.code not in REFUSAL_CODES:
                    not_for_rights.append((sql, exc.code, str(exc)[:100]))
            except (QueryTimedOut, StoreError) as exc:
                ran.append((sql, f"{type(exc).__name__}: {str(exc)[:100]}"))
    assert not ran, f"{len(ran)} table-function queries ran: {ran[:5]}"
    assert not not_for_rights, f"refused, but not for lack of rights: {not_for_rights[:5]}"
    assert listener.connections == [], f"the engine connected to the test's listener: {listener.connections[:5]}"


def test_the_engine_keeps_its_limits_whatever_settings_the_text_carries(engine_store):
    kind, store, _ = engine_store
    for sql in ["SELECT 1 SETTINGS readonly = 0", "SELECT 1 SETTINGS max_execution_time = 0"]:
        with pytest.raises(QueryRefused) as refused:
            store.query(sql, 2, 10)
        assert refused.value.code in REFUSAL_CODES, str(refused.value)
    if kind == "chdb":
        # a subquery's own SETTINGS is taken by current releases, but the session's limits still hold
        with pytest.raises(QueryRefused, match="max_rows_to_read|TOO_MANY_ROWS"):
            store.query("SELECT * FROM (SELECT count() FROM numbers(1000000000) SETTINGS max_rows_to_read = 0)",
                        2, 10)
    assert store.query_powers() == []


# -- the server's /query user ------------------------------------------------------------------------


def test_a_query_user_that_can_reach_outside_is_refused_with_a_503_and_a_log_line(upstream, clickhouse_server,  # noqa: F811
                                                                                tmp_path: Path):
    """relay_reader has readonly=2: on 18.16 it may run url(), and the relay cannot tighten readonly for it."""
    url = clickhouse_server.fresh_url()
    reader = url.replace("clickhouse://default:@", "clickhouse://relay_reader:@")
    relay = Relay(tmp_path / "r", upstream.url, {"CLICKHOUSE_URL": url, "CLICKHOUSE_QUERY_URL": reader}).start()
    try:
        response = query(relay, "SELECT 1")
        assert response.status_code == 503, response.text
        assert "fetches URLs" in response.json()["error"]
        assert "/query is refused" in relay.log_text() and "relay_reader" in relay.log_text()
    finally:
        relay.stop()
    relay = Relay(tmp_path / "allowed", upstream.url, {"CLICKHOUSE_URL": url, "CLICKHOUSE_QUERY_URL": reader,
                                                        "QUERY_ALLOW_UNRESTRICTED": "1"}).start()
    try:
        assert query(relay, "SELECT 1").status_code == 200
    finally:
        relay.stop()


def test_the_documented_read_only_query_user_serves_query_and_refuses_the_rest(upstream, clickhouse_server,  # noqa: F811
                                                                               tmp_path: Path, marker_file, listener):
    url = clickhouse_server.fresh_url()
    db = url.rsplit("/", 1)[1]
    query_user = url.replace("clickhouse://default:@", "clickhouse://relay_query:@")
    relay = Relay(tmp_path / "r", upstream.url, {"CLICKHOUSE_URL": url, "CLICKHOUSE_QUERY_URL": query_user}).start()
    try:
        wait_until(lambda: query(relay, f"SELECT count() FROM {db}.events").status_code == 200, 30, "/query answering")
        assert query(relay, f"SELECT topic, count() FROM {db}.events GROUP BY topic").status_code == 200
        for sql in (f"SELECT * FROM file('{marker_file}', 'TSV', 'x String')",
                    f"SELECT * FROM url('http://127.0.0.1:{listener.port}/', 'TSV', 'x String')"):
            response = query(relay, sql)
            assert response.status_code == 400 and MARKER not in response.text
    finally:
        relay.stop()
    assert listener.connections == []


# -- chDB: a query behind a timed-out one ------------------------------------------------------------


def test_a_query_behind_a_timed_out_one_gets_its_own_result_on_chdb(tmp_path: Path):
    """chDB 4.4 handed a timed-out query's output to the session's next result, even past a `SELECT 1`
    drain: a /query queued behind a time-out got 500 (NotJSON, "Extra data") nearly every time."""
    import gevent

    from webapp.store.embedded import EmbeddedStore

    store = EmbeddedStore(str(tmp_path), query_timeout_s=1)
    store.ensure_schema()
    slow = "SELECT sum(cityHash64(repeat(toString(number), 2000))) FROM numbers(99000000)"
    try:
        for attempt in range(5):
            behind = gevent.spawn(store.query, slow, 1, 10)
            gevent.sleep(0.3)  # the slow one is running: the next call waits behind it on the lane
            result = store.query(f"SELECT {attempt} + 40 AS answer, 'mine' AS whose", 1, 10)
            assert (result.columns, result.rows) == ([("answer", "UInt16"), ("whose", "String")],
                                                     [[attempt + 40, "mine"]]), attempt
            with pytest.raises(QueryTimedOut):
                behind.get()
    finally:
        store.close()


def test_queries_whose_time_ran_out_while_waiting_do_not_hold_the_chdb_session(upstream, tmp_path: Path):
    """chDB's /query has one session. Heavy queries answered 504 still ran their whole QUERY_TIMEOUT_S after,
    one behind the other, so a `SELECT 1` sent behind them got a 504 too (an outside audit: 504s for ~30 s at
    the default 10 s). A query that waited its whole time for the session is not started now. (The server
    backend opens a connection per /query.)"""
    relay = Relay(tmp_path / "turns", upstream.url, {"QUERY_TIMEOUT_S": "3"})
    relay.settings.pop("CLICKHOUSE_URL", None)  # the embedded chDB store
    relay.settings.pop("API_TOKENS", None)
    relay.start()
    heavy = ("SELECT count() FROM (SELECT number FROM system.numbers LIMIT 99000000) "
             "WHERE cityHash64(arrayStringConcat(arrayMap(x -> toString(x + number), range(60)))) % 7 = 3")
    answers: list[int] = []

    def run() -> None:
        answers.append(query(relay, heavy).status_code)

    threads = [threading.Thread(target=run) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        # QUERY_TIMEOUT_S is 3 here: the first runs 3 s; before, the other three then ran 3 s each (for
        # callers who had their 504), now they wait 3 s for their turn and are not run
        time.sleep(3.5)
        started = time.monotonic()
        light = query(relay, "SELECT 1 AS one")
        waited = time.monotonic() - started
        for t in threads:
            t.join(30)
    finally:
        relay.stop()
    assert sorted(answers) == [504] * 4, answers  # the heavy ones ran out of time (or waited it out)
    assert light.status_code == 200 and light.json()["rows"] == [[1]], (light.status_code, light.text[:200], waited)


def test_at_most_query_concurrency_statements_run_at_once_and_the_rest_wait_their_turn_or_get_a_503(
        upstream, clickhouse_server: ClickHouseServer, tmp_path: Path):  # noqa: F811
    """110 concurrent `SELECT sleep(3)` on a ClickHouse server filled its query slots and stalled the relay's own
    inserts (spooled, /health degraded; an outside audit). With QUERY_CONCURRENCY=1 and QUERY_TIMEOUT_S=2,
    three 1.5 s statements at once: the first runs, the next gets its turn within its 2 s, the last has waited
    its whole 2 s when the second starts and gets a 503 with Retry-After, never having run."""
    relay = Relay(tmp_path / "gate", upstream.url, {"CLICKHOUSE_URL": clickhouse_server.fresh_url(),
                                                    "QUERY_TIMEOUT_S": "2", "QUERY_CONCURRENCY": "1"})
    relay.start()
    answers: list[requests.Response] = []
    try:
        wait_until(lambda: query(relay, "SELECT 1").status_code == 200, 30, "/query answering")
        threads = [threading.Thread(target=lambda: answers.append(query(relay, "SELECT sleep(1.5) AS s")))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(a.status_code for a in answers) == [200, 200, 503], [(a.status_code, a.text) for a in answers]
        refused = next(a for a in answers if a.status_code == 503)
        assert refused.headers.get("Retry-After") == "1" and "QUERY_CONCURRENCY" in refused.json()["error"]
        assert 'relayhouse_bound_hits_total{bound="query_concurrency"} 1.0' in relay.get("/metrics").text
    finally:
        relay.stop()
