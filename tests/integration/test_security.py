"""Security (contract §6, §10; docs/api.md "Access"; docs/operations.md): every route with and
without a token, admin routes from a peer that is not loopback, tokens kept out of every log line,
/query refusing whatever is not a read, CORS closed unless configured, request size limits.

The relays here run with a real ClickHouse server, so /query and /history
answer for real once access is granted.
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support.clickhouse import ClickHouseServer, clickhouse_server  # noqa: F401
from support.clients import SseClient, WsClient, upgrade_headers
from support.relay import Relay
from support.waiting import wait_until

from webapp import auth
from webapp.settings import Settings, SettingsError

CLIENT_TOKEN = "client-secret-7f3a9c"
OTHER_CLIENT_TOKEN = "client-secret-b81e44"
ADMIN_TOKEN = "admin-secret-d02c5e"
WRONG_TOKEN = "wrong-secret-93aa10"
SECRETS = (CLIENT_TOKEN, OTHER_CLIENT_TOKEN, ADMIN_TOKEN, WRONG_TOKEN)


@pytest.fixture(scope="module")
def secure_relay(upstream, clickhouse_server: ClickHouseServer,  # noqa: F811
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """Tokens on, every log as loud as it gets: gunicorn's access log to stdout, DEBUG everywhere."""
    env = {
        "API_TOKENS": f"{CLIENT_TOKEN},{OTHER_CLIENT_TOKEN}",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "CLICKHOUSE_URL": clickhouse_server.fresh_url(),
        "STORE_BATCH_MS": "50",
        "ACCESS_LOG": "-",
        "LOG_LEVEL": "DEBUG",
        "QUERY_TIMEOUT_S": "2",
        "MAX_BODY_BYTES": "65536",
        "BODY_TIMEOUT_S": "1",
    }
    running = Relay(tmp_path_factory.mktemp("secure"), upstream.url, env).start()
    published = running.request("POST", "/publish", json=[{"ev": "T", "sym": "SEC", "n": n} for n in range(5)],
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert published.status_code == 200, published.text
    yield running
    running.stop()


def is_json_error(response: requests.Response, status: int) -> bool:
    return (response.status_code == status and response.headers.get("Content-Type", "").startswith("application/json")
            and isinstance(response.json().get("error"), str))


# -- every route, with and without a token --------------------------------------------------

# (method, path, body, access). Every rule of the app's url_map must appear here
# (test_every_route_of_the_app_has_an_access_test), so a new route cannot ship untested.
ROUTES = [
    ("GET", "/health", None, "open"),
    ("GET", "/metrics", None, "open"),
    ("GET", "/openapi.json", None, "open"),
    ("GET", "/monitor", None, "open"),
    ("GET", "/monitor/assets/monitor.css", None, "open"),
    ("GET", "/", None, "open"),
    ("GET", "/cache/stats", None, "client"),
    ("GET", "/cache/recent?limit=2", None, "client"),
    ("GET", "/cache/latest?topics=T.*", None, "client"),
    ("GET", "/cache/search?q=SEC", None, "client"),
    ("GET", "/cache/events/1", None, "client"),
    ("GET", "/cache/config", None, "client"),
    ("GET", "/clients?limit=2", None, "client"),
    ("GET", "/history?limit=2", None, "client"),
    ("GET", "/query?sql=SELECT%201", None, "client"),
    ("POST", "/query", {"sql": "SELECT 1"}, "client"),
    ("DELETE", "/cache", None, "admin"),
    ("PUT", "/cache/config", {"ttl_seconds": 3600}, "admin"),
    ("POST", "/publish", {"ev": "T", "sym": "SEC2"}, "admin"),
]
STREAMS = ["/ws", "/sse"]  # client routes refused before any upgrade or stream
IN_BAND = ["/stocks", "/options", "/forex", "/crypto", "/indices"]  # Polygon: the key goes in the `auth` action


def rule_paths() -> set[tuple[str, str]]:
    from webapp import create_app

    app = create_app(Settings.from_env({"CLICKHOUSE_URL": "none", "UPSTREAM_URL": "ws://127.0.0.1:9/x"}))
    found = set()
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.add((method, rule.rule))
    return found


def test_every_route_of_the_app_has_an_access_test():
    tested = {(method, path.split("?")[0]) for method, path, _, _ in ROUTES}
    tested |= {("GET", path) for path in STREAMS}
    expected = set()
    for method, rule in rule_paths():
        if rule == "/<any(stocks, options, forex, crypto, indices):market>":
            assert sorted(IN_BAND) == sorted(f"/{m}" for m in ("stocks", "options", "forex", "crypto", "indices"))
            continue
        expected.add((method, rule.replace("<seq>", "1").replace("<path:name>", "monitor.css")))
    assert expected == tested, f"routes without an access test: {expected - tested}; stale: {tested - expected}"


@pytest.mark.parametrize("method, path, body, access", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_each_route_without_and_with_a_token(secure_relay, method, path, body, access):
    relay = secure_relay
    bearer = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731

    def call(headers=None, token=None):
        target = path if token is None else f"{path}{'&' if '?' in path else '?'}token={token}"
        return relay.request(method, target, json=body, headers=headers or {})

    granted = (200, 302)
    if access == "open":
        assert call().status_code in granted
        assert call(bearer(WRONG_TOKEN)).status_code in granted  # a bad token does not close an open route
        return
    for refused in (call(), call(bearer(WRONG_TOKEN)), call(token=WRONG_TOKEN), call({"Authorization": CLIENT_TOKEN}),
                    call({"Authorization": f"Basic {CLIENT_TOKEN}"}), call(bearer(CLIENT_TOKEN + "x")),
                    call(bearer(CLIENT_TOKEN[:-1]))):
        assert is_json_error(refused, 401), (refused.status_code, refused.text[:200])
    if access == "client":
        assert call(bearer(CLIENT_TOKEN)).status_code == 200
        assert call(token=OTHER_CLIENT_TOKEN).status_code == 200
        assert is_json_error(call(bearer(ADMIN_TOKEN)), 401), "the admin token is not a client token"
    else:
        assert is_json_error(call(bearer(CLIENT_TOKEN)), 401), "a client token is not the admin token"
        assert is_json_error(call(token=ADMIN_TOKEN), 401), "the admin token is taken as a bearer header only"
        assert call(bearer(ADMIN_TOKEN)).status_code == 200


@pytest.mark.parametrize("path", STREAMS)
def test_streams_refuse_a_missing_or_wrong_token_before_the_upgrade_and_accept_a_good_one(secure_relay, path):
    relay = secure_relay
    with requests.Session() as session:
        session.trust_env = False
        for params in ({}, {"token": WRONG_TOKEN}):
            headers = upgrade_headers() if path == "/ws" else {"Accept": "text/event-stream"}
            response = session.get(relay.url + relay.target(path, **params), headers=headers, timeout=10)
            assert response.status_code != 101 and is_json_error(response, 401), (params, response.status_code)
    if path == "/ws":
        client = WsClient(relay.ws_url(path, token=CLIENT_TOKEN, snapshot=0))
        try:
            assert client.read_snapshot()["type"] == "snapshot"
        finally:
            client.close()
        client = WsClient(relay.ws_url(path, snapshot=0), headers={"Authorization": f"Bearer {OTHER_CLIENT_TOKEN}"})
        client.close()
    else:
        stream = SseClient("127.0.0.1", relay.port, relay.target(path, token=CLIENT_TOKEN, snapshot=0))
        try:
            assert stream.status == 200
        finally:
            stream.close()


@pytest.mark.parametrize("path", IN_BAND)
def test_polygon_sockets_take_the_token_in_the_auth_action(secure_relay, path):
    """docs/polygon.md: the vendor's clients cannot send a token before the upgrade, so the key of the
    `auth` action is checked against API_TOKENS; a wrong key gets auth_failed and the connection closes."""
    relay = secure_relay
    refused = WsClient(relay.ws_url(path))
    try:
        refused.conn.recv(timeout=5)  # connected
        refused.send_json({"action": "subscribe", "params": "T.*"})
        before_auth = json.loads(refused.conn.recv(timeout=5))[0]
        assert before_auth["status"] == "error" and "not authenticated" in before_auth["message"], before_auth
        refused.send_json({"action": "auth", "params": WRONG_TOKEN})
        assert json.loads(refused.conn.recv(timeout=5))[0]["status"] == "auth_failed"
        with pytest.raises(Exception, match="1008|close"):
            refused.conn.recv(timeout=5)
    finally:
        refused.close()
    accepted = WsClient(relay.ws_url(path))
    try:
        accepted.conn.recv(timeout=5)
        accepted.send_json({"action": "auth", "params": CLIENT_TOKEN})
        assert json.loads(accepted.conn.recv(timeout=5))[0]["status"] == "auth_success"
    finally:
        accepted.close()


def test_tokens_are_compared_in_constant_time_against_every_configured_token(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    accepted = ("first-token", "second-token", "third-token")
    for given in ("first-token", "third-token", "nope", ""):
        calls.clear()
        auth.token_matches(given, accepted)
        assert len(calls) == len(accepted), f"{given!r}: compared against {len(calls)} of {len(accepted)} tokens"


# -- admin routes from a peer that is not loopback ------------------------------------------------------


def non_loopback_address() -> str:
    """This host's address on its default route (no packet is sent: connect() on UDP only picks a route)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))
        address = probe.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    finally:
        probe.close()
    if address.startswith("127."):
        pytest.fail("this host has no non-loopback IPv4 address: the admin-peer tests cannot run", pytrace=False)
    return address


ADMIN_REQUESTS = [("DELETE", "/cache", None), ("PUT", "/cache/config", {"ttl_seconds": 5}),
                  ("POST", "/publish", {"ev": "T", "sym": "REMOTE"})]


def test_admin_routes_refuse_a_remote_peer_without_admin_token_even_with_a_forged_forwarded_for(
        upstream, tmp_path: Path):
    relay = Relay(tmp_path / "open", upstream.url, {}).start()  # ADMIN_TOKEN unset: loopback only
    session = requests.Session()
    session.trust_env = False
    try:
        base = f"http://{non_loopback_address()}:{relay.port}"
        before = relay.health()["last_seq"]
        for method, path, body in ADMIN_REQUESTS:
            for headers in ({}, {"X-Forwarded-For": "127.0.0.1"}, {"X-Real-IP": "127.0.0.1"},
                            {"Forwarded": "for=127.0.0.1"}, {"Authorization": "Bearer anything"}):
                response = session.request(method, base + path, json=body, headers=headers, timeout=5)
                assert is_json_error(response, 403), (method, path, headers, response.status_code)
        assert session.get(base + "/cache/stats", timeout=5).status_code == 200  # client routes are open here
        assert relay.health()["last_seq"] == before
        assert relay.request("POST", "/publish", json={"ev": "T", "sym": "LOCAL"}).status_code == 200  # loopback
    finally:
        session.close()
        relay.stop()


def test_with_an_admin_token_a_remote_peer_needs_it_and_loopback_gets_no_pass(upstream, tmp_path: Path):
    relay = Relay(tmp_path / "token", upstream.url, {"ADMIN_TOKEN": ADMIN_TOKEN}).start()
    session = requests.Session()
    session.trust_env = False
    try:
        base = f"http://{non_loopback_address()}:{relay.port}"
        for method, path, body in ADMIN_REQUESTS:
            assert is_json_error(session.request(method, base + path, json=body, timeout=5), 401)
            assert is_json_error(relay.request(method, path, json=body), 401), "loopback is no pass with a token set"
            response = session.request(method, base + path, json=body, timeout=5,
                                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert response.status_code == 200, (method, path, response.text)
    finally:
        session.close()
        relay.stop()


# -- tokens never in a log line ---------------------------------------------------------------------


def test_no_token_ever_reaches_a_log_line(secure_relay):
    relay = secure_relay
    start = relay.log_size()
    encoded = "".join(f"%{ord(c):02X}" for c in "token")
    for token in SECRETS:
        relay.get(f"/cache/stats?token={token}")
        relay.get(f"/cache/recent?limit=1&token={token}&topics=T.*")
        relay.get(f"/cache/stats?{encoded}={token}")  # the name percent-encoded: Flask reads it as token
        relay.get(f"/cache/stats;token={token}")
        relay.get("/cache/stats", headers={"Authorization": f"Bearer {token}"})
        relay.get("/health", headers={"Referer": f"http://example.test/monitor?token={token}"})
        relay.request("POST", "/publish", json={"ev": "T", "sym": "LOG"}, headers={"Authorization": f"Bearer {token}"})
        relay.get(f"/query?sql=SELECT%201&token={token}")
        relay.get(f"/no/such/route?token={token}")
        with requests.Session() as session:
            session.trust_env = False
            session.get(relay.url + f"/ws?token={token}", headers=upgrade_headers(), timeout=5)
    client = WsClient(relay.ws_url("/ws", token=CLIENT_TOKEN, snapshot=0))
    client.close()
    stream = SseClient("127.0.0.1", relay.port, relay.target("/sse", token=OTHER_CLIENT_TOKEN, snapshot=0))
    stream.close()
    polygon = WsClient(relay.ws_url("/stocks"))
    polygon.send_json({"action": "auth", "params": WRONG_TOKEN})
    polygon.close()
    time.sleep(1)  # the access log is written after each response
    log = relay.log_text(start)
    assert "/cache/stats" in log and "GET" in log, "the access log is not on: this test would prove nothing"
    leaked = [secret for secret in SECRETS if secret in log]
    lines = [line for line in log.splitlines() if any(secret in line for secret in SECRETS)]
    assert not leaked, f"tokens in the log: {leaked}\n" + "\n".join(lines[:10])


# -- /query: reads only, within limits ---------------------------------------------------------------------

REFUSED_SQL = [
    "INSERT INTO {db}.events (seq) VALUES (999999)",
    "INSERT INTO {db}.events SELECT * FROM {db}.events",
    "DROP TABLE {db}.events",
    "DROP DATABASE {db}",
    "TRUNCATE TABLE {db}.events",
    "ALTER TABLE {db}.events DELETE WHERE 1",
    "ALTER TABLE {db}.events DROP COLUMN data",
    "ALTER TABLE {db}.events MODIFY TTL toDate(ts)",
    "RENAME TABLE {db}.events TO {db}.gone",
    "DETACH TABLE {db}.events",
    "ATTACH TABLE {db}.events",
    "OPTIMIZE TABLE {db}.events FINAL",
    "CREATE TABLE {db}.evil (a UInt8) ENGINE = Memory",
    "CREATE DATABASE evil",
    "CREATE VIEW {db}.v AS SELECT 1",
    "KILL QUERY WHERE 1",
    "SYSTEM SHUTDOWN",
    "SYSTEM DROP MARK CACHE",
    "SET readonly = 0",
    "SET max_execution_time = 0",
    "SET max_memory_usage = 0",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT 1 SETTINGS max_result_rows = 0",
    "SELECT count() FROM system.numbers SETTINGS max_execution_time = 100000",
    "SELECT 1; DROP TABLE {db}.events",
    "SELECT 1; SELECT 2",
    "SELECT 1;;",
    "SELECT 1 /* ; */; INSERT INTO {db}.events (seq) VALUES (1)",
    "INSERT INTO system.numbers SELECT 1",
    "ALTER TABLE system.query_log DELETE WHERE 1",
    "TRUNCATE TABLE system.query_log",
    "DROP TABLE system.one",
    "SELECT * FROM file('/etc/passwd', 'CSV', 'line String')",
    "SELECT * FROM url('http://127.0.0.1:9/', 'CSV', 'line String')",
    "SELECT * FROM remote('127.0.0.1', system.one)",
    "SELECT * FROM {db}.events INTO OUTFILE '/tmp/relayhouse-out'",
    "SELECT 1 FORMAT Native",
    "WITH 1 AS x SELECT x FORMAT TabSeparated",
    "GRANT ALL ON *.* TO default",
    "CREATE USER evil",
]

BOMBS = {  # each must end in a refusal or a cut-off, within the time limit, while the relay keeps serving
    "numbers": "SELECT count() FROM system.numbers",
    "cross-join": "SELECT count() FROM numbers(100000) AS a CROSS JOIN numbers(100000) AS b",
    "group-array": "SELECT length(groupArray(number)) FROM system.numbers",
    "big-strings": "SELECT sum(length(toString(range(100000)))) FROM system.numbers",
    "sleep": "SELECT sleepEachRow(1) FROM numbers(100)",
    "long-expression": "SELECT " + " + ".join(["1"] * 15000),
    # ClickHouse 18.16's parser recurses per bracket: about 1000 nested ones overflow its
    # stack and the whole server dies. A client of /query must not be able to do that.
    "nested-parentheses": "SELECT " + "(" * 1000 + "1" + ")" * 1000,
    "nested-arrays": "SELECT " + "[" * 1000 + "1" + "]" * 1000,
    "nested-calls": "SELECT " + "abs(" * 1000 + "1" + ")" * 1000,
}

def db_of(relay: Relay) -> str:
    return relay.settings["CLICKHOUSE_URL"].rsplit("/", 1)[1]


def query(relay: Relay, sql: str, **kwargs) -> requests.Response:
    return relay.request("POST", "/query", json={"sql": sql, **kwargs},
                         headers={"Authorization": f"Bearer {CLIENT_TOKEN}"}, timeout=30)


def table_facts(relay: Relay) -> list:
    response = query(relay, f"SELECT count(), max(seq) FROM {db_of(relay)}.events")
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def test_query_refuses_writes_ddl_settings_multi_statements_system_writes_and_escapes(secure_relay):
    relay = secure_relay
    wait_until(lambda: table_facts(relay)[0][0] >= 5, 10, "the published events stored")
    before = table_facts(relay)
    for sql in REFUSED_SQL:
        statement = sql.format(db=db_of(relay))
        for response in (query(relay, statement),
                         relay.get("/query", params={"sql": statement, "token": CLIENT_TOKEN})):
            assert is_json_error(response, 400), (statement, response.status_code, response.text[:200])
    # values are escaped: a parameter can never become SQL
    for value in ("1; DROP TABLE x", "' OR 1=1 --", "1 SETTINGS readonly=0", "\\'); DROP TABLE x; --"):
        response = query(relay, "SELECT %(v)s AS v", params={"v": value})
        assert response.status_code == 200 and response.json()["rows"] == [[value]], response.text
    assert table_facts(relay) == before, "a refused statement changed the table"
    assert relay.get("/health").json()["store"]["ok"] is True


def worker_of(relay: Relay) -> set[int]:
    """The gunicorn master's children (its worker), from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == relay.proc.pid and fields[0] != "Z":
                children.add(int(entry.name))
    return children


class EmbeddedStore:
    """chDB runs inside the relay's worker: a bomb that kills it kills the worker (gunicorn starts another)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.worker = worker_of(relay)

    @property
    def running(self) -> bool:
        return worker_of(self.relay) == self.worker

    def start(self) -> None:
        self.relay.wait_ready(30)
        self.worker = worker_of(self.relay)


@pytest.fixture(scope="module", params=["clickhouse", "chdb"])
def bomb_target(request, upstream, tmp_path_factory: pytest.TempPathFactory):
    """A store of its own: a bomb that kills a ClickHouse server must not take the session's down too."""
    if request.param == "clickhouse":
        server = ClickHouseServer(tmp_path_factory.mktemp("bomb-clickhouse")).start()
        relay = Relay(tmp_path_factory.mktemp("bomb"), upstream.url,
                      {"CLICKHOUSE_URL": server.url, "QUERY_TIMEOUT_S": "2"}).start()
        yield relay, server
        relay.stop()
        server.stop()
    else:
        relay = Relay(tmp_path_factory.mktemp("bomb-chdb"), upstream.url, {"CLICKHOUSE_URL": "", "QUERY_TIMEOUT_S": "2"})
        relay.settings.pop("CLICKHOUSE_URL")  # unset: the embedded chDB store
        relay.start()
        yield relay, EmbeddedStore(relay)
        relay.stop()


@pytest.mark.parametrize("name", list(BOMBS))
def test_query_resource_bombs_are_cut_off_and_neither_the_relay_nor_clickhouse_falls_over(bomb_target, name):
    relay, server = bomb_target
    if not server.running:
        server.start()  # an earlier bomb killed it; that test has failed already
    timings: list[float] = []
    done = threading.Event()

    def health_while_running() -> None:
        while not done.is_set():
            started = time.monotonic()
            relay.get("/health")
            timings.append(time.monotonic() - started)
            done.wait(0.1)

    watcher = threading.Thread(target=health_while_running)
    watcher.start()
    started = time.monotonic()
    try:
        response = relay.request("POST", "/query", json={"sql": BOMBS[name]}, timeout=30)
    finally:
        done.set()
        watcher.join(10)
    elapsed = time.monotonic() - started
    timeout_s = float(relay.settings["QUERY_TIMEOUT_S"])
    assert server.running, f"the ClickHouse server died of {name!r} (the relay answered {response.status_code})"
    assert response.status_code in (200, 400, 504), (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    if response.status_code == 200:
        assert response.json()["row_count"] <= 10000  # QUERY_MAX_ROWS
    assert elapsed < timeout_s + 5, f"the bomb ran {elapsed:.1f}s (QUERY_TIMEOUT_S={timeout_s})"
    assert timings and max(timings) < 1.0, f"/health waited {max(timings):.2f}s while the bomb ran"
    assert relay.get("/query", params={"sql": "SELECT 1"}).status_code == 200, "the store no longer answers"

# -- CORS -----------------------------------------------------------------------------------------------

FOREIGN = "https://evil.example"
FRIEND = "https://app.example"


def cors_headers(response: requests.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def preflight(relay: Relay, path: str, origin: str, method: str = "GET") -> requests.Response:
    return relay.request("OPTIONS", path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                                   "Access-Control-Request-Headers": "authorization"})


def test_cors_is_closed_by_default(secure_relay):
    relay = secure_relay
    for origin in (FOREIGN, "null", FRIEND):
        for response in (relay.get("/health", headers={"Origin": origin}),
                         relay.get(f"/cache/recent?token={CLIENT_TOKEN}", headers={"Origin": origin}),
                         relay.get("/cache/recent", headers={"Origin": origin}),
                         preflight(relay, "/cache/recent", origin),
                         preflight(relay, "/publish", origin, "POST")):
            assert cors_headers(response) == {}, (origin, response.request.method, response.url, response.headers)


def test_cors_lets_listed_origins_read_without_credentials_and_answers_their_preflights(upstream, tmp_path: Path):
    relay = Relay(tmp_path / "cors", upstream.url, {"CORS_ORIGINS": f"{FRIEND}, https://other.example",
                                                    "API_TOKENS": CLIENT_TOKEN}).start()
    try:
        allowed = relay.get(f"/cache/recent?token={CLIENT_TOKEN}", headers={"Origin": FRIEND})
        assert allowed.headers["Access-Control-Allow-Origin"] == FRIEND
        assert "Origin" in allowed.headers.get("Vary", "")
        assert "Access-Control-Allow-Credentials" not in allowed.headers
        refused = relay.get(f"/cache/recent?token={CLIENT_TOKEN}", headers={"Origin": FOREIGN})
        assert cors_headers(refused) == {}
        # the answer depends on the Origin, refused ones too (a shared cache must not mix them)
        assert "Origin" in refused.headers.get("Vary", "")
        assert "Origin" in relay.get("/health").headers.get("Vary", "")
        # a path of several routes: the preflight names every method (PUT /cache/config named only GET)
        assert {"GET", "PUT"} <= set(preflight(relay, "/cache/config", FRIEND, "PUT")
                                     .headers["Access-Control-Allow-Methods"].split(", "))
        # a preflight carries no token: it is answered, and the real request is still checked
        answer = preflight(relay, "/cache/recent", FRIEND)
        assert answer.status_code == 204, answer.text
        assert answer.headers["Access-Control-Allow-Origin"] == FRIEND
        assert "GET" in answer.headers["Access-Control-Allow-Methods"]
        assert "authorization" in answer.headers["Access-Control-Allow-Headers"].lower()
        assert cors_headers(preflight(relay, "/cache/recent", FOREIGN)) == {}
        assert is_json_error(relay.get("/cache/recent", headers={"Origin": FRIEND}), 401)
        assert relay.get("/cache/recent", headers={"Origin": FRIEND}).headers["Access-Control-Allow-Origin"] == FRIEND
    finally:
        relay.stop()


def test_without_admin_token_admin_routes_refuse_a_page_of_another_origin_or_a_rebound_host(upstream, tmp_path: Path):
    """A loopback peer is also any web page in a browser on the relay's machine. Through a DNS name rebound to
    127.0.0.1 (its Host) or, with CORS_ORIGINS=*, a cross-origin request (its Origin), such a page cleared the
    cache and published events (an outside audit). The loopback pass now needs a loopback Host and no Origin or
    one of this machine; the monitor's own calls and curl keep it."""
    relay = Relay(tmp_path / "rebind", upstream.url, {"CORS_ORIGINS": "*"}).start()
    try:
        publish = {"ev": "T", "sym": "FORGED", "p": 0.01}
        for headers in ({"Host": f"rebind.evil.example:{relay.port}"},
                        {"Host": f"rebind.evil.example:{relay.port}", "Origin": f"http://rebind.evil.example:{relay.port}"},
                        {"Origin": FOREIGN}, {"Origin": "null"},
                        # forms no browser sends, read loosely before (a second audit): user info, a port
                        # that is not one, a %-escape
                        {"Host": "127.0.0.1:80@evil.example"}, {"Host": "localhost:evil"},
                        {"Host": "127.0.0.1%2eevil.example"}, {"Origin": f"http://127.0.0.1:{relay.port}@evil.example"},
                        {"Origin": "http://127.0.0.1/path"}):
            assert is_json_error(relay.request("DELETE", "/cache", headers=headers), 403), headers
            assert is_json_error(relay.request("POST", "/publish", json=publish, headers=headers), 403), headers
        # an absolute-form target names the host, whatever Host says (RFC 9112 §3.2.2)
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as raw:
            raw.sendall(b"DELETE http://evil.example/cache HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := raw.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
        assert relay.get("/cache/recent?topics=T.FORGED").json()["events"] == []
        for headers in ({}, {"Origin": f"http://127.0.0.1:{relay.port}"}, {"Host": f"localhost:{relay.port}"},
                        {"Host": f"[::1]:{relay.port}", "Origin": "http://localhost:8000"}):
            assert relay.request("DELETE", "/cache", headers=headers).status_code == 200, headers
        assert relay.request("POST", "/publish", json=publish,
                             headers={"Origin": f"http://127.0.0.1:{relay.port}"}).status_code == 200
    finally:
        relay.stop()


def test_the_upstream_url_s_credentials_are_masked_in_health_and_the_log(tmp_path: Path):
    """/health is open and showed `ws://user:hunter2@...?apiKey=...` as it was given; the log printed it at every
    reconnect attempt (17 lines in 5 s). Both now mask it, and the failures are logged once per 10 s."""
    url = "ws://user:hunter2@127.0.0.1:9/feed?apiKey=SEKRET9&format=json"
    relay = Relay(tmp_path / "secret", url, {"UPSTREAM_BACKOFF_MAX_MS": "100"}).start(wait_upstream=False)
    try:
        upstream = wait_until(lambda: (u := relay.health()["upstream"])["reconnects"] >= 5 and u, 20,
                              "five failed connects")
        assert upstream["url"] == "ws://***@127.0.0.1:9/feed?apiKey=***&format=json"
        for text in (relay.get("/health").text, relay.get("/metrics").text, relay.log_text()):
            assert "hunter2" not in text and "SEKRET9" not in text
        lines = [line for line in relay.log_text().splitlines() if "upstream ws://" in line]
        assert 1 <= len(lines) <= 2, lines
    finally:
        relay.stop()


def test_cors_credentials_only_when_asked_and_never_for_every_origin(upstream, tmp_path: Path):
    relay = Relay(tmp_path / "creds", upstream.url, {"CORS_ORIGINS": FRIEND, "CORS_ALLOW_CREDENTIALS": "true"}).start()
    try:
        response = relay.get("/health", headers={"Origin": FRIEND})
        assert response.headers["Access-Control-Allow-Origin"] == FRIEND
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert cors_headers(relay.get("/health", headers={"Origin": FOREIGN})) == {}
    finally:
        relay.stop()
    with pytest.raises(SettingsError, match="CORS_ALLOW_CREDENTIALS"):
        Settings.from_env({"CORS_ORIGINS": "*", "CORS_ALLOW_CREDENTIALS": "true"})
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        Settings.from_env({"CORS_ORIGINS": "evil.example/path"})
    anyone = Relay(tmp_path / "star", upstream.url, {"CORS_ORIGINS": "*"}).start()
    try:
        response = anyone.get("/health", headers={"Origin": FOREIGN})
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers
    finally:
        anyone.stop()


def test_a_credentials_with_star_config_stops_start_up_with_one_message(upstream, tmp_path: Path):
    relay = Relay(tmp_path / "bad", upstream.url, {"CORS_ORIGINS": "*", "CORS_ALLOW_CREDENTIALS": "yes"})
    with pytest.raises(AssertionError, match="exited"):
        relay.start(timeout_s=15)
    log = relay.log_text()
    assert "CORS_ALLOW_CREDENTIALS" in log and "Traceback" not in log, log[-2000:]


# -- request size limits ----------------------------------------------------------------------------------


def test_bodies_over_max_body_bytes_are_refused_with_a_json_413(secure_relay):
    relay = secure_relay
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    client = {"Authorization": f"Bearer {CLIENT_TOKEN}", "Content-Type": "application/json"}
    big = json.dumps({"ev": "T", "sym": "BIG", "pad": "x" * 70000}).encode()
    before = relay.health()["last_seq"]
    for method, path, headers in (("POST", "/publish", admin), ("PUT", "/cache/config", admin),
                                  ("POST", "/query", client)):
        assert is_json_error(relay.request(method, path, data=big, headers=headers), 413), path
        chunked = relay.request(method, path, data=iter([big[:40000], big[40000:]]), headers=headers)
        assert is_json_error(chunked, 413), (path, "chunked", chunked.status_code)
    assert relay.health()["last_seq"] == before
    fits = json.dumps({"ev": "T", "sym": "FITS", "pad": "x" * 60000}).encode()
    assert relay.request("POST", "/publish", data=fits, headers=admin).status_code == 200


def test_a_body_that_never_arrives_does_not_hold_the_relay(secure_relay):
    relay = secure_relay
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    try:
        sock.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN_TOKEN.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{\"ev\":")
        started = time.monotonic()
        assert relay.get("/health").status_code == 200
        assert time.monotonic() - started < 1.0
    finally:
        sock.close()


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket time-out fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_stops_arriving_gets_a_json_408_and_the_connection_is_closed(secure_relay, framing):
    relay = secure_relay
    before = relay.health()["last_seq"]
    length = b"Content-Length: 60000\r\n" if framing == "content-length" else b"Transfer-Encoding: chunked\r\n"
    start = b"{\"ev\":" if framing == "content-length" else b"6\r\n{\"ev\":\r\n"
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=15)
    try:
        sock.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN_TOKEN.encode()
                     + b"\r\nContent-Type: application/json\r\n" + length + b"\r\n" + start)
        reply = read_to_close(sock)  # BODY_TIMEOUT_S is 1 s; the socket's time-out 15 s
    finally:
        sock.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply[:300]
    assert b"application/json" in head
    assert json.loads(body) == {"error": "the request body did not arrive within 1 s"}
    assert relay.health()["last_seq"] == before  # nothing half-read was published

