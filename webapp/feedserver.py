"""A small upstream WebSocket server (gevent + wsproto): the demo feed and `replay` serve through it.

With `honour_subscriptions`, it behaves like a Polygon upstream: it greets with
`connected`, answers `auth`, keeps each peer's `subscribe`/`unsubscribe` set and
sends a peer only the market data of its topics (handlers/subscriptions.py).
"""

import logging
from typing import Any, Callable

import gevent
import gevent.queue
import orjson
from gevent.lock import Semaphore
from gevent.server import StreamServer
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Request, TextMessage

from handlers.subscriptions import feed_action, feed_select

log = logging.getLogger(__name__)


class FeedServer:
    """Accepts WebSocket peers on a loopback port and broadcasts text frames to all of them.

    Peers that cannot keep up lose their connection rather than slowing the feed.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 on_message: Callable[[str], None] | None = None, max_backlog: int = 1000,
                 honour_subscriptions: bool = False):
        self._server = StreamServer((host, port), self._handle)
        self._peers: dict[object, gevent.queue.Queue] = {}
        self.honour_subscriptions = honour_subscriptions
        self.subscriptions: dict[object, frozenset[str]] = {}  # per peer, when honouring them
        self.on_message = on_message or (lambda text: None)
        self.max_backlog = max_backlog

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(timeout=1)

    @property
    def port(self) -> int:
        return self._server.server_port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/feed"

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    def broadcast(self, text: str | bytes) -> None:
        """One frame to every peer (honouring subscriptions: the part of it each peer subscribed to)."""
        if self.honour_subscriptions and isinstance(text, str):
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                value = None
            if isinstance(value, (list, dict)):
                self.broadcast_elements(value if isinstance(value, list) else [value])
                return
        for sock, queue in list(self._peers.items()):
            self._put(sock, queue, text)

    def broadcast_elements(self, elements: list[Any]) -> None:
        """Elements as one JSON array frame; honouring subscriptions, each peer gets its own part."""
        if not self.honour_subscriptions:
            self.broadcast(orjson.dumps(elements).decode())
            return
        for sock, queue in list(self._peers.items()):
            chosen = feed_select(elements, self.subscriptions.get(sock, frozenset()))
            if chosen:
                self._put(sock, queue, orjson.dumps(chosen).decode())

    def _put(self, sock, queue: gevent.queue.Queue, text: str | bytes) -> None:
        if queue.qsize() >= self.max_backlog:
            log.warning("feed peer fell %d frames behind: dropping it", queue.qsize())
            sock.close()
            return
        queue.put(text)

    def _on_text(self, sock, queue: gevent.queue.Queue, text: str) -> None:
        if self.honour_subscriptions:
            try:
                message = orjson.loads(text)
            except orjson.JSONDecodeError:
                message = None
            if isinstance(message, dict) and message.get("action") == "auth":
                queue.put('[{"ev":"status","status":"auth_success","message":"authenticated"}]')
            else:
                changed = feed_action(message, self.subscriptions.get(sock, frozenset()))
                if changed is not None:
                    self.subscriptions[sock], replies = changed
                    queue.put(orjson.dumps(replies).decode())
        self.on_message(text)

    def _handle(self, sock, address) -> None:
        conn = WSConnection(ConnectionType.SERVER)
        if not self._handshake(sock, conn):
            sock.close()
            return
        queue: gevent.queue.Queue = gevent.queue.Queue()
        write_lock = Semaphore()  # the reader answers pings: one writer at a time
        self._peers[sock] = queue
        if self.honour_subscriptions:
            self.subscriptions[sock] = frozenset()
            queue.put('[{"ev":"status","status":"connected","message":"Connected Successfully"}]')
        reader = gevent.spawn(self._read, sock, conn, queue, write_lock)
        try:
            while (text := queue.get()) is not None:
                with write_lock:
                    sock.sendall(conn.send(Message(data=text)))
        except OSError:
            pass
        finally:
            self._peers.pop(sock, None)
            self.subscriptions.pop(sock, None)
            reader.kill(block=False)
            sock.close()

    def _handshake(self, sock, conn: WSConnection) -> bool:
        while True:
            data = sock.recv(65536)
            if not data:
                return False
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, Request):
                    sock.sendall(conn.send(AcceptConnection()))
                    return True

    def _read(self, sock, conn: WSConnection, queue: gevent.queue.Queue, write_lock: Semaphore) -> None:
        try:
            while data := sock.recv(65536):
                conn.receive_data(data)
                for event in conn.events():
                    if isinstance(event, TextMessage):
                        self._on_text(sock, queue, event.data)
                    elif isinstance(event, Ping):
                        with write_lock:
                            sock.sendall(conn.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        with write_lock:
                            sock.sendall(conn.send(event.response()))
                        return
        except OSError:
            return
        finally:
            queue.put(None)  # wakes the writer, which closes the connection
