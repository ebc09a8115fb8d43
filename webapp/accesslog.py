"""One access-log line per /ws, /sse and Polygon connection, written when the connection ends.

gunicorn writes its access line when a response is done. A WebSocket upgrade (flask-sock) or
an event stream (StreamResponse) is, to gunicorn, a request the application answered itself,
and the connection then lives on without its request (webapp/conn.py), so gunicorn never logs
it: with ACCESS_LOG set, an operator saw every REST call and no client connection. Like nginx,
which logs an upgraded connection when it closes, the relay now writes that line itself,
through gunicorn's own access logger (so `access_log_format`, the file and the secrets filter of
gunicorn.conf.py apply): the status the client got (101, or 200 for /sse), the bytes the peer
acknowledged (read from TCP_INFO at the close: nothing is counted on the write path) and the
connection's whole duration (`%(D)s`, `%(L)s`).

Nothing is kept per connection unless access logging is on; when it is, a connection keeps the
strings of its request's environ (its headers among them) until it ends.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import timedelta
from types import SimpleNamespace

from flask import has_request_context, request

from handlers.access import TCP_INFO_READ, bytes_acked, kept_environ, request_headers

log = logging.getLogger(__name__)

_glog = None  # gunicorn's logger of this worker, when it writes access lines


def install(glog) -> None:
    """From post_worker_init: gunicorn's logger, kept only when it has somewhere to write access lines."""
    global _glog
    _glog = glog if getattr(glog, "access_log_enabled", False) else None


def opened() -> dict[str, str] | None:
    """In the request that opens a connection: the strings of its environ (what its line prints), or
    None when no line will be written. The status, the start and the headers are read at the end
    from the client (`access_status`, `connected_at`) and these strings."""
    if _glog is None or not has_request_context():
        return None
    return kept_environ(request.environ)


def ended(client, sock) -> None:
    """The connection of `client` ends: its line, once (before `sock` is closed)."""
    environ = getattr(client, "access", None)
    if environ is None or _glog is None:
        return
    client.access = None
    try:
        sent = bytes_acked(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_READ))
    except (OSError, AttributeError, ValueError):  # closed, not TCP (a test's socketpair)
        sent = None
    try:
        _glog.access(SimpleNamespace(status=client.access_status, sent=sent, headers=()), request_headers(environ),
                     environ, timedelta(seconds=time.monotonic() - client.connected_at))
    except Exception:  # noqa: BLE001  (a line that fails must not fail the close)
        log.exception("could not write an access line")
