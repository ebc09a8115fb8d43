"""What the relay says about a request it refuses, seen from outside (contract §6, §10): a body that stops
arriving gets a 408 whose head says the connection closes, and malformed query values are a 400 naming
their parameter."""

from __future__ import annotations

import json
import socket

import pytest

RELAY_ENV = {"BODY_TIMEOUT_S": "1"}


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket time-out fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_the_408_for_a_stalled_body_says_connection_close_and_the_connection_closes(relay):
    with socket.create_connection(("127.0.0.1", relay.port), timeout=15) as sock:
        sock.sendall(b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"ev\":")
        reply = read_to_close(sock)  # BODY_TIMEOUT_S is 1 s; the socket's time-out 15 s
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 408 "), reply[:300]
    connection = [line.split(":", 1)[1].strip().lower() for line in lines[1:] if line.lower().startswith("connection:")]
    assert connection == ["close"], head  # it said keep-alive, then closed
    assert json.loads(body) == {"error": "the request body did not arrive within 1 s"}


@pytest.mark.parametrize("target, name", [
    ("/health?strict=abc", "strict"),
    ("/cache/recent?limit=1_0", "limit"),
    ("/cache/recent?limit=%D9%A3", "limit"),  # an Arabic-Indic digit three
    ("/cache/recent?limit=%20%205", "limit"),
    ("/sse?max_hz=1_0", "max_hz"),
    ("/sse?max_hz=1000.0001", "max_hz"),
])
def test_a_malformed_query_value_is_a_400_naming_its_parameter(relay, target, name):
    response = relay.get(target, stream=True)  # /sse: a stream if it were accepted
    try:
        assert response.status_code == 400, (target, response.status_code)
        error = response.json()["error"]
        assert f"'{name}'" in error, error
    finally:
        response.close()


def test_the_max_hz_refusal_quotes_the_value_as_given(relay):
    assert "got '1000.0001'" in relay.get("/sse?max_hz=1000.0001").json()["error"]


@pytest.mark.parametrize("value, status", [("", 200), ("0", 200), ("false", 200), ("no", 200), ("1", 200),
                                           ("true", 200), ("yes", 200)])
def test_health_takes_the_documented_strict_spellings(relay, value, status):
    assert relay.get(f"/health?strict={value}").status_code == status  # the relay is healthy: strict or not, 200


def test_a_path_with_line_breaks_and_terminal_escapes_forges_no_log_line(relay):
    """An outside audit: the 408's log line printed the percent-decoded path, so %0d%0a started a forged
    ERROR line and %1b a terminal escape, with no token needed (an unknown path waits for its body too)."""
    forged = "2026-12-07 12:00:00,000 ERROR [1] webapp.store: FORGED"
    target = "/x%0d%0a" + forged.replace(" ", "%20") + "%1b[2K"
    with socket.create_connection(("127.0.0.1", relay.port), timeout=15) as sock:
        sock.sendall(f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n".encode())
        assert read_to_close(sock).startswith(b"HTTP/1.1 408 ")
    log = relay.log_text()
    assert "FORGED" in log  # the line is there, escaped
    assert not any(line.startswith(forged) for line in log.splitlines()) and "\x1b" not in log
