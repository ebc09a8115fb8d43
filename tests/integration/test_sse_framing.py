"""/sse as HTTP clients other than ours see it (contract §4, docs/api.md): no Content-Length on the stream
(chunked over HTTP/1.1, a plain body ended by the close over HTTP/1.0), HEAD answered with headers only,
Node's strict parser takes it, and /openapi.json describes Last-Event-ID as the relay sends it."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time

import pytest
from support.events import feed, seqs_of, trades, unique_sym

RELAY_ENV: dict[str, str] = {}


def read_until(sock: socket.socket, done, timeout_s: float = 10) -> bytes:
    """Bytes from `sock` until `done(data)`, the server closes, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while not done(data):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    return data


def split_head(data: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers by lower-case name, the bytes after the head)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:300]!r}"
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"{name} twice in {head!r}"
        headers[name.lower()] = value.strip()
    return status, headers, rest


def dechunk(body: bytes) -> bytes:
    """The data of the complete chunks in `body` (an incomplete last one is left out)."""
    out = b""
    while b"\r\n" in body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0 or len(body) < size + 2:
            break
        assert body[size:size + 2] == b"\r\n", "a chunk not ended by CRLF"
        out, body = out + body[:size], body[size + 2:]
    return out


def event_ids(text: bytes) -> list[int]:
    return [int(seq) for seq in re.findall(rb"^id: (\d+)$", text, re.M)]


def request(target: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    return f"{method} {target} {version}\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()


def test_an_http_1_1_stream_is_chunked_and_has_no_content_length(relay, upstream):
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 2, sym))
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(request(relay.target("/sse", topics=f"T.{sym}", snapshot=2)))
        data = read_until(sock, lambda d: seqs[-1] in event_ids(dechunk(d.partition(b"\r\n\r\n")[2])))
    status, headers, body = split_head(data)
    assert status == "HTTP/1.1 200 OK"
    assert "content-length" not in headers, headers  # next to chunked, RFC 9112 §6.3 makes a client refuse it
    assert headers.get("transfer-encoding") == "chunked", headers
    assert event_ids(dechunk(body)) == seqs


def test_an_http_1_0_client_gets_the_events_in_a_plain_body_until_it_closes(relay, upstream):
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 3, sym))
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(request(relay.target("/sse", topics=f"T.{sym}", snapshot=3), version="HTTP/1.0"))
        data = read_until(sock, lambda d: seqs[-1] in event_ids(d))
        live = feed(relay, upstream, trades(3, 4, sym))
        data += read_until(sock, lambda d: live[-1] in event_ids(data + d))
    status, headers, body = split_head(data)
    assert status == "HTTP/1.0 200 OK"
    assert "content-length" not in headers, headers  # `Content-Length: 0` made it an empty body
    assert "transfer-encoding" not in headers, headers
    assert headers.get("connection") == "close", headers
    assert body.startswith(b"retry: 1000\n\n"), body[:200]
    assert event_ids(body) == seqs + live


def test_head_gets_the_headers_only_and_no_client_stays_registered(relay):
    clients_before = relay.health()["clients"]
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(request(relay.target("/sse", snapshot=2), method="HEAD"))
        data = read_until(sock, lambda d: b"\r\n\r\n" in d)
        status, headers, after_head = split_head(data + read_until(sock, lambda d: False, timeout_s=1.5))
        assert status == "HTTP/1.1 200 OK"
        assert headers.get("content-type", "").startswith("text/event-stream"), headers
        assert headers.get("content-length") in (None,), headers  # a stream has no length, not 0
        assert after_head == b"", f"a body after the head of a HEAD: {after_head[:200]!r}"
        assert relay.health()["clients"] <= clients_before  # nothing registered, while the connection is open
        # the connection is still plain HTTP: the next request on it gets its own answer
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status, headers, _ = split_head(read_until(sock, lambda d: False))
        assert status == "HTTP/1.1 200 OK" and headers["content-type"] == "application/json"


NODE_CLIENT = r"""
const http = require('http');
const req = http.get(process.argv[1], res => {
  let text = '';
  res.setEncoding('utf8');
  res.on('data', chunk => {
    text += chunk;
    const message = text.split('\n\n').find(m => m.includes('event: event'));
    if (message) { console.log(JSON.stringify({status: res.statusCode, message})); process.exit(0); }
  });
});
req.on('error', err => { console.log(JSON.stringify({error: `${err.code}: ${err.message}`})); process.exit(1); });
setTimeout(() => { console.log(JSON.stringify({error: 'no event within 10 s'})); process.exit(2); }, 10000);
"""


def test_nodes_http_client_reads_an_event_from_the_stream(relay, upstream):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: Node's HTTP parser (strict about Content-Length) cannot be tried")
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 1, sym))
    url = relay.url + relay.target("/sse", topics=f"T.{sym}", snapshot=1)
    done = subprocess.run([node, "-e", NODE_CLIENT, url], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (done.stdout, done.stderr)  # was HPE_INVALID_TRANSFER_ENCODING
    got = json.loads(done.stdout)
    assert got["status"] == 200
    assert event_ids(got["message"].encode()) == seqs, got


def test_last_event_id_is_described_as_the_id_the_relay_sends(relay, upstream, sse):
    documented = next(p for p in relay.get("/openapi.json").json()["paths"]["/sse"]["get"]["parameters"]
                      if p["name"] == "Last-Event-ID")
    schema = documented["schema"]
    assert schema["type"] == "string" and "<epoch>:<seq>" in documented["description"]
    sym = unique_sym()
    seqs = feed(relay, upstream, trades(0, 3, sym))
    first = sse(relay, topics=f"T.{sym}", snapshot=3)
    first.events(3)
    sent_id = first.messages[0].id
    assert re.search(schema["pattern"], sent_id), (sent_id, schema)  # what a browser sends back fits
    for fitting in (sent_id, str(seqs[0])):
        assert re.search(schema["pattern"], fitting)
        resumed = sse(relay, topics=f"T.{sym}", headers={"Last-Event-ID": fitting})
        assert resumed.status == 200
        assert seqs_of(resumed.events(2)) == seqs[1:]
    for off_schema in ("E:x", "-1", "E:1.5", "1 2"):
        assert not re.search(schema["pattern"], off_schema)
        refused = sse(relay, headers={"Last-Event-ID": off_schema})
        assert refused.status == 400 and "Last-Event-ID" in refused.body_json()["error"], off_schema
