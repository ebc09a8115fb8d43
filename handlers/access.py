"""What an access-log line says about a connection that outlived its request (webapp/accesslog.py)."""

from __future__ import annotations

import sys
from collections.abc import Mapping

# struct tcp_info (linux/tcp.h): `__u64 tcpi_bytes_acked` at byte 120, since Linux 4.1
BYTES_ACKED = slice(120, 128)
TCP_INFO_READ = 256  # bytes to ask getsockopt(TCP_INFO) for: the kernel gives what it has, up to this


def bytes_acked(tcp_info: bytes) -> int | None:
    """The bytes the peer acknowledged, from a TCP_INFO reading (None when the reading is too short
    to hold them: a kernel before 4.1)."""
    if len(tcp_info) < BYTES_ACKED.stop:
        return None
    return int.from_bytes(tcp_info[BYTES_ACKED], sys.byteorder)


def kept_environ(environ: Mapping[str, object]) -> dict[str, str]:
    """What of a WSGI environ a line can use once the request is gone: its strings (the method, the
    URI, the peer, the headers as HTTP_*), not its objects (the input stream, the socket)."""
    return {key: value for key, value in environ.items() if isinstance(value, str)}


def request_headers(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The request's headers as the environ carries them, named as on the wire (for `%({name}i)s`)."""
    headers = [(key[5:].replace("_", "-").title(), value) for key, value in environ.items() if key.startswith("HTTP_")]
    for key, name in (("CONTENT_TYPE", "Content-Type"), ("CONTENT_LENGTH", "Content-Length")):
        if environ.get(key):
            headers.append((name, environ[key]))
    return headers
