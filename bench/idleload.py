"""A load generator for idle connections: N /ws or /sse clients from one process, answering pings.

    .venv/bin/python bench/idleload.py --url ws://127.0.0.1:8000/ws?snapshot=0 --n 20000 \
        --source 127.0.0.2 --rate 2000 --hold-s 60

One thread, one selector, non-blocking sockets: each client connects (from `--source`, so
several processes on 127.0.0.2, 127.0.0.3, ... do not run out of ports), sends its upgrade
request (or a plain GET for /sse), waits for the 101 (or the 200 and its first bytes), then
sits idle, answering the server's pings with masked pongs. It prints one JSON line a second
(connected, failed, closed by the server, pings answered in that second) and a summary
(handshake latency percentiles) at the end, and stops by itself after `--hold-s` (or
`--max-s` in all). It raises its own open-file limit to the hard limit; at most 20,000 here.

Once every client is open, it wakes at most every `--batch-ms` (100) and answers in one pass
whatever pings came meanwhile: it shares the machine with the processes being measured, and
waking once per ping (~670 times a second per process with 100,000 clients over 6 processes)
preempted them and cost it 35 µs per pong (docs/benchmarks.md, "fifth session"). A pong
that is up to 100 ms late is nothing to a server that waits 25 s for it.
"""

from __future__ import annotations

import argparse
import base64
import errno
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

CONNECTING, HANDSHAKE, OPEN = 0, 1, 2
EMPTY_PONG = bytes([0x8A, 0x80]) + os.urandom(4)  # nothing to mask: the key is sent, no payload
EMPTY_PING = b"\x89\x00"  # the relay's ping: a constant frame


class Client:
    __slots__ = ("sock", "state", "t0", "buf", "is_ws")

    def __init__(self, sock, is_ws):
        self.sock = sock
        self.state = CONNECTING
        self.t0 = time.monotonic()
        self.buf = b""
        self.is_ws = is_ws


def pong_frame(payload: bytes) -> bytes:
    if not payload:
        return EMPTY_PONG
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x8A, 0x80 | len(payload)]) + mask + masked


def close_frame() -> bytes:
    mask = os.urandom(4)
    body = struct.pack("!H", 1000)
    return bytes([0x88, 0x80 | len(body)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body))


