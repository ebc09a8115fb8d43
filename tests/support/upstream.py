"""A fake upstream WebSocket feed that a test drives by hand.

It listens on 127.0.0.1 on a port chosen once, so the relay can be pointed at
it and it can be stopped and started again underneath the relay. It records
every connection the relay makes (handshake headers, messages the relay sent)
and sends whatever frames the test asks for to every open connection.

With `polygon=True` it also behaves as a Polygon/Massive upstream: it greets
with `connected`, answers `auth`, keeps each connection's `subscribe` /
`unsubscribe` set (answering `success` per topic, or the error status the test
put in `refuse` for a topic), and `emit_subscribed` sends each connection only
the market data (`ev`, `sym`) it is subscribed to.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.sync.server import Server, ServerConnection, serve

# Threads that belong to fake upstreams (server loop, connection handlers and
# their readers). Fake upstreams can outlive a test (module fixtures), so the
# leak check leaves these alone.
_OWNED_THREADS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()

StopHow = Literal["clean", "eof", "reset"]


def is_fake_upstream_thread(thread: threading.Thread) -> bool:
    """Whether `thread` was started by a FakeUpstream (not by the test itself)."""
    return thread in _OWNED_THREADS or thread.name.startswith("fake-upstream")


@dataclass
class UpstreamConnection:
    """One connection the relay made to the fake upstream."""

    index: int
    path: str
    headers: dict[str, str]
    connection: ServerConnection
    received: list[str | bytes] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)
    subscriptions: set[str] = field(default_factory=set)  # polygon mode: what the relay subscribed to

    def received_json(self) -> list[Any]:
        """The relay's messages on this connection, parsed as JSON."""
        return [json.loads(message) for message in self.received]

    def actions(self) -> list[tuple[str, list[str]]]:
        """The relay's subscribe/unsubscribe messages, in order: (action, [topics])."""
        out = []
        for message in self.received_json():
            if isinstance(message, dict) and message.get("action") in ("subscribe", "unsubscribe"):
                out.append((message["action"], [t.strip() for t in str(message["params"]).split(",") if t.strip()]))
        return out


