"""What one client's write in a flush costs the worker: the bare system call against the hub's whole path.

    flock /tmp/relayhouse-bench.lock .venv/bin/python bench/flush_micro.py [--clients 1000] [--rounds 8]

N loopback TCP connections whose peers one other process reads (epoll, like the Node
subscriber); every "flush" writes one ~150-byte WebSocket frame to each of them, 50
flushes a second, and the writer thread's CPU time (`time.thread_time`) per flush is
divided by N. Variants, interleaved round by round:

  raw    a loop of bound `sock.send(frame)` (the floor: the system call and CPython's socket call)
  write  a loop of `os.write(fd, frame)`
  write_fileno  a loop of `os.write(sock.fileno(), frame)` (the descriptor looked up each time, as a
         socket's closing would need; tried in webapp/wire.py in place of send and not kept:
         docs/benchmarks.md, "Light load, sixth session")
  hub    `Hub.flush([event])` to N real `WsClient`s on real `WireSocket`s: group, checks, deliver, write
  stub   the same hub path writing to /dev/null: the hub's Python and the cheapest system call

Prints the median and p90 microseconds per client of each variant and writes JSON to
bench/results/<UTC>-flush-micro/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers.events import make_event  # noqa: E402
from handlers.protocol import events_message, ws_frame  # noqa: E402
from handlers.topics import compile_patterns  # noqa: E402
from webapp.hub import Hub  # noqa: E402
from webapp.routes.ws import WsClient  # noqa: E402
from webapp.wire import WireSocket  # noqa: E402

READER = r"""
import select, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
ep = select.epoll()
by_fd = {}
for s in socks:
    s.setblocking(False)
    ep.register(s.fileno(), select.EPOLLIN)
    by_fd[s.fileno()] = s
sys.stdout.write("ready\n"); sys.stdout.flush()
open_ = n
while open_:
    for fd, _ in ep.poll():
        try:
            data = by_fd[fd].recv(1 << 16)
        except BlockingIOError:
            continue
        if not data:
            ep.unregister(fd); open_ -= 1
"""


def connect(n: int):
    """N accepted server-side sockets (non-blocking), their peers read by a child process."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(n + 16)
    child = subprocess.Popen([sys.executable, "-c", READER, str(lsock.getsockname()[1]), str(n)],
                             stdout=subprocess.PIPE, text=True)
    socks = [lsock.accept()[0] for _ in range(n)]
    assert child.stdout.readline().strip() == "ready"
    for s in socks:
        s.setblocking(False)
    lsock.close()
    return socks, child


class DevNull:
    """A stand-in socket: /dev/null, whose write takes everything at once (WireSocket wants `send`)."""

    def __init__(self) -> None:
        self.file = open(os.devnull, "wb", buffering=0)  # noqa: SIM115 (closed at exit)
        self.send = self.file.write

    def fileno(self) -> int:
        return self.file.fileno()


def stub_socks(n: int):
    """Stand-ins for N sockets: /dev/null opened N times."""
    return [DevNull() for _ in range(n)]


def make_hub(socks) -> Hub:
    rt = SimpleNamespace(settings=SimpleNamespace(ws_queue_max_events=10_000, ws_queue_max_bytes=8 << 20))
    hub = Hub(0, on_delivered=lambda kind, frames, n: None)
    matcher = compile_patterns(("*",))
    for s in socks:
        hub.add(WsClient(None, WireSocket(s), matcher, rt))
    return hub


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--flushes", type=int, default=25, help="flushes per variant per round")
    ap.add_argument("--rate", type=float, default=50.0, help="flushes a second")
    ap.add_argument("--variants", default="raw,write,write_fileno,hub,stub", help="comma-separated, run in a rotated order per round")
    args = ap.parse_args()

    socks, child = connect(args.clients)
    seq = [0]

    def event():
        seq[0] += 1
        return make_event(seq[0], int(time.time() * 1000), "T.AAPL", {"p": 187.25, "s": 100, "x": 4, "c": [12, 37]})

    frame = ws_frame(events_message([event()]))
    sends = [s.send for s in socks]
    fds = [s.fileno() for s in socks]
    hub = make_hub(socks)
    stub_hub = make_hub(stub_socks(len(socks)))

    def raw():
        for send in sends:
            send(frame)

    def write():
        w = os.write
        for fd in fds:
            w(fd, frame)

    def write_fileno():
        w = os.write
        for s in socks:
            w(s.fileno(), frame)

    every = {"raw": raw, "write": write, "write_fileno": write_fileno, "hub": lambda: hub.flush([event()]),
             "stub": lambda: stub_hub.flush([event()])}
    variants = {name: every[name] for name in args.variants.split(",")}
    per_client: dict[str, list[float]] = {k: [] for k in variants}
    gap = 1.0 / args.rate
    order = list(variants.items())
    for r in range(args.rounds):
        for name, fn in order[r % len(order):] + order[:r % len(order)]:  # no variant always first
            for _ in range(args.flushes):
                t0 = time.thread_time()
                fn()
                per_client[name].append((time.thread_time() - t0) / args.clients * 1e6)
                time.sleep(gap)
    for s in socks:
        s.close()
    child.wait(timeout=30)

    def q(v, p):
        v = sorted(v)
        return round(v[min(len(v) - 1, int(p / 100 * len(v)))], 3)

    summary = {name: {"median_us": round(statistics.median(v), 3), "p90_us": q(v, 90), "n": len(v)}
               for name, v in per_client.items()}
    out = ROOT / "bench" / "results" / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-flush-micro")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "frame_bytes": len(frame),
                                                  "summary": summary, "per_client_us": per_client}, indent=1))
    print(f"frame {len(frame)} bytes, {args.clients} clients, {args.rounds} rounds x {args.flushes} flushes each")
    for name, s in summary.items():
        print(f"{name:6} median {s['median_us']:.3f} us/client  p90 {s['p90_us']:.3f}")
    print(out)


if __name__ == "__main__":
    main()
