"""`flask --app wsgi record URL FILE` and `flask --app wsgi replay FILE`: a feed captured, then served again
through the relay to its clients (contract §9)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from massive import WebSocketClient
from support.asyncrun import run_in_own_loop
from support.relay import RELAY_VARIABLES, ROOT, free_port
from support.waiting import wait_until

from handlers.capture import read_capture
from handlers.polygon import is_status

FLASK = ROOT / ".venv" / "bin" / "flask"
CAPTURE = ROOT / "tests" / "fixtures" / "polygon_capture.jsonl"
UPSTREAM_INIT = [{"action": "auth", "params": "vendor-key-1"}, {"action": "subscribe", "params": "T.*,Q.*"}]


class FlaskCommand:
    """One `flask --app wsgi ...` process of the test's own, its output in a log file."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = tmp_path / f"flask-{args[0]}-{time.monotonic_ns()}.log"
        environment = {k: v for k, v in os.environ.items() if k not in RELAY_VARIABLES}
        environment.update({"CLICKHOUSE_URL": "none", "DATA_DIR": str(tmp_path / "data"),
                            "PYTHONUNBUFFERED": "1", **(env or {})})
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([str(FLASK), "--app", "wsgi", *args], cwd=ROOT, env=environment,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout_s: float = 20) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"flask {self.proc.args[3]} still running:\n{self.output()}") from None

    def stop(self) -> None:
        """Ctrl-C, as a user would; KILL if that is not enough."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def flask_command(tmp_path):
    commands: list[FlaskCommand] = []

    def start(*args: str, env: dict[str, str] | None = None) -> FlaskCommand:
        command = FlaskCommand(tmp_path, *args, env=env)
        commands.append(command)
        return command

    yield start
    for command in commands:
        command.stop()


def start_replay(flask_command, capture: Path, *options: str) -> tuple[FlaskCommand, SimpleNamespace]:
    """`flask replay` on a free port; returns it and an upstream stand-in for launch_relay."""
    port = free_port()
    replay = flask_command("replay", str(capture), "--port", str(port), *options)
    wait_until(lambda: "waiting for a peer" in replay.output() or replay.proc.poll() is not None, 20,
               "replay to listen", describe=replay.output)
    assert replay.proc.poll() is None, replay.output()
    return replay, SimpleNamespace(url=f"ws://127.0.0.1:{port}/feed")


def market_elements(frames) -> list[Any]:
    return [el for f in frames for el in json.loads(f.payload) if not is_status(el)]


def test_record_then_replay_reproduces_the_feed_through_the_relay(fresh_upstream, flask_command, launch_relay,
                                                                    ws, tmp_path):
    captured = read_capture(CAPTURE.read_bytes().splitlines())[:60]
    odd = [b"not json, kept verbatim", b'[{"ev": "T", "sym": "SPACED"}]']  # text frames that are not compact JSON
    binary = bytes(range(256))
    out = tmp_path / "feed.jsonl"
    total = len(captured) + len(odd) + 1

    # -- record, with UPSTREAM_INIT and UPSTREAM_HEADERS as the relay would send them
    recorder = flask_command("record", fresh_upstream.url, str(out), "--frames", str(total),
                             env={"UPSTREAM_INIT": json.dumps(UPSTREAM_INIT),
                                  "UPSTREAM_HEADERS": json.dumps({"X-Feed-Client": "recorder"})})
    connection = fresh_upstream.wait_for_connections(1, timeout_s=20)
    assert [json.loads(m) for m in fresh_upstream.wait_for_received(connection, 2)] == UPSTREAM_INIT
    assert connection.headers["x-feed-client"] == "recorder"
    before_ms = int(time.time() * 1000)
    for frame in captured:
        assert fresh_upstream.send(frame.payload.decode()) == 1
    for text in odd:
        fresh_upstream.send(text.decode())
    fresh_upstream.send(binary)
    assert recorder.wait() == 0, recorder.output()
    after_ms = int(time.time() * 1000)
    assert f"recorded {total} frames" in recorder.output()

    recorded = read_capture(out.read_bytes().splitlines())
    assert [(f.payload, f.binary) for f in recorded] == (
        [(f.payload, False) for f in captured] + [(t, False) for t in odd] + [(binary, True)])
    assert all(before_ms <= f.ts <= after_ms for f in recorded)
    assert [f.ts for f in recorded] == sorted(f.ts for f in recorded)
    assert json.loads(out.read_text().splitlines()[5])["frame"] == json.loads(captured[5].payload)

    # -- replay the recording (the fixture's pace: ~2 s; at speed 4, ~0.5 s) into a relay
    replay, feed = start_replay(flask_command, out, "--speed", "4")
    relay = launch_relay(feed)
    client = ws(relay, since=0, snapshot=0)
    client.read_snapshot()
    expected = market_elements(captured) + ["not json, kept verbatim", {"ev": "T", "sym": "SPACED"}]
    events = client.wait_for_events(len(expected) + 1, timeout_s=20)
    assert [e["data"] for e in events[:-1]] == expected
    assert (events[-1]["raw"], events[-1]["data"]) == (True, base64.b64encode(binary).decode())
    health = relay.health()
    assert [s["status"] for s in health["upstream"]["statuses"]] == ["connected", "auth_success", "success", "success"]
    assert health["upstream"]["events"] == len(expected) + 1
    wait_until(lambda: "replayed" in replay.output(), 10, "replay to finish", describe=replay.output)


def test_replay_keeps_the_recorded_pace_times_the_speed(flask_command, launch_relay, ws):
    frames = read_capture(CAPTURE.read_bytes().splitlines())
    recorded_s = (frames[-1].ts - frames[0].ts) / 1000
    speed = 2.0
    replay, feed = start_replay(flask_command, CAPTURE, "--speed", str(speed))
    relay = launch_relay(feed)
    client = ws(relay, since=0, snapshot=0)
    client.read_snapshot()
    events = client.wait_for_events(len(market_elements(frames)), timeout_s=30)
    played_s = (events[-1]["ts"] - events[0]["ts"]) / 1000
    # the market frames' own span at this speed; a busy machine only makes it longer
    first_market = next(f for f in frames if not all(is_status(e) for e in json.loads(f.payload)))
    expected_s = (frames[-1].ts - first_market.ts) / 1000 / speed
    assert expected_s * 0.9 <= played_s <= expected_s + 2.0, (played_s, expected_s, recorded_s)
    assert [e["data"] for e in events] == market_elements(frames)


def test_the_official_client_prints_live_trades_from_a_looping_replay(flask_command, launch_relay):
    captured = {(e["sym"], e["q"]) for e in market_elements(read_capture(CAPTURE.read_bytes().splitlines()))
                if e["ev"] == "T"}
    _, feed = start_replay(flask_command, CAPTURE, "--speed", "3", "--loop")
    relay = launch_relay(feed)
    trades: list = []

    async def main() -> None:
        # The README example with its host changed: feed="HOST:PORT", secure=False.
        client = WebSocketClient(api_key="any", feed=f"127.0.0.1:{relay.port}", market="stocks", secure=False,
                                 subscriptions=["T.*"], max_reconnects=0)

        async def handle_msg(msgs) -> None:
            trades.extend(msgs)

        task = asyncio.create_task(client.connect(handle_msg))
        deadline = time.monotonic() + 20
        while len(trades) < 40 and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.05)
        await client.close()
        await asyncio.wait_for(task, 10)

    run_in_own_loop(main())
    assert len(trades) >= 40
    assert {type(t).__name__ for t in trades} == {"EquityTrade"}
    assert {(t.symbol, t.sequence_number) for t in trades} <= captured


def test_replay_names_the_bad_line_of_a_broken_capture(flask_command, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"ts":1,"frame":[]}\n{"ts":2,"frame":[]\n')
    replay = flask_command("replay", str(broken), "--port", "0")
    assert replay.wait() == 1
    assert "line 2: not JSON" in replay.output()


def test_replay_honouring_subscriptions_sends_the_relay_only_what_its_clients_subscribed_to(flask_command,
                                                                                          launch_relay, ws):
    _, feed = start_replay(flask_command, CAPTURE, "--speed", "4", "--loop", "--honour-subscriptions")
    relay = launch_relay(feed, {"UPSTREAM_SUBSCRIBE": "polygon"})
    client = ws(relay, topics="T.NVDA", snapshot=0)
    client.read_snapshot()
    wait_until(lambda: relay.health()["upstream"]["subscriptions"] == ["T.NVDA"], 10, "T.NVDA upstream")
    client.wait_for_events(3, timeout_s=20)
    recent = relay.get("/cache/recent", params={"limit": 1000}).json()["events"]
    assert {e["topic"] for e in recent} == {"T.NVDA"}, "the replay sent topics nobody subscribed to"
    statuses = relay.health()["upstream"]["statuses"]
    assert {"status": "success", "message": "subscribed to: T.NVDA"} in [
        {"status": s["status"], "message": s["message"]} for s in statuses]
