"""The Polygon/Massive socket /<market> (contract §5), with the vendor's official Python clients and a bare one.

`massive` is the official client today; `polygon` (polygon-api-client) is the
same client under its old name. Both are pointed at the relay exactly as their
README says, with only the host changed: `feed="RELAY_HOST:PORT", secure=False`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support.asyncrun import run_in_own_loop
from support.clients import RawWsClient, upgrade_headers
from support.events import feed, unique_sym
from support.waiting import wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

KEYS = ("pk-alpha-1", "pk-bravo-2")
RELAY_ENV = {"API_TOKENS": ",".join(KEYS)}
OFFICIAL_CLIENTS = ("massive", "polygon")
MARKETS = ("stocks", "options", "forex", "crypto", "indices")


# -- a bare Polygon-protocol client ---------------------------------------------------------


class PolygonSocket:
    """A plain WebSocket client speaking the vendor protocol, filing data and status messages apart."""

    def __init__(self, url: str, *, compression: str | None = None) -> None:
        self.conn: ClientConnection = connect(url, legacy=True, compression=compression, proxy=None,
                                              ping_interval=None, max_size=None, open_timeout=10, close_timeout=3)
        self.frames: list[list[dict[str, Any]]] = []
        self.data: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.close_code: int | None = None

    def send(self, action: str, params: Any = None) -> None:
        self.conn.send(json.dumps({"action": action, "params": params}))

    def read(self, timeout_s: float) -> list[dict[str, Any]]:
        try:
            raw = self.conn.recv(timeout=timeout_s)
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd is not None else None
            raise
        assert isinstance(raw, str), "the relay sends text frames"
        frame = json.loads(raw)
        assert isinstance(frame, list) and frame, f"every frame is a non-empty JSON array: {raw[:200]}"
        kinds = {item["ev"] == "status" for item in frame}
        assert len(kinds) == 1, f"a frame is all statuses or all data: {raw[:300]}"
        self.frames.append(frame)
        (self.statuses if kinds == {True} else self.data).extend(frame)
        return frame

    def next_statuses(self, timeout_s: float = 10) -> list[dict[str, Any]]:
        """Read until a status frame arrives (data frames on the way are filed); return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            frame = self.read(max(0.01, deadline - time.monotonic()))
            if frame[0]["ev"] == "status":
                return frame

    def wait_data(self, count: int, timeout_s: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(self.data) < count:
            try:
                self.read(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(f"{len(self.data)} of {count} data elements within {timeout_s}s") from None
        return self.data

    def quiet_for(self, seconds: float) -> bool:
        """True when nothing at all arrives for `seconds`."""
        try:
            self.read(seconds)
        except TimeoutError:
            return True
        return False

    def expect_close(self, timeout_s: float = 10) -> int | None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.read(max(0.01, deadline - time.monotonic()))
            except ConnectionClosed:
                return self.close_code

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def polygon_socket() -> Iterator[Callable[..., PolygonSocket]]:
    sockets: list[PolygonSocket] = []

    def open_socket(relay, market: str = "stocks", **kwargs: Any) -> PolygonSocket:
        sock = PolygonSocket(relay.ws_url(f"/{market}"), **kwargs)
        sockets.append(sock)
        return sock

    yield open_socket
    for sock in sockets:
        sock.close()


def authenticated(sock: PolygonSocket, key: str = KEYS[0]) -> PolygonSocket:
    assert sock.next_statuses() == [{"ev": "status", "status": "connected", "message": "Connected Successfully"}]
    sock.send("auth", key)
    assert sock.next_statuses() == [{"ev": "status", "status": "auth_success", "message": "authenticated"}]
    return sock


def market_items(sym: str, other: str) -> list[dict[str, Any]]:
    """Trades of two symbols, quotes and minute bars of `sym` and `other`, interleaved; `q` numbers them."""
    items = []
    for n in range(60):
        items.append({"ev": "T", "sym": sym if n % 3 else other, "i": str(n), "x": 4, "p": 100 + n / 8,
                      "s": 100, "c": [0], "t": 1764124800000 + n, "q": n, "z": 3})
        items.append({"ev": "Q", "sym": sym if n % 2 else other, "bx": 12, "bp": 99.9, "bs": 300, "ax": 11,
                      "ap": 100.1, "as": 200, "c": 0, "t": 1764124800000 + n, "q": 1000 + n, "z": 3})
        if n % 20 == 0:
            items.append({"ev": "AM", "sym": sym, "v": 1000, "o": 100, "c": 101, "h": 102, "l": 99,
                          "s": 1764124740000, "e": 1764124800000, "q": 2000 + n})
    return items


# -- the official clients ----------------------------------------------------------------------


def official(module: str, relay, key: str, subscriptions: list[str]):
    """The vendor's client exactly as its README builds it, with only the host changed."""
    websocket = importlib.import_module(f"{module}.websocket")
    return websocket.WebSocketClient(api_key=key, feed=f"127.0.0.1:{relay.port}", market="stocks",
                                     secure=False, subscriptions=subscriptions, max_reconnects=0)


async def run_official(client, received: list, until: Callable[[], bool], *,
                       feeder: Callable[[], None] | None = None, timeout_s: float = 20) -> None:
    """Run `client.connect` until `until()` holds, feeding from a thread meanwhile; then close it."""
    async def on_messages(messages: list) -> None:
        received.extend(messages)

    task = asyncio.create_task(client.connect(on_messages))
    try:
        if feeder is not None:
            await asyncio.wait_for(asyncio.to_thread(feeder), timeout_s)
        deadline = time.monotonic() + timeout_s
        while not until():
            if task.done():
                task.result()  # raises what ended it
                raise AssertionError("the client stopped before receiving what it should")
            assert time.monotonic() < deadline, f"timed out with {len(received)} messages"
            await asyncio.sleep(0.02)
    finally:
        if not task.done():
            await client.close()
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("module", OFFICIAL_CLIENTS)
def test_the_official_client_gets_exactly_its_topics_in_order(relay, upstream, module):
    sym, other, marker = unique_sym(), unique_sym(), unique_sym()
    client = official(module, relay, KEYS[1], ["T.*", f"Q.{sym}"])
    items = market_items(sym, other)
    expected = [(i["ev"], i["sym"], i["q"]) for i in items if i["ev"] == "T" or (i["ev"] == "Q" and i["sym"] == sym)]
    received: list = []

    def feeder() -> None:
        wait_until(lambda: send_marker(), 15, "the client's subscription to go live", interval_s=0.05)
        upstream.emit(items, batch=25)

    def send_marker() -> bool:
        if any(getattr(m, "symbol", None) == marker for m in received):
            return True
        upstream.emit([{"ev": "T", "sym": marker, "p": 1.0, "s": 1, "q": -1}], batch=1)
        return False

    def got_all() -> bool:
        return len([m for m in received if m.symbol != marker]) >= len(expected)

    run_in_own_loop(run_official(client, received, got_all, feeder=feeder))

    got = [m for m in received if m.symbol != marker]
    assert [(m.event_type, m.symbol, m.sequence_number) for m in got] == expected
    trade = next(m for m in got if m.event_type == "T")
    assert type(trade).__name__ == "EquityTrade" and (trade.price, trade.size, trade.conditions) == (100.0, 100, [0])


@pytest.mark.parametrize("module", OFFICIAL_CLIENTS)
def test_the_official_client_with_a_wrong_key_is_refused(relay, module):
    client = official(module, relay, "pk-not-a-relay-token", ["T.*"])
    auth_error = importlib.import_module(f"{module}.exceptions").AuthError

    with pytest.raises(auth_error, match="authentication failed"):
        run_in_own_loop(run_official(client, [], lambda: False, timeout_s=10))


# -- the protocol, frame by frame --------------------------------------------------------------


def test_no_token_is_asked_before_the_upgrade_the_key_comes_in_auth(relay):
    with requests.Session() as session:
        session.trust_env = False
        refused = session.get(relay.url + "/ws", headers=upgrade_headers(), timeout=10)
    assert refused.status_code == 401  # /ws wants ?token= before the upgrade

    sock = RawWsClient("127.0.0.1", relay.port, "/stocks")  # no token: the handshake succeeds (101)
    sock.close()


@pytest.mark.parametrize("market", MARKETS)
def test_every_market_path_greets_with_connected(relay, polygon_socket, market):
    authenticated(polygon_socket(relay, market))


def test_other_paths_are_not_markets(relay):
    response = relay.get("/futures", headers=upgrade_headers())
    assert response.status_code == 404 and "error" in response.json()
    plain = relay.get("/stocks")
    assert plain.status_code == 400 and "WebSocket" in plain.json()["error"]


def test_a_wrong_key_gets_auth_failed_then_the_connection_closes(relay, upstream, polygon_socket):
    sock = polygon_socket(relay)
    assert sock.next_statuses()[0]["status"] == "connected"
    sock.send("subscribe", "T.*")
    assert sock.next_statuses()[0]["status"] == "error"  # not authenticated yet
    sock.send("auth", KEYS[0] + "x")
    assert sock.next_statuses() == [{"ev": "status", "status": "auth_failed", "message": "authentication failed"}]
    assert sock.expect_close() == 1008
    assert sock.data == []


def test_nothing_but_statuses_before_the_auth_reply(relay, upstream, polygon_socket):
    sym = unique_sym()
    sock = polygon_socket(relay)
    sock.send("subscribe", f"T.{sym}")  # refused: not authenticated
    upstream.emit([{"ev": "T", "sym": sym, "p": 1.0, "s": 1}], batch=1)
    sock.send("auth", KEYS[0])
    while sock.frames[-1:] == [] or sock.frames[-1][0]["status"] != "auth_success":
        sock.next_statuses()
    assert [f[0]["status"] for f in sock.frames] == ["connected", "error", "auth_success"]
    assert sock.data == []


def test_compression_is_never_negotiated(relay, polygon_socket):
    sock = polygon_socket(relay, compression="deflate")  # what the official clients offer
    assert sock.conn.protocol.extensions == []
    authenticated(sock)


def test_subscribe_acks_each_trimmed_topic_and_unsubscribe_stops_the_data(relay, upstream, polygon_socket):
    sym, marker = unique_sym(), unique_sym()
    sock = authenticated(polygon_socket(relay))
    sock.send("subscribe", f" T.{sym} , Q.{sym},,T*bad , T.{marker}")
    assert sock.next_statuses() == [
        {"ev": "status", "status": "success", "message": f"subscribed to: T.{sym}"},
        {"ev": "status", "status": "success", "message": f"subscribed to: Q.{sym}"},
        {"ev": "status", "status": "success", "message": f"subscribed to: T.{marker}"},
        {"ev": "status", "status": "error", "message": "invalid topic 'T*bad': '*' may only end a topic pattern: 'T*bad'"},
    ]
    items = market_items(sym, unique_sym())
    upstream.emit(items, batch=40)
    wanted = [i for i in items if i["sym"] == sym and i["ev"] in ("T", "Q")]
    assert sock.wait_data(len(wanted)) == wanted

    sock.send("unsubscribe", f"Q.{sym}")
    assert sock.next_statuses() == [{"ev": "status", "status": "success", "message": f"unsubscribed to: Q.{sym}"}]
    sock.data.clear()
    upstream.emit(items, batch=40)
    upstream.emit([{"ev": "T", "sym": marker, "q": 1}], batch=1)  # the last one: all before it has arrived
    sock.wait_data(len([i for i in items if i["sym"] == sym and i["ev"] == "T"]) + 1)
    assert sock.data == [i for i in items if i["sym"] == sym and i["ev"] == "T"] + [{"ev": "T", "sym": marker, "q": 1}]


def test_a_big_batch_arrives_as_arrays_under_one_mib(relay, upstream, polygon_socket):
    sym = unique_sym()
    sock = authenticated(polygon_socket(relay))
    sock.send("subscribe", f"T.{sym}")
    sock.next_statuses()
    items = [{"ev": "T", "sym": sym, "q": n, "pad": "x" * 1000} for n in range(3000)]  # one 3 MB upstream frame
    upstream.emit(items, batch=len(items))
    assert sock.wait_data(len(items), timeout_s=20) == items
    data_frames = [f for f in sock.frames if f[0]["ev"] != "status"]
    assert len(data_frames) >= 3
    assert all(len(json.dumps(f, separators=(",", ":"))) < 1 << 20 for f in data_frames)


def test_upstream_status_frames_are_not_events_but_show_on_health(relay, upstream, polygon_socket):
    sym = unique_sym()
    sock = authenticated(polygon_socket(relay))
    sock.send("subscribe", "*")
    sock.next_statuses()
    before = relay.health()["last_seq"]
    upstream.emit([{"ev": "status", "status": "success", "message": f"subscribed to: T.{sym}"}], batch=1)
    upstream.emit([{"ev": "status", "status": "max_connections", "message": "Maximum number of connections exceeded."},
                   {"ev": "T", "sym": sym, "q": 1}], batch=2)

    assert sock.wait_data(1) == [{"ev": "T", "sym": sym, "q": 1}]
    health = relay.health()
    assert health["last_seq"] == before + 1  # only the trade was numbered
    assert [(s["status"], s["message"]) for s in health["upstream"]["statuses"][-2:]] == [
        ("success", f"subscribed to: T.{sym}"),
        ("max_connections", "Maximum number of connections exceeded."),
    ]
    assert health["upstream"]["last_error"] == "upstream status max_connections: Maximum number of connections exceeded."


def test_a_flood_of_long_upstream_error_statuses_is_bounded_in_health_and_in_the_log(relay, upstream):
    """An audit: 1 KB error statuses at full rate wrote 148,000 log lines (160 MB) in 6 s, and 3 MB ones made
    /health 66 MB. Each status's text is kept to 500 characters, its line written once per 10 s."""
    log_start = relay.log_size()
    upstream.emit([{"ev": "status", "status": "error", "message": f"bad {i} " + "x" * 100_000} for i in range(300)],
                  batch=10)
    wait_until(lambda: relay.health()["upstream"]["statuses"][-1]["message"].startswith("bad 299 "), 10,
               "the last status")
    health = relay.health()
    assert all(len(s["message"]) <= 503 for s in health["upstream"]["statuses"])
    assert len(health["upstream"]["last_error"]) < 600 and len(json.dumps(health)) < 100_000
    lines = [line for line in relay.log_text(log_start).splitlines() if "upstream status error" in line]
    assert len(lines) <= 2 and all(len(line) < 700 for line in lines), [line[:120] for line in lines]  # 300 before


# -- relays of their own -----------------------------------------------------------------------


def test_a_slow_consumer_gets_a_status_then_1013_and_nobody_else_waits(fresh_upstream, launch_relay, polygon_socket):
    queue_max_bytes = 256 * 1024
    pad = "x" * 1000
    # enough to fill the stalled socket's kernel buffers and the relay's bound twice over
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    count = math.ceil(2 * (wmem_max + queue_max_bytes + 65536) / (len(pad) + 100))
    relay = launch_relay(fresh_upstream, {"WS_QUEUE_MAX_EVENTS": "200", "WS_QUEUE_MAX_BYTES": str(queue_max_bytes)})
    sym = unique_sym()
    slow = RawWsClient("127.0.0.1", relay.port, "/stocks", rcvbuf=4096)
    try:
        slow._send_frame(0x1, b'{"action":"auth","params":"any key"}')  # API_TOKENS unset: any key will do
        slow._send_frame(0x1, f'{{"action":"subscribe","params":"T.{sym}"}}'.encode())
        fast = authenticated(polygon_socket(relay), key="another key")
        fast.send("subscribe", f"T.{sym}")
        fast.next_statuses()
        clients = relay.health()["clients"]
        # in rounds the fast client keeps up with: the stalled client's backlog grows frame by frame
        sent: list[dict[str, Any]] = []
        for start in range(0, count, 100):
            items = [{"ev": "T", "sym": sym, "q": n, "pad": pad} for n in range(start, min(start + 100, count))]
            feed(relay, fresh_upstream, items, batch=100)
            sent += items
            assert fast.wait_data(len(sent)) == sent
            if relay.health()["clients"] < clients:
                break
        seen = slow.read_until_close(timeout_s=15)
    finally:
        slow.close()

    frames = [json.loads(text) for text in seen.texts]
    assert [f[0]["status"] for f in frames[:3]] == ["connected", "auth_success", "success"]
    assert frames[-1] == [{"ev": "status", "status": "slow_consumer",
                           "message": "client is too slow: its backlog passed the relay's bound; disconnecting"}]
    assert seen.got_close_frame and seen.code == 1013
    got = [d for f in frames[3:-1] for d in f]
    assert got == sent[:len(got)] and len(got) < len(sent), "a gap-free prefix, not everything"
    more = [{"ev": "T", "sym": sym, "q": -1}]
    feed(relay, fresh_upstream, more)
    assert fast.wait_data(len(sent) + 1) == sent + more


def test_at_shutdown_clients_are_told_and_closed_with_1012_so_they_reconnect(fresh_upstream, launch_relay, polygon_socket):
    relay = launch_relay(fresh_upstream)
    sock = authenticated(polygon_socket(relay), key="whatever")
    quiet = polygon_socket(relay)  # not authenticated yet: closed too
    quiet.next_statuses()
    relay.send_signal(signal.SIGTERM)
    assert sock.next_statuses() == [{"ev": "status", "status": "shutdown", "message": "the relay is restarting: reconnect"}]
    assert sock.expect_close() == 1012
    assert quiet.expect_close() == 1012
    relay.wait_exit(15)



def test_a_wrong_token_brought_to_the_upgrade_is_refused_before_it_and_none_or_a_valid_one_upgrades(
        relay, polygon_socket):
    """Contract §10: a request without a valid token is refused before any upgrade, /<market> too. The Polygon
    clients bring none (their key comes in `auth`), so none is let through; a wrong one brought along was
    upgraded anyway (an outside audit)."""
    for headers, params in (({}, {"token": "nope"}), ({"Authorization": "Bearer nope"}, {})):
        refused = requests.get(relay.url + "/stocks", params=params, timeout=10,
                               headers={**upgrade_headers(), **headers, "Connection": "Upgrade, close"})
        assert refused.status_code == 401 and refused.json()["error"], (headers, params)
    authenticated(polygon_socket(relay))
    authenticated(polygon_socket(relay, f"stocks?token={KEYS[1]}"))
