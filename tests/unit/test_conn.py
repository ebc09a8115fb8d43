"""The keeper of held connections: gunicorn's pool slots, client messages read without a greenlet of their own."""

import gc
import struct
import weakref

import gevent
import gevent.event
import gevent.pool
import pytest
from gevent import socket
from wsproto.connection import Connection, ConnectionType

from webapp.conn import HeldPool, HeldWebSocket, Keeper
from webapp.wire import WireSocket


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = b"\x01\x02\x03\x04"
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Client:
    kind = "test"

    def __init__(self):
        self.texts, self.ended_count, self.bound_checks = [], 0, 0

    def ended(self):
        self.ended_count += 1

    def check_bound(self):
        self.bound_checks += 1


def held_pair(keeper: Keeper, client: Client, deadline_s=None, on_deadline=None, wire_class=WireSocket):
    server, peer = socket.socketpair()
    raw = server._sock
    raw.setblocking(False)
    wire = wire_class(raw)
    held = HeldWebSocket(keeper, raw, wire, client, Connection(ConnectionType.SERVER), client.texts.append,
                         deadline_s, on_deadline)
    keeper.take(held, gevent.getcurrent())
    return held, server, peer


def keeper(**overrides) -> Keeper:
    settings = {"ping_interval_s": 25.0, "keepalive_s": 15.0, "max_message_bytes": 200, "close_timeout_s": 1.0}
    return Keeper(**{**settings, **overrides})


def wait_for(condition, timeout_s: float = 5.0):
    with gevent.Timeout(timeout_s):
        while not condition():
            gevent.sleep(0.005)


def test_a_held_connection_keeps_its_request_slot_in_the_pool_until_it_is_released():
    pool = HeldPool(2)
    ended = gevent.event.Event()

    def request():
        assert pool.keep_slot(gevent.getcurrent())
        ended.set()

    pool.spawn(request).join()
    assert ended.is_set()
    assert (len(pool), pool.held, pool.free_count()) == (0, 1, 1)
    sleeper = pool.spawn(gevent.sleep, 10)
    assert pool.full()
    with pytest.raises(gevent.pool.PoolFull):  # the held connection's permit is really taken
        pool.add(gevent.Greenlet(gevent.sleep), blocking=False)
    sleeper.kill()
    pool.join()  # its link (out of the pool) runs after it died
    pool.release_slot()
    assert (pool.held, pool.free_count(), pool.full()) == (0, 2, False)
    pool.add(gevent.Greenlet(gevent.sleep), blocking=False)
    pool.add(gevent.Greenlet(gevent.sleep), blocking=False)


def test_fragmented_messages_arrive_whole_and_pings_are_answered_by_the_reader():
    client = Client()
    k = keeper()
    held, server, peer = held_pair(k, client)
    peer.sendall(masked(0x1, b"hel", fin=False) + masked(0x0, b"lo") + masked(0x9, b"p1"))
    wait_for(lambda: client.texts == ["hello"])
    assert peer.recv(100) == b"\x8a\x02p1"  # the pong, written by the shared reader
    peer.close()
    wait_for(lambda: client.ended_count == 1)
    assert held not in k.held


def test_the_fragments_of_a_message_are_gathered_in_one_list_not_copied_per_fragment():
    """Copying the parts for every fragment was quadratic: 150,000 empty fragments (900 KB) took 17 s of
    the worker's CPU. The list the first fragment started must be the one the next ones join."""
    client = Client()
    k = keeper()
    held, server, peer = held_pair(k, client)
    peer.sendall(masked(0x1, b"a", fin=False))
    wait_for(lambda: held.message is not None)
    parts = held.message
    peer.sendall(masked(0x0, b"", fin=False) + masked(0x0, b"", fin=False))
    wait_for(lambda: len(parts) == 3)
    peer.sendall(masked(0x0, b"b"))
    wait_for(lambda: client.texts == ["ab"])
    peer.close()
    wait_for(lambda: client.ended_count == 1)


def test_a_close_finished_by_another_greenlet_while_the_first_looks_at_the_writer_is_done_once():
    """`closed()` looks at the writer (which may switch greenlets); the ticker or the reader may finish
    the close meanwhile. The first call must then stop, not tell a client that is already gone
    (AttributeError: 'NoneType' object has no attribute 'ended', seen once in a churn of 3,000)."""

    class SwitchingWire(WireSocket):
        def wait_drained(self, timeout):
            if not reentered:
                reentered.append(True)
                held.closed()  # what another greenlet does while this one is switched out
            return super().wait_drained(timeout)

    reentered: list = []
    client = Client()
    k = keeper()
    held, server, peer = held_pair(k, client, wire_class=SwitchingWire)
    held.closed()
    assert reentered and client.ended_count == 1 and held.state == held.CLOSED
    peer.close()


def test_a_message_over_the_bound_closes_with_1009():
    client = Client()
    k = keeper(max_message_bytes=200)
    _held, _server, peer = held_pair(k, client)
    peer.sendall(masked(0x1, b"x" * 150, fin=False) + masked(0x0, b"y" * 100))
    wait_for(lambda: client.ended_count == 1)
    frame = peer.recv(100)
    assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4])[0] == 1009
    assert client.texts == []
    peer.close()


