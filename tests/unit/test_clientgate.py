"""webapp/clientgate.py: a closed gate leaves new connections in the kernel's queue (for the other workers
of the socket) until it opens, whatever gevent's pool does meanwhile; connections already taken go on."""

from __future__ import annotations

import gevent
import gevent.event
import gevent.socket
import pytest
from gevent.pool import Pool
from gevent.server import StreamServer

from webapp import clientgate
from webapp.accept import PacedServer


@pytest.fixture
def server(request):
    base = getattr(request, "param", StreamServer)

    def answer(sock, _address):
        sock.sendall(b"hello")
        sock.close()

    srv = clientgate.gated(base)(("127.0.0.1", 0), answer, spawn=Pool(10))
    srv.start()
    yield srv
    clientgate.set_open(True)
    srv.stop()


def greeting(port: int, timeout_s: float) -> bytes | None:
    """Connect (the kernel completes the handshake whether or not anyone accepts) and wait for the answer."""
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET")  # PacedServer starts nobody's handshake before its client has sent something
    sock.settimeout(timeout_s)
    try:
        return sock.recv(16)
    except TimeoutError:
        return None
    finally:
        sock.close()


@pytest.mark.parametrize("server", [StreamServer, PacedServer], indirect=True)
def test_a_closed_gate_accepts_nothing_and_an_opened_one_takes_what_waited(server):
    port = server.server_port
    assert greeting(port, 5) == b"hello"
    clientgate.set_open(False)
    waiting = gevent.socket.create_connection(("127.0.0.1", port), timeout=5)
    waiting.sendall(b"GET")
    waiting.settimeout(0.5)
    with pytest.raises(TimeoutError):
        waiting.recv(16)  # in the kernel's queue: nobody accepted it
    server._start_accepting_if_started()  # what gevent does whenever its pool frees a place
    with pytest.raises(TimeoutError):
        waiting.recv(16)
    clientgate.set_open(True)
    waiting.settimeout(5)
    assert waiting.recv(16) == b"hello"  # the one that waited is taken once the gate opens
    waiting.close()
    assert greeting(port, 5) == b"hello"


def test_a_connection_taken_before_the_gate_closed_is_served_to_its_end(server):
    released = gevent.event.Event()

    def slow_answer(sock, _address):
        released.wait(5)
        sock.sendall(b"late")
        sock.close()

    server._handle = slow_answer  # what StreamServer calls for each accepted connection
    sock = gevent.socket.create_connection(("127.0.0.1", server.server_port), timeout=5)
    sock.sendall(b"GET")
    gevent.sleep(0.2)  # accepted: its handler waits
    clientgate.set_open(False)
    released.set()
    sock.settimeout(5)
    assert sock.recv(16) == b"late"
    sock.close()


def test_opening_an_open_gate_or_closing_a_closed_one_changes_nothing(server):
    clientgate.set_open(True)
    assert clientgate.is_open() and greeting(server.server_port, 5) == b"hello"
    clientgate.set_open(False)
    clientgate.set_open(False)
    assert not clientgate.is_open() and greeting(server.server_port, 0.5) is None
