"""With ACCESS_LOG set, every /ws and /sse connection gets one access line, written when it ends
(webapp/accesslog.py): gunicorn itself never logs a request whose connection outlives it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import requests
from support.clients import upgrade_headers
from support.waiting import wait_until

TOKEN = "client-secret-access-5c1e"
# gunicorn's atoms: the request line, status, bytes, duration (µs), a request header and the one a secret rides in
FORMAT = '"%(r)s" %(s)s %(b)s %(D)s probe=%({x-probe}i)s auth=%({authorization}i)s'
LINE = re.compile(r'"(?P<method>\S+) (?P<uri>\S+) HTTP/1\.1" (?P<status>\d+) (?P<sent>\S+) (?P<us>\d+) '
                  r'probe=(?P<probe>\S+) auth=(?P<auth>.*)$')


@pytest.fixture
def logged_relay(launch_relay, upstream, tmp_path: Path):
    log = tmp_path / "access.log"
    relay = launch_relay(upstream, {"ACCESS_LOG": str(log), "API_TOKENS": TOKEN,
                                    "GUNICORN_CMD_ARGS": f"--access-logformat='{FORMAT}'"})
    return relay, log


def lines(log: Path, probe: str) -> list[dict[str, str]]:
    text = log.read_text() if log.exists() else ""
    found = [m.groupdict() for m in map(LINE.search, text.splitlines()) if m]
    return [f for f in found if f["probe"] == probe]


def one_line(log: Path, probe: str) -> dict[str, str]:
    found = wait_until(lambda: lines(log, probe), 10, f"the access line of {probe}",
                       describe=lambda: log.read_text()[-2000:] if log.exists() else "no log")
    assert len(found) == 1, found
    return found[0]


def test_a_ws_connection_is_logged_once_when_it_ends(logged_relay, ws):
    relay, log = logged_relay
    client = ws(relay, topics="T.*", headers={"Authorization": f"Bearer {TOKEN}", "X-Probe": "ws-1"})
    client.read_snapshot()
    opened_at = time.monotonic()
    relay.get("/health")  # a REST call is logged by gunicorn as before: the log is being written
    wait_until(lambda: log.exists() and "/health" in log.read_text(), 10, "gunicorn's line for /health")
    assert lines(log, "ws-1") == [], "a connection is logged when it ends, not before"
    kept_s = time.monotonic() - opened_at  # the relay opened it before its snapshot and ends it after this
    client.close()
    line = one_line(log, "ws-1")
    assert (line["method"], line["status"]) == ("GET", "101") and line["uri"].startswith("/ws?topics=")
    assert int(line["sent"]) > len("HTTP/1.1 101 Switching Protocols\r\n")  # the handshake and the snapshot
    assert int(line["us"]) >= int(kept_s * 1e6)  # its whole life, not the handshake's
    assert TOKEN not in log.read_text() and line["auth"] == "Bearer ***"


def test_an_sse_stream_is_logged_once_when_it_ends(logged_relay, sse):
    relay, log = logged_relay
    stream = sse(relay, topics="T.*", headers={"Authorization": f"Bearer {TOKEN}", "X-Probe": "sse-1"})
    assert stream.status == 200  # its head is out: the relay holds it now
    assert lines(log, "sse-1") == []
    stream.close()
    line = one_line(log, "sse-1")
    assert (line["method"], line["status"]) == ("GET", "200") and line["uri"].startswith("/sse?topics=")
    assert int(line["sent"]) > 0
    assert TOKEN not in log.read_text()


def test_connections_open_at_shutdown_are_logged(logged_relay, ws, sse):
    relay, log = logged_relay
    client = ws(relay, headers={"Authorization": f"Bearer {TOKEN}", "X-Probe": "ws-2"})
    client.read_snapshot()
    stream = sse(relay, headers={"Authorization": f"Bearer {TOKEN}", "X-Probe": "sse-2"})
    assert stream.status == 200
    relay.stop()
    assert one_line(log, "ws-2")["status"] == "101"
    assert one_line(log, "sse-2")["status"] == "200"


def test_a_refused_upgrade_is_logged_by_gunicorn_as_before(logged_relay):
    relay, log = logged_relay
    with requests.Session() as session:  # no token: refused before the upgrade
        session.trust_env = False
        response = session.get(relay.url + "/ws", headers={**upgrade_headers(), "X-Probe": "refused-1"}, timeout=10)
    assert response.status_code == 401
    line = one_line(log, "refused-1")
    assert (line["uri"], line["status"]) == ("/ws", "401")


def test_the_default_line_never_prints_a_token_sent_as_a_basic_user_name(launch_relay, upstream, tmp_path: Path):
    """gunicorn's default format prints %(u)s, the decoded user of `Authorization: Basic`: `curl -u TOKEN:`
    put the token in the log in clear (an outside audit). The relay's default line leaves it out."""
    log = tmp_path / "access.log"
    relay = launch_relay(upstream, {"ACCESS_LOG": str(log), "API_TOKENS": TOKEN})
    assert relay.get("/cache/stats", auth=(TOKEN, "")).status_code == 401
    assert relay.get("/health?probe=basic-1").status_code == 200
    wait_until(lambda: log.exists() and "basic-1" in log.read_text(), 10, "the access lines")
    text = log.read_text()
    assert "/cache/stats" in text and TOKEN not in text, text[-1000:]
