"""The health listener (HEALTH_BIND): a second port on which only GET /health and /metrics answer.

Under the project's gunicorn.conf.py a process each worker starts answers it (webapp/healthchild.py) and
no request from it reaches Flask; this filter keeps the port closed to every other route when the loop
serves it (gunicorn run with another config)."""

from typing import Any, Mapping

from flask import Flask, request

from webapp.responses import json_error
from webapp.settings import Settings

HEALTH_PATHS = frozenset({"/health", "/metrics"})


def local_port(environ: Mapping[str, Any]) -> int | None:
    """The port the request's connection was accepted on: the socket's own address, which neither the
    Host header nor a proxy can change (gunicorn's SERVER_PORT comes from the listener too, but the
    proxy protocol may rewrite it). None outside gunicorn (Flask's test client): the main port."""
    sock = environ.get("gunicorn.socket")
    try:
        name = sock.getsockname() if sock is not None else None
    except OSError:
        return None  # closed already
    return name[1] if isinstance(name, tuple) and len(name) >= 2 else None  # a unix socket's name is a path


def register_health_listener(app: Flask, settings: Settings) -> None:
    """Before every other check: on the health listener, a path other than /health and /metrics is a 404,
    so the second port opens nothing the probes do not need."""
    port = settings.health_port
    if port is None:
        return

    @app.before_request
    def health_listener_only():
        if request.path in HEALTH_PATHS or local_port(request.environ) != port:
            return None
        return json_error(404, "the health listener serves only /health and /metrics")
