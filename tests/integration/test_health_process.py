"""HEALTH_BIND answered by a process the worker starts, under real gunicorn: /health and /metrics answer
while the worker's gevent loop is blocked, /health says the loop stalled once that passes
HEALTH_LOOP_STALL_MS, and hostile requests on the listener get bounded, clear errors."""

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import requests
from support.procnet import children, stat_fields
from support.relay import Relay, health_port
from support.waiting import wait_until

STALL_CONFIG = "tests/support/stall.conf.py"
BLOCK_S = 6.0
STALL_MS = 1000
ANSWER_WITHIN_S = 2.0  # a wide margin: the design answers within a few ms


@pytest.fixture(scope="module")
def stallable(upstream, tmp_path_factory):
    """One worker (no Redis) under the test config, its health listener, and a way to block its event loop."""
    port = health_port()
    relay = Relay(tmp_path_factory.mktemp("health_thread"), upstream.url,
                  {"HEALTH_BIND": f"127.0.0.1:{port}", "HEALTH_LOOP_STALL_MS": str(STALL_MS)},
                  STALL_CONFIG).start()
    relay.health_url = f"http://127.0.0.1:{port}"
    relay.health_port = port
    yield relay
    relay.stop()


def on_health_port(relay, path, timeout=ANSWER_WITHIN_S):
    return requests.get(relay.health_url + path, timeout=timeout, headers={"Connection": "close"})


def block_loop(relay, seconds):
    """Block the worker's loop for `seconds`; return once the main port has stopped answering."""
    Path(relay.data_dir, f"block-loop-{seconds}").touch()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            relay.http.get(relay.url + "/health", timeout=0.3)
        except requests.Timeout:
            return time.monotonic()
        time.sleep(0.05)
    pytest.fail("the event loop was not blocked")


def raw(port, data, *, read_timeout=5.0, then_wait=0.0):
    """Send `data` (bytes, or a list of chunks with `then_wait` between them), return (what came back, seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        for chunk in data if isinstance(data, list) else [data]:
            try:
                sock.sendall(chunk)
            except OSError:
                break  # the listener answered and closed already
            time.sleep(then_wait)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            return answer, time.monotonic() - started  # what arrived before the reset is the answer
    return answer, time.monotonic() - started


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_health_and_metrics_answer_while_the_event_loop_is_blocked(stallable):
    before = on_health_port(stallable, "/health")
    assert before.status_code == 200, before.text
    assert before.json()["status"] == "ok"
    assert before.json()["loop"]["stalled"] is False
    blocked_at = block_loop(stallable, BLOCK_S)
    answers = []
    while time.monotonic() < blocked_at + BLOCK_S - 1.5:
        started = time.monotonic()
        health = on_health_port(stallable, "/health")  # a time-out here fails the test
        metrics = on_health_port(stallable, "/metrics")
        answers.append((started - blocked_at, time.monotonic() - started, health, metrics))
        time.sleep(0.2)
    assert answers
    for _, took, _health, metrics in answers:
        assert took < 2 * ANSWER_WITHIN_S
        assert metrics.status_code == 200
        assert "relayhouse_events_in_total" in metrics.text
        assert "relayhouse_event_loop_silent_seconds" in metrics.text
    # past the stall bound (with room for the heartbeat's period), /health is a 503 naming the stall
    late = [(at, health) for at, _, health, _ in answers if at > STALL_MS / 1000 + 0.5]
    assert late, answers
    for _, health in late:
        assert health.status_code == 503, health.text
        body = health.json()
        assert body["status"] == "degraded"
        assert body["loop"]["stalled"] is True and body["loop"]["silent_ms"] > STALL_MS
        assert any(reason.startswith("event loop stalled") for reason in body["reasons"])
    silent = [float(line.split()[1]) for line in late_metrics(answers) if line.startswith("relayhouse_event_loop_silent")]
    assert max(silent) > STALL_MS / 1000
    # the loop runs again: healthy again, on both ports
    deadline = blocked_at + BLOCK_S + 10
    while time.monotonic() < deadline:
        after = on_health_port(stallable, "/health", timeout=5)
        if after.status_code == 200:
            break
        time.sleep(0.2)
    assert after.status_code == 200, after.text
    assert after.json()["loop"]["stalled"] is False
    assert stallable.health()["status"] == "ok"


def late_metrics(answers):
    return [line for at, _, _, metrics in answers if at > STALL_MS / 1000 + 0.5 for line in metrics.text.splitlines()]


def test_the_main_port_serves_its_routes_and_not_the_loop_section(stallable):
    health = stallable.health()
    assert health["status"] == "ok" and "loop" not in health  # answered by the loop itself, as before
    assert stallable.get("/metrics").status_code == 200
    assert "relayhouse_event_loop_silent_seconds" not in stallable.get("/metrics").text
    assert stallable.get("/cache/recent").status_code == 200
    assert stallable.get("/openapi.json").status_code == 200
    # and the health listener still opens nothing else
    answer, _ = raw(stallable.health_port, b"GET /cache/recent HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 404
    assert answer.endswith(b'{"error":"the health listener serves only /health and /metrics"}')


def test_a_strict_health_and_a_head_request_on_the_health_listener(stallable):
    assert on_health_port(stallable, "/health?strict=1").status_code == 200
    answer, _ = raw(stallable.health_port, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 200
    assert answer.endswith(b"\r\n\r\n")  # headers only
    assert b"Content-Length: 0" not in answer


HOSTILE = [
    ("a request line over 4094 bytes", b"GET /health?" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 414),
    ("a head over 8 KiB", b"GET /health HTTP/1.1\r\n" + b"X-Pad: " + b"b" * 3000 + b"\r\n" * 1
     + b"X-Pad2: " + b"b" * 3000 + b"\r\nX-Pad3: " + b"b" * 3000 + b"\r\n\r\n", 431),
    ("a POST", b"POST /health HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405),
    ("a DELETE of /metrics", b"DELETE /metrics HTTP/1.1\r\n\r\n", 405),
    ("another path", b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 404),
    ("a path with a suffix", b"GET /health/../cache/recent HTTP/1.1\r\n\r\n", 404),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ("no version", b"GET /health\r\n\r\n", 400),
    ("an absolute target", b"GET http://x/health HTTP/1.1\r\n\r\n", 400),
]


@pytest.mark.parametrize(("what", "request_bytes", "status"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_bad_request_on_the_health_listener_gets_a_clear_error(stallable, what, request_bytes, status):
    answer, took = raw(stallable.health_port, request_bytes)
    assert status_of(answer) == status, answer[:300]
    assert b'{"error":"' in answer
    assert took < 3
    if status == 405:
        assert b"Allow: GET, HEAD" in answer


def test_a_slow_loris_is_cut_off_and_does_not_hold_up_the_probes(stallable):
    # a head trickling in a byte at a time never completes: 408 after the read time-out (2 s)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", stallable.health_port), timeout=10) as slow:
        slow.sendall(b"GET /hea")
        assert on_health_port(stallable, "/health").status_code == 200  # answered meanwhile
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
    assert status_of(answer) == 408, answer
    assert 1.5 < time.monotonic() - started < 5


def test_more_connections_than_the_bound_are_refused_at_once(stallable):
    idle = [socket.create_connection(("127.0.0.1", stallable.health_port), timeout=10) for _ in range(16)]
    try:
        time.sleep(0.3)  # let the thread take them all
        answer, took = raw(stallable.health_port, b"GET /health HTTP/1.1\r\n\r\n")
        assert status_of(answer) == 503 and b"busy" in answer, answer
        assert took < 1
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert on_health_port(stallable, "/health").status_code == 200


def nice_of(pid: int) -> int:
    return int(stat_fields(pid)[16])


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie not reaped yet."""
    try:
        return stat_fields(pid)[0] == "Z"
    except OSError:
        return True


