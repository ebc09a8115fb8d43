"""A small upstream WebSocket server (gevent + wsproto): the demo feed and `replay` serve through it."""

import logging
from typing import Callable

import gevent
import gevent.queue
from gevent.lock import Semaphore
from gevent.server import StreamServer
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Request, TextMessage

log = logging.getLogger(__name__)


class FeedServer:
    """Accepts WebSocket peers on a loopback port and broadcasts text frames to all of them.

    Peers that cannot keep up lose their connection rather than slowing the feed.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 on_message: Callable[[str], None] | None = None, max_backlog: int = 1000):
        self._server = StreamServer((host, port), self._handle)
        self._peers: dict[object, gevent.queue.Queue] = {}
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

    def broadcast(self, text: str) -> None:
        for sock, queue in list(self._peers.items()):
            if queue.qsize() >= self.max_backlog:
                log.warning("feed peer fell %d frames behind: dropping it", queue.qsize())
                sock.close()
                continue
            queue.put(text)

    def _handle(self, sock, address) -> None:
        conn = WSConnection(ConnectionType.SERVER)
        if not self._handshake(sock, conn):
            sock.close()
            return
        queue: gevent.queue.Queue = gevent.queue.Queue()
        write_lock = Semaphore()  # the reader answers pings: one writer at a time
        self._peers[sock] = queue
        reader = gevent.spawn(self._read, sock, conn, queue, write_lock)
        try:
            while (text := queue.get()) is not None:
                with write_lock:
                    sock.sendall(conn.send(Message(data=text)))
        except OSError:
            pass
        finally:
            self._peers.pop(sock, None)
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
                        self.on_message(event.data)
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
