"""relayhouse's web shell: `create_app(settings, services=None)` builds the Flask app and connects nothing."""

import logging
import socket
from urllib.parse import unquote_to_bytes

import gevent
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import WebsocketMismatch

from handlers.params import ParamError
from webapp.auth import CLIENT, refusal
from webapp.cli import register_commands
from webapp.cors import register_cors
from webapp.healthport import register_health_listener
from webapp.logs import printable
from webapp.responses import json_error
from webapp.routes import cache, clients, history, monitor, polygon, publish, query, sse, status, ws
from webapp.runtime import Runtime
from webapp.settings import Settings

log = logging.getLogger(__name__)

QUERY_PARAMETERS = frozenset({"topics", "since", "epoch", "snapshot", "token", "max_hz", "on_slow", "limit", "q",
                              "field", "value", "from_ts", "to_ts", "strict", "sql"})
"""Every query parameter a route reads (docs/api.md): each may be given once."""


def _stop_reading(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass  # already gone


class LastResponse(Response):
    """A response after which the connection closes, and whose head says so (`Connection: close`).

    gunicorn drops a Connection header the app sets and writes its own from whether it will
    keep the connection; the server's own response object (the `start_response` it hands over)
    is told to close instead. Other servers keep their default."""

    def __call__(self, environ, start_response):
        force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
        if force_close is not None:
            force_close()
        return super().__call__(environ, start_response)


def create_app(settings: Settings, services: Runtime | None = None) -> Flask:
    """The app for one worker. `services` (a Runtime) is built from settings when not given."""
    app = Flask(__name__, static_folder=None)  # the monitor serves its own assets, open like the page
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.url_map.merge_slashes = False  # `//x` is a JSON 404, not werkzeug's HTML redirect
    app.config["SOCK_SERVER_OPTIONS"] = {
        "ping_interval": settings.ws_ping_interval_s,
        "max_message_size": settings.ws_max_message_bytes,
    }
    app.extensions["relayhouse"] = services or Runtime(settings)
    for module in (status, cache, clients, publish, ws, sse, polygon, query, history, monitor):
        app.register_blueprint(module.bp)
    if settings.fault_hooks:  # test-only: the fault suite makes named loops raise through it
        from webapp.routes import debug

        log.warning("RELAYHOUSE_FAULT_HOOKS is on: POST /debug/fault can crash loops "
                    "(a test-only setting; never set it in production)")
        app.register_blueprint(debug.bp)
    register_commands(app)
    register_health_listener(app, settings)  # first of the checks: the probes' port opens nothing else
    register_cors(app, settings)  # before the access check: preflights carry no token

    @app.before_request
    def one_value_per_parameter():
        """A query parameter given twice is a 400 naming it: read silently, the first value won
        (`limit=5&limit=abc` served, `topics=T.A&topics=Q.B` dropped Q.B), and where the first was
        bad the same request was refused only in the other order (an outside audit). A query string
        that is not UTF-8 once decoded is a 400 too: werkzeug put U+FFFD in place of the bytes, and
        `/query?sql=SELECT%20%27%ff%27` ran `SELECT '\ufffd'` (an outside audit)."""
        raw = request.query_string
        if b"%" in raw or not raw.isascii():
            try:
                unquote_to_bytes(raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                return json_error(400, f"the query string is not UTF-8 once %-decoded (byte {exc.start})")
        if b"&" in raw:
            for name, values in request.args.lists():
                if len(values) > 1 and name in QUERY_PARAMETERS:  # others are not read: ignored, as ever
                    return json_error(400, f"parameter {printable(name[:64])!r} is given more than once: "
                                           "give it once (topics take a comma-separated list)")
        return None

    @app.before_request
    def check_access():
        view = app.view_functions.get(request.endpoint or "")
        if view is None:
            return None  # 404/405 are answered by the error handler
        refused = refusal(getattr(view, "access", CLIENT), request, settings.api_tokens, settings.admin_token)
        if refused is not None:
            return json_error(*refused)
        return None

    @app.before_request
    def read_body_in_time():
        """Read a request's body before any route sees it, within BODY_TIMEOUT_S and MAX_BODY_BYTES.

        A client that sends headers and then stalls would otherwise hold a
        greenlet and a socket for as long as it likes. The body stays cached
        for the route (get_data/get_json read the cache).
        """
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if not request.content_length and not chunked:
            return None
        if request.content_length and request.content_length > settings.max_body_bytes:
            return None  # werkzeug answers 413 without reading it
        try:
            with gevent.Timeout(settings.body_timeout_s):
                request.get_data(cache=True)
                # werkzeug stops reading a chunked body at MAX_CONTENT_LENGTH without saying
                # so: read up to the limit, and a byte beyond it means the body was too big
                too_big = chunked and request.content_length is None and request.stream.read(1)
        except gevent.Timeout:
            log.info("%s %s: the request body did not arrive within %g s", request.method, printable(request.path),
                     settings.body_timeout_s)
            error = json_error(408, f"the request body did not arrive within {settings.body_timeout_s:g} s")
            # The rest of the body is never read: the connection closes after the 408, which says
            # so (before, gunicorn said keep-alive, then drained the body into end-of-stream).
            # Its reading side is ended as well, in case the server keeps it for a drain anyway.
            response = LastResponse(error.get_data(), 408, mimetype=error.mimetype)
            sock = request.environ.get("gunicorn.socket")
            if sock is not None:
                response.call_on_close(lambda: _stop_reading(sock))
            return response
        if too_big:
            return json_error(413, f"the request body exceeds {settings.max_body_bytes} bytes")
        return None

    @app.after_request
    def never_sniffed(response: Response) -> Response:
        """Every answer's type is the one it names: JSON, the monitor's assets, /metrics' text (an outside
        audit found only /monitor itself said so)."""
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.after_request
    def options_without_a_body(response: Response) -> Response:
        """Flask answers OPTIONS itself: 200 with an empty text/html body. Every answer is JSON or has no body:
        204 with its Allow header."""
        if request.method == "OPTIONS" and response.status_code == 200 and not response.get_data():
            response.status_code = 204
            del response.headers["Content-Type"]
        return response

    @app.errorhandler(ParamError)
    def bad_parameter(exc: ParamError):
        return json_error(400, str(exc))

    @app.errorhandler(WebsocketMismatch)
    def not_an_upgrade(exc: WebsocketMismatch):
        return json_error(400, "this route needs a WebSocket upgrade request")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        response = json_error(exc.code or 500, exc.description or exc.name)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if type(exc).__module__ == "gunicorn.http.errors":  # a malformed body (bad chunk) met while reading it
            return json_error(400, f"malformed request: {exc}")
        log.exception("unhandled error on %s %s", request.method, printable(request.path))
        return json_error(500, "internal error")

    return app