def parse_frames(buf: bytes):
    """Complete server frames in `buf` as (opcode, payload), and the rest."""
    out = []
    while len(buf) >= 2:
        opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
        head = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, head = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, head = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < head + n:
            break
        out.append((opcode, buf[head:head + n]))
        buf = buf[head + n:]
    return out, buf


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="ws://host:port/ws?... or http://host:port/sse?...")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--source", default="", help="local address to connect from (127.0.0.2, ...)")
    p.add_argument("--rate", type=float, default=2000.0, help="new connections per second")
    p.add_argument("--inflight", type=int, default=2000, help="handshakes in flight at most")
    p.add_argument("--hold-s", type=float, default=30.0, help="stay connected this long once all are open")
    p.add_argument("--max-s", type=float, default=600.0, help="stop after this long whatever happens")
    p.add_argument("--handshake-timeout-s", type=float, default=60.0)
    p.add_argument("--batch-ms", type=float, default=100.0,
                   help="once all are open, wake at most this often (0: on every ping)")
    args = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.n + 32 > hard:
        print(json.dumps({"error": f"--n {args.n} needs more than the open-file limit {hard}"}), flush=True)
        return 2
    stopping = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(True))

    url = urlsplit(args.url)
    is_ws = url.scheme in ("ws", "wss")
    host, port = url.hostname, url.port or 80
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    if is_ws:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    else:
        request = (f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n").encode()

    sel = selectors.DefaultSelector()
    started = time.monotonic()
    deadline = started + args.max_s
    opened = failed = closed = pings = pings_total = 0
    inflight = 0
    made = 0
    handshakes: list[float] = []
    # connect() to writable, as this loop sees it: a SYN dropped at a full accept queue is resent 1 s later,
    # but the loop's own lag on a busy host is in it too (the kernel's TCPSynRetrans says which)
    tcp_connects: list[float] = []
    errors: dict[str, int] = {}
    all_open_at = None
    next_report = started + 1.0
    clients: set[Client] = set()
    last_wake = started

    def fail(c: Client, why: str) -> None:
        nonlocal failed, inflight
        errors[why] = errors.get(why, 0) + 1
        failed += 1
        if c.state != OPEN:
            inflight -= 1
        drop(c)

    def drop(c: Client) -> None:
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        clients.discard(c)

    while True:
        now = time.monotonic()
        if now >= deadline or stopping:
            break
        # open new connections at the requested rate
        due = min(args.n, int((now - started) * args.rate) + 1)
        while made < due and inflight < args.inflight:
            made += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            c = Client(s, is_ws)
            try:
                if args.source:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((args.source, 0))
                rc = s.connect_ex((host, port))
            except OSError as exc:
                name = errno.errorcode.get(exc.errno, str(exc.errno))
                errors[name] = errors.get(name, 0) + 1
                failed += 1
                s.close()
                continue
            if rc not in (0, errno.EINPROGRESS):
                name = errno.errorcode.get(rc, str(rc))
                errors[name] = errors.get(name, 0) + 1
                failed += 1
                s.close()
                continue
            inflight += 1
            clients.add(c)
            sel.register(s, selectors.EVENT_WRITE, c)
        if all_open_at is not None and args.batch_ms > 0:
            # held: at most one pass per batch, whatever came meanwhile answered together
            nap = last_wake + args.batch_ms / 1000 - now
            if nap > 0:
                time.sleep(nap)
            last_wake = now = time.monotonic()
        # while connecting, wake often to keep the pace; then only for pings and the report line
        wait_s = 0.01 if made < args.n else max(0.0, min(1.0, next_report - now))
        for key, _mask in sel.select(timeout=wait_s):
            c: Client = key.data
            if c.state == CONNECTING:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(c, errno.errorcode.get(err, str(err)))
                    continue
                try:
                    c.sock.send(request)
                except OSError as exc:
                    fail(c, type(exc).__name__)
                    continue
                c.state = HANDSHAKE
                tcp_connects.append((time.monotonic() - c.t0) * 1000)
                sel.modify(c.sock, selectors.EVENT_READ, c)
                continue
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                if c.state == OPEN:
                    closed += 1
                    drop(c)
                else:
                    fail(c, type(exc).__name__)
                continue
            if not data:
                if c.state == OPEN:
                    closed += 1
                    drop(c)
                else:
                    fail(c, "eof_in_handshake")
                continue
            if c.state == HANDSHAKE:
                c.buf += data
                end = c.buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                status = c.buf.split(b" ", 2)[1] if b" " in c.buf else b"?"
                if status != (b"101" if is_ws else b"200"):
                    fail(c, f"http_{status.decode(errors='replace')}")
                    continue
                c.state = OPEN
                c.buf = c.buf[end + 4:] if is_ws else b""
                handshakes.append((time.monotonic() - c.t0) * 1000)
                inflight -= 1
                opened += 1
                data = b""
            if not is_ws:
                continue  # /sse: events and keep-alive comments, read and dropped
            if data == EMPTY_PING and not c.buf:  # the usual read: one ping, answered without parsing
                pings += 1
                pings_total += 1
                try:
                    c.sock.send(EMPTY_PONG)
                except OSError:
                    pass
                continue
            c.buf += data
            frames, c.buf = parse_frames(c.buf)
            for opcode, payload in frames:
                if opcode == 0x9:
                    pings += 1
                    pings_total += 1
                    try:
                        c.sock.send(pong_frame(payload))
                    except OSError:
                        pass
                elif opcode == 0x8:
                    try:
                        c.sock.send(close_frame())
                    except OSError:
                        pass
                    closed += 1
                    drop(c)
                    break
        now = time.monotonic()
        if opened + failed + closed >= args.n and all_open_at is None and made >= args.n:
            all_open_at = now
        if now >= next_report:
            print(json.dumps({"t": round(now - started, 1), "open": len(clients), "connected": opened,
                              "failed": failed, "closed": closed, "pings": pings, "inflight": inflight}), flush=True)
            pings = 0
            next_report += 1.0
        if all_open_at is not None and now - all_open_at >= args.hold_s:
            break
    summary = {"summary": True, "n": args.n, "source": args.source, "connected": opened, "failed": failed,
               "closed_by_server": closed, "still_open": len(clients), "pings_answered": pings_total,
               "errors": errors, "connect_s": round((all_open_at or time.monotonic()) - started, 2),
               "handshake_ms": {"p50": percentile(handshakes, 0.5), "p99": percentile(handshakes, 0.99),
                                "max": percentile(handshakes, 1.0)},
               "tcp_connect_ms": {"p50": percentile(tcp_connects, 0.5), "p99": percentile(tcp_connects, 0.99),
                                  "max": percentile(tcp_connects, 1.0),
                                  "over_900ms": sum(1 for m in tcp_connects if m > 900)}}
    for c in list(clients):
        if c.state == OPEN and is_ws:
            try:
                c.sock.send(close_frame())
            except OSError:
                pass
        drop(c)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