class FakeUpstream:
    """A threaded WebSocket server standing in for the upstream feed."""

    def __init__(self, host: str = "127.0.0.1", path: str = "/feed", *, polygon: bool = False) -> None:
        self.host = host
        self.path = path
        self.polygon = polygon
        self.refuse: dict[str, str] = {}  # polygon mode: topic -> the error message its subscribe gets
        self.port = 0
        self._server: Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._changed = threading.Condition()
        self.connections: list[UpstreamConnection] = []

    # -- life cycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FakeUpstream:
        """Listen (again) on the same port; the first start picks a free port."""
        if self._server is not None:
            raise RuntimeError("fake upstream is already running")
        listener = socket.create_server((self.host, self.port))  # SO_REUSEADDR on POSIX
        self.port = listener.getsockname()[1]
        self._server = serve(
            self._handle,
            sock=listener,
            compression=None,
            max_size=None,
            ping_interval=None,
            close_timeout=2,
        )
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, name=f"fake-upstream-{self.port}", daemon=True
        )
        _OWNED_THREADS.add(self._serve_thread)
        self._serve_thread.start()
        return self

    def stop(self, how: StopHow = "clean") -> None:
        """Close the listener and every connection.

        `clean`: a WebSocket close frame (1001, going away) first.
        `eof`: the TCP connection just ends (FIN), no close frame.
        `reset`: the TCP connection is reset (RST), no close frame.
        """
        server = self._server
        if server is None:
            return
        if how != "clean":
            for record in self.open_connections():
                sock = record.connection.socket
                if how == "reset":
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass  # already gone: nothing left to reset
                record.connection.close_socket()
        server.shutdown()  # closes the listener, closes what is still open, joins handlers
        assert self._serve_thread is not None
        self._serve_thread.join(timeout=10)
        if self._serve_thread.is_alive():
            raise AssertionError("fake upstream server thread did not stop")
        self._server = None
        self._serve_thread = None

    def restart(self, how: StopHow = "clean") -> None:
        self.stop(how)
        self.start()

    # -- what the relay did -------------------------------------------------

    @property
    def connection_count(self) -> int:
        """How many connections the relay has made so far (ever)."""
        with self._changed:
            return len(self.connections)

    def open_connections(self) -> list[UpstreamConnection]:
        with self._changed:
            return [c for c in self.connections if c.connection.protocol.state is State.OPEN]

    def wait_for_connections(self, count: int, timeout_s: float = 10.0) -> UpstreamConnection:
        """Wait until the relay has made `count` connections in total; return the latest one."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.connections) >= count, timeout_s):
                raise AssertionError(
                    f"relay made {len(self.connections)} upstream connection(s) within "
                    f"{timeout_s}s, expected {count}"
                )
            return self.connections[-1]

    def wait_for_received(
        self, record: UpstreamConnection, count: int, timeout_s: float = 10.0
    ) -> list[str | bytes]:
        """Wait until the relay has sent `count` messages on `record`'s connection."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(record.received) >= count, timeout_s):
                raise AssertionError(
                    f"relay sent {len(record.received)} message(s) on upstream connection "
                    f"#{record.index} within {timeout_s}s, expected {count}: {record.received!r}"
                )
            return list(record.received)

    # -- feeding the relay --------------------------------------------------

    def send(self, frame: str | bytes) -> int:
        """Send one frame to every open connection; return how many got it."""
        sent = 0
        for record in self.open_connections():
            try:
                record.connection.send(frame)
            except ConnectionClosed:
                continue
            sent += 1
        return sent

    def emit(self, items: Sequence[Any], *, batch: int | None = 50) -> None:
        """Send `items` to the relay, which must be connected exactly once.

        With `batch`, objects go out as JSON arrays of up to `batch` elements;
        with None, every item is its own frame (str and bytes verbatim).
        """
        for frame in frames_of(items, batch=batch):
            receivers = self.send(frame)
            if receivers != 1:
                raise AssertionError(
                    f"fake upstream has {receivers} open relay connection(s), expected exactly 1"
                )

    def wait_for_actions(self, record: UpstreamConnection, count: int, timeout_s: float = 10.0
                         ) -> list[tuple[str, list[str]]]:
        """Wait until the relay has sent `count` subscribe/unsubscribe messages on `record`."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(record.actions()) >= count, timeout_s):
                raise AssertionError(f"relay sent {record.actions()!r} on upstream connection #{record.index} "
                                     f"within {timeout_s}s, expected {count} subscription messages")
            return record.actions()

    def emit_subscribed(self, items: Sequence[Any], *, batch: int = 50) -> int:
        """Polygon mode: each open connection gets the items it is subscribed to (statuses and other
        shapes go to all), as JSON arrays of up to `batch`; returns how many items went out in all."""
        sent = 0
        for record in self.open_connections():
            with self._changed:
                patterns = set(record.subscriptions)
            chosen = [item for item in items if _subscribed(item, patterns)]
            for frame in frames_of(chosen, batch=batch):
                try:
                    record.connection.send(frame)
                except ConnectionClosed:
                    break
            sent += len(chosen)
        return sent

    # -- server side --------------------------------------------------------

    def _answer(self, record: UpstreamConnection, message: str | bytes) -> None:
        """Polygon mode: the vendor's answers to auth, subscribe and unsubscribe."""
        try:
            action = json.loads(message)
        except ValueError:
            return
        if not isinstance(action, dict):
            return
        kind, params = action.get("action"), action.get("params")
        if kind == "auth":
            replies = [_status("auth_success", "authenticated")]
        elif kind in ("subscribe", "unsubscribe") and isinstance(params, str):
            replies = []
            for topic in (t.strip() for t in params.split(",") if t.strip()):
                if kind == "subscribe" and topic in self.refuse:
                    replies.append(_status("error", self.refuse[topic]))
                    continue
                with self._changed:
                    (record.subscriptions.add if kind == "subscribe" else record.subscriptions.discard)(topic)
                replies.append(_status("success", f"{kind}d to: {topic}"))
        else:
            return
        try:
            record.connection.send(json.dumps(replies))
        except ConnectionClosed:
            pass

    def _handle(self, connection: ServerConnection) -> None:
        _OWNED_THREADS.add(threading.current_thread())
        _OWNED_THREADS.add(connection.recv_events_thread)
        request = connection.request
        assert request is not None
        with self._changed:
            record = UpstreamConnection(
                index=len(self.connections) + 1,
                path=request.path,
                headers={name.lower(): value for name, value in request.headers.raw_items()},
                connection=connection,
            )
            self.connections.append(record)
            self._changed.notify_all()
        try:
            if self.polygon:
                connection.send(json.dumps([_status("connected", "Connected Successfully")]))
            for message in connection:
                if self.polygon:
                    self._answer(record, message)  # before the record: a test that saw it sees the answer sent
                with self._changed:
                    record.received.append(message)
                    self._changed.notify_all()
        except ConnectionClosed:
            pass  # the relay went away or we closed it: the record says so below
        finally:
            with self._changed:
                record.closed.set()
                self._changed.notify_all()


def _status(state: str, message: str) -> dict[str, str]:
    return {"ev": "status", "status": state, "message": message}


def _subscribed(item: Any, patterns: set[str]) -> bool:
    """Whether a Polygon upstream subscribed to `patterns` sends `item` (only market data is chosen)."""
    if not (isinstance(item, dict) and "ev" in item and "sym" in item) or item["ev"] == "status":
        return True
    topic = f"{item['ev']}.{item['sym']}"
    return topic in patterns or f"{item['ev']}.*" in patterns


def frames_of(items: Sequence[Any], *, batch: int | None = 50) -> Iterable[str | bytes]:
    """The upstream frames that carry `items` (see FakeUpstream.emit)."""
    if batch is None:
        for item in items:
            yield item if isinstance(item, (str, bytes)) else json.dumps(item)
        return
    for start in range(0, len(items), batch):
        yield json.dumps(list(items[start : start + batch]))