def health_child(relay, not_child: int | None = None) -> tuple[int, int]:
    """(the worker, its health listener process) once the worker has started one (other than `not_child`)."""
    def pair():
        workers = [pid for pid in children(relay.proc.pid) if not gone(pid)]
        found = [pid for pid in children(workers[0]) if not gone(pid)] if len(workers) == 1 else []
        return (workers[0], found[0]) if len(found) == 1 and found[0] != not_child else None
    return wait_until(pair, 20, "a worker and its health listener process")


def answers_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_the_listener_process_runs_at_health_nice_and_the_worker_does_not(stallable):
    worker, child = health_child(stallable)
    assert on_health_port(stallable, "/health").status_code in (200, 503)  # it serves: its start-up is done
    assert nice_of(worker) == 0
    if "keeps the worker's priority" in stallable.log_text():  # no CAP_SYS_NICE where the suite runs
        assert nice_of(child) == 0
    else:
        assert nice_of(child) == -10
    # it holds the listener and its map, nothing else of the worker's: no client, upstream, store or pipe
    # (the probe above may still be open in its serving thread for LINGER_S: wait for it to close)
    def held():
        return [os.readlink(f"/proc/{child}/fd/{fd}") for fd in os.listdir(f"/proc/{child}/fd") if int(fd) > 2]

    wait_until(lambda: sum(name.startswith("socket:") for name in held()) == 1, 3, "only the listener open",
               describe=lambda: repr(held()))
    assert all(name.startswith(("socket:", "/memfd:relayhouse-health")) for name in held()), held()


def test_a_listener_process_that_dies_is_started_again(stallable):
    worker, child = health_child(stallable)
    os.kill(child, signal.SIGKILL)
    started = time.monotonic()
    _, again = health_child(stallable, not_child=child)
    assert time.monotonic() - started < 5
    wait_until(lambda: "ended (signal 9): starting another" in stallable.log_text(), 5, "the death logged")
    answer = on_health_port(stallable, "/health")
    assert answer.status_code == 200 and answer.json()["status"] == "ok", answer.text


def test_the_listener_process_ends_with_its_worker(upstream, tmp_path):
    port = health_port()
    relay = Relay(tmp_path, upstream.url, {"HEALTH_BIND": f"127.0.0.1:{port}"}).start()
    try:
        worker, child = health_child(relay)
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: gone(child), 5, "the health listener process gone with its worker")
        health_child(relay, not_child=child)  # gunicorn's next worker starts its own
        wait_until(lambda: answers_ok(f"http://127.0.0.1:{port}/health"), 20, "the next worker's listener answering")
    finally:
        relay.stop()