def test_a_route_deadline_fires_once_on_the_ticker_and_the_connection_stays():
    client = Client()
    k = keeper()
    fired = []
    started = gevent.get_hub().loop.now()
    _held, _server, peer = held_pair(k, client, deadline_s=0.5, on_deadline=lambda: fired.append(
        gevent.get_hub().loop.now() - started))
    wait_for(lambda: fired, 3)
    gevent.sleep(0.6)
    assert len(fired) == 1 and fired[0] >= 0.25, fired  # never before the deadline (less one 0.25 s tick)
    assert client.ended_count == 0
    peer.close()
    wait_for(lambda: client.ended_count == 1)


def test_a_read_of_pings_and_pongs_is_answered_without_wsproto_and_a_pong_counts():
    client = Client()
    k = keeper()
    held, server, peer = held_pair(k, client)
    held.ponged = False  # a ping of ours is out
    before = held.proto._proto._frame_decoder.buffer.buffer
    peer.sendall(masked(0xA, b"") + masked(0x9, b"p2"))
    wait_for(lambda: held.ponged)
    assert peer.recv(100) == b"\x8a\x02p2"
    assert held.proto._proto._frame_decoder.buffer.buffer is before and client.texts == []
    peer.close()
    wait_for(lambda: client.ended_count == 1)


def test_the_server_ping_is_the_two_byte_frame_and_an_unanswered_one_closes_with_1008():
    client = Client()
    k = keeper(ping_interval_s=0.5)
    held, server, peer = held_pair(k, client)
    assert held.ping_tick <= k.ticks(0.5)  # the first ping falls within one interval
    with gevent.Timeout(5):
        assert peer.recv(2) == b"\x89\x00"
    wait_for(lambda: client.ended_count == 1)  # no pong: dropped at the next ping
    frame = peer.recv(100)
    assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4])[0] == 1008


def test_bytes_that_look_like_a_pong_inside_a_frame_are_that_frame_s_payload():
    """A read that starts mid-frame is never taken for a pong: wsproto holds the frame's head."""
    client = Client()
    k = keeper()
    held, server, peer = held_pair(k, client)
    lookalike = masked(0xA, b"")  # what a masked pong looks like on the wire: 6 bytes
    key = b"\x05\x06\x07\x08"
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(lookalike))
    peer.sendall(bytes([0x82, 0x80 | len(payload)]) + key)  # a binary frame's head, its payload to follow
    wait_for(lambda: held.proto._proto._frame_decoder.header is not None)
    held.ponged = False
    peer.sendall(lookalike)  # its masked payload: on the wire, exactly a pong
    wait_for(lambda: client.texts)
    assert client.texts == [payload] and held.ponged is False
    peer.close()
    wait_for(lambda: client.ended_count == 1)


@pytest.mark.parametrize("data", [
    pytest.param(masked(0x9, b"x" * 126), id="a ping over 125 bytes"),
    pytest.param(masked(0x9, b"p", fin=False), id="a fragmented ping"),
    pytest.param(b"\x8a\x00", id="an unmasked pong"),
    pytest.param(bytes([0xCA]) + masked(0xA, b"")[1:], id="a pong with RSV1"),
])
def test_a_hostile_control_frame_still_closes_the_connection_through_wsproto(data):
    client = Client()
    k = keeper()
    _held, _server, peer = held_pair(k, client)
    peer.sendall(data)
    wait_for(lambda: client.ended_count == 1)
    frame = peer.recv(100)
    assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4])[0] == 1002
    peer.close()


def test_a_closed_connection_is_freed_by_refcounting_alone():
    """The keeper freezes held connections out of the cyclic collector's reach: a cycle left
    behind by a closed one would never be freed."""
    client = Client()
    k = keeper()
    gc.disable()
    try:
        held, server, peer = held_pair(k, client)
        other, other_server, other_peer = held_pair(k, Client())
        refs = [weakref.ref(held), weakref.ref(held.proto), weakref.ref(held.proto._proto)]
        peer.sendall(masked(0x1, b"{}"))  # wsproto's parser is then a suspended generator holding it
        wait_for(lambda: client.texts == ["{}"])
        peer.shutdown(socket.SHUT_WR)
        wait_for(lambda: client.ended_count == 1)
        del held
        server.close()
        peer.close()
        other.ponged = False
        other_peer.sendall(masked(0xA, b""))  # the keeper goes on with another connection
        wait_for(lambda: other.ponged)
        assert [r() is None for r in refs] == [True, True, True]
        other_peer.close()
    finally:
        gc.enable()


def test_enough_new_connections_are_frozen_and_many_closes_thaw_them():
    k = keeper()
    try:
        k.taken_count = 200
        assert k.step_gc() == "freeze" and gc.get_freeze_count() > 0
        k.closed_count = 200
        assert k.step_gc() == "thaw" and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
