"""handlers/probes.py: the health listener's requests read, its answers made, the loop's stall judged."""

import json

import pytest

from handlers import probes
from handlers.probes import Probe, Refusal

REPORT = json.dumps({"status": "ok", "reasons": [], "last_seq": 7}).encode()


def test_a_get_of_health_is_a_probe():
    assert probes.read_probe(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n") == Probe("/health")


def test_strict_is_read_from_the_query_as_on_the_main_port():
    assert probes.read_probe(b"GET /health?strict=1 HTTP/1.1\r\n\r\n") == Probe("/health", strict=True)
    assert probes.read_probe(b"GET /health?x=2&strict=yes HTTP/1.0\r\n\r\n") == Probe("/health", strict=True)
    assert probes.read_probe(b"GET /health?strict=0 HTTP/1.1\r\n\r\n") == Probe("/health")
    assert probes.read_probe(b"GET /metrics?strict=1 HTTP/1.1\r\n\r\n") == Probe("/metrics")
    refused = probes.read_probe(b"GET /health?strict=abc HTTP/1.1\r\n\r\n")  # a 400 naming it, as on PORT
    assert isinstance(refused, probes.Refusal) and refused.status == 400 and "'strict'" in refused.message


def test_a_head_request_wants_no_body():
    assert probes.read_probe(b"HEAD /metrics HTTP/1.1\r\n\r\n") == Probe("/metrics", head_only=True)


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /cache/recent HTTP/1.1\r\n\r\n", 404),
    (b"GET /health/ HTTP/1.1\r\n\r\n", 404),
    (b"GET /%68ealth HTTP/1.1\r\n\r\n", 404),
    (b"POST /publish HTTP/1.1\r\n\r\n", 404),  # an unknown path first, as Flask's routing does
    (b"POST /health HTTP/1.1\r\n\r\n", 405),
    (b"OPTIONS /metrics HTTP/1.1\r\n\r\n", 405),
    (b"GET /health HTTP/2.0\r\n\r\n", 400),
    (b"GET /health\r\n\r\n", 400),
    (b"get /health HTTP/1.1\r\n\r\n", 400),
    (b"GET  /health HTTP/1.1\r\n\r\n", 400),
    (b"GET http://host/health HTTP/1.1\r\n\r\n", 400),
    (b"GET /health\x00 HTTP/1.1\r\n\r\n", 400),
    (b"GET /h\xe9alth HTTP/1.1\r\n\r\n", 400),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
])
def test_anything_else_is_refused_with_its_status(head, status):
    refused = probes.read_probe(head)
    assert isinstance(refused, Refusal) and refused.status == status
    if status == 405:
        assert refused.allow == "GET, HEAD"


def test_the_head_is_bounded_while_it_arrives():
    assert probes.oversize(b"GET /health HTTP/1.1\r\n") is None
    assert probes.oversize(b"GET /" + b"a" * 4090).status == 414  # no line end yet, already too long
    assert probes.oversize(b"GET /" + b"a" * 4089 + b"\r\n") is None  # exactly 4094
    assert probes.oversize(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 1400).status == 431
    assert probes.oversize(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 1000 + b"\r\n") is None
    assert probes.head_end(b"GET / HTTP/1.1\r\n") is None
    assert probes.head_end(b"GET / HTTP/1.1\r\n\r\nrest") == 18


def test_health_is_the_loops_report_with_the_loop_state():
    loop = probes.loop_state(0.05, 5.0, 0.002)
    assert loop == {"silent_ms": 50, "stall_ms": 5000, "stalled": False, "report_age_ms": 2}
    status, body = probes.health_answer(REPORT, loop, strict=False)
    assert status == 200
    assert json.loads(body) == {"status": "ok", "reasons": [], "last_seq": 7, "loop": loop}


def test_a_stalled_loop_is_a_503_naming_the_stall_whatever_strict_says():
    loop = probes.loop_state(6.2, 5.0, 6.1)
    assert loop["stalled"] is True
    for strict in (False, True):
        status, body = probes.health_answer(REPORT, loop, strict=strict)
        report = json.loads(body)
        assert status == 503
        assert report["status"] == "degraded" and report["last_seq"] == 7
        assert report["reasons"] == ["event loop stalled: it has not run for 6200 ms (HEALTH_LOOP_STALL_MS=5000)"]


def test_degraded_is_a_503_only_when_strict():
    degraded = json.dumps({"status": "degraded", "reasons": ["upstream disconnected"]}).encode()
    loop = probes.loop_state(0.0, 5.0, 0.0)
    assert probes.health_answer(degraded, loop, strict=False)[0] == 200
    assert probes.health_answer(degraded, loop, strict=True)[0] == 503


def test_no_report_yet_is_a_503():
    status, body = probes.health_answer(None, probes.loop_state(0.0, 5.0, None), strict=False)
    assert status == 503
    assert json.loads(body)["status"] == "degraded"


def test_metrics_get_the_loops_silence_and_their_age():
    text = probes.metrics_answer(b"relayhouse_last_seq 7.0\n", 1.5, 0.25).decode()
    assert text.startswith("relayhouse_last_seq 7.0\n")
    assert "\nrelayhouse_event_loop_silent_seconds 1.500\n" in text
    assert "\nrelayhouse_metrics_age_seconds 0.250\n" in text
    assert text.count("# TYPE ") == 2


def test_a_response_closes_the_connection_and_a_head_answer_has_no_body():
    whole = probes.response(200, b'{"a":1}')
    assert whole.startswith(b"HTTP/1.1 200 OK\r\nConnection: close\r\n")
    assert b"Content-Length: 7\r\n" in whole and whole.endswith(b'\r\n\r\n{"a":1}')
    head = probes.response(200, b'{"a":1}', head_only=True)
    assert b"Content-Length: 7\r\n" in head and head.endswith(b"\r\n\r\n")
    refused = probes.refusal_response(Refusal(405, "no", allow="GET, HEAD"))
    assert refused.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n") and b"Allow: GET, HEAD\r\n" in refused
    assert refused.endswith(b'{"error":"no"}')
