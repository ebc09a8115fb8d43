"""A burst of connections waiting in the kernel's accept queue is taken from it at once (MAX_ACCEPT,
webapp/accept.py), before the worker runs the handshake of any of them.

The worker is stopped (SIGSTOP) while the clients connect: the kernel completes their TCP
handshakes and queues them, so the whole burst is in the listen socket's accept queue when the
worker wakes. gevent's own default (100 per wake-up; 1 with several gunicorn workers) would
answer the first of them while hundreds still wait in the kernel; accepting eagerly empties the
queue in the same wake-up, so when the first answer arrives the queue is already empty. Nothing
here is timed: the order of the two events is the guarantee.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
from pathlib import Path

from support.cluster import cluster_env, prefix  # noqa: F401 (prefix: a fixture)
from support.procnet import children
from support.waiting import wait_until

BURST = 400  # well beyond one of gevent's default batches (100), well under BACKLOG (4096)
# the workers are stopped while the burst connects: on a busy host that can take a while, and gunicorn
# would kill a worker silent for its 30 s time-out (seen once, with a 100,000-client bench beside it)
RELAY_ENV = {"GUNICORN_CMD_ARGS": "--timeout 300", "MAX_ACCEPT": "4096"}  # opt-in: the default is gunicorn's 0


def accept_queue(port: int) -> int | None:
    """How many completed connections wait in the accept queue of the listener on `port`: for a
    listening socket, /proc/net/tcp's rx_queue is the accept backlog (what `ss -ltn` shows as Recv-Q)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            return int(fields[4].split(":")[1], 16)
    return None


def test_a_burst_in_the_accept_queue_is_accepted_before_any_of_it_is_served(fresh_upstream, launch_relay):
    relay = launch_relay(fresh_upstream, RELAY_ENV)
    burst_is_taken_at_once(relay, children(relay.proc.pid))


def test_with_several_workers_too(prefix, fresh_upstream, launch_relay):  # noqa: F811
    """gunicorn's gevent worker sets max_accept to 1 on its servers when it has several workers (one
    connection per wake-up, spread between them); MAX_ACCEPT overrides that too."""
    relay = launch_relay(fresh_upstream, cluster_env(prefix, WEB_CONCURRENCY="2", **RELAY_ENV))
    workers = wait_until(lambda: children(relay.proc.pid) if len(children(relay.proc.pid)) == 2 else None, 20,
                         "two workers")
    burst_is_taken_at_once(relay, workers)


def burst_is_taken_at_once(relay, workers: list[int]) -> None:
    """Whichever worker answers first ran its accept loop until the queue was empty before it ran any
    handshake: at the first answer, nothing is left in the kernel's queue."""
    request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{relay.port}\r\nConnection: close\r\n\r\n".encode()
    clients: list[socket.socket] = []
    for worker in workers:
        os.kill(worker, signal.SIGSTOP)
    try:
        for _ in range(BURST):
            s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)  # completed by the kernel
            clients.append(s)
            s.sendall(request)
        # the whole burst waits for the stopped worker
        wait_until(lambda: accept_queue(relay.port) == BURST, 10, f"{BURST} connections in the accept queue")
    finally:
        for worker in workers:
            os.kill(worker, signal.SIGCONT)
    try:
        with selectors.DefaultSelector() as sel:
            for s in clients:
                sel.register(s, selectors.EVENT_READ)
            assert sel.select(timeout=30), "no answer within 30 s"
        # the first answer is out: by then the worker took every queued connection
        assert accept_queue(relay.port) == 0
        # and it serves them all
        for s in clients:
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    finally:
        for s in clients:
            s.close()
