"""gunicorn settings (stdlib only): one gevent worker unless REDIS_URL, hooks that start and stop the relay."""

import logging
import os
import re
import resource
import signal
import sys
from urllib.parse import unquote_plus

_redis = bool(os.environ.get("REDIS_URL"))
_requested = os.environ.get("WEB_CONCURRENCY", "1")


def _health_bind():
    """HEALTH_BIND's listener, when its value is good: a bad one is left unbound here and stops the
    worker with every other bad variable (webapp/settings.py), in one message."""
    raw = os.environ.get("HEALTH_BIND", "").strip()
    if not raw:
        return []
    from handlers.listeners import parse_bind  # pure and stdlib-only: nothing of the web stack in the master

    try:
        host, port = parse_bind(raw)
    except ValueError:
        return []
    if str(port) == os.environ.get("PORT", "8000").strip():
        return []  # the same port twice: Settings' cross-check names it
    return [f"{host}:{port}"]


# a second listener for /health and /metrics only: a probe's connect does not queue behind a connect
# storm in the main port's accept queue (docs/operations.md)
bind = [f"0.0.0.0:{os.environ.get('PORT', '8000')}", *_health_bind()]
worker_class = "gevent"
workers = int(_requested) if _redis and _requested.isdigit() else 1
# gunicorn's default of 1000 would cap clients; stay under the open-file limit (sockets + spare)
_nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
_nofile_hard = 1 << 20 if _nofile_hard == resource.RLIM_INFINITY else _nofile_hard
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", str(max(1000, min(20000, _nofile_hard - 256)))))
# a reconnect storm (every client of a deploy at once) must wait in the accept queue, not be refused:
# 10,000 connects within a second left up to ~8,600 waiting here (docs/benchmarks.md, "the listen queue
# in a storm"); the kernel caps it at net.core.somaxconn (4096 by default; gunicorn's default is 2048)
backlog = int(os.environ.get("BACKLOG", "16384"))
_SOMAXCONN = "/proc/sys/net/core/somaxconn"
graceful_timeout = int(float(os.environ.get("GRACEFUL_TIMEOUT_S", "10")))
timeout = 30
keepalive = 5
control_socket_disable = True  # gunicorn 27 would otherwise open a shared control socket
preload_app = False  # background greenlets must start in each worker, never in the master
accesslog = os.environ.get("ACCESS_LOG") or None
# gunicorn's default line, but for %(u)s: the user name of an `Authorization: Basic` header, where a
# client may put its token (an outside audit found `curl -u TOKEN:` logged in clear); never printed
access_log_format = '%(h)s %(l)s - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


# A value runs to the next & or white space, as Flask reads it (a token may hold ; or "): a quote
# that closes the log's own field is given back.
_PARAM = re.compile(r'([?&;])([^=&;\s"?#]+)=([^&\s]*)')
_BEARER = re.compile(r"(?i)\b(bearer)\s+(\S+)")


def _closing_quote(value):
    return '"' if value.endswith('"') else ""


def redact(text):
    """A log line without secrets: token= values (the name percent-decoded, as Flask reads it) and
    bearer credentials become ***. gunicorn's access log prints the query string and the Referer."""
    def param(match):
        if unquote_plus(match.group(2)).strip().lower() != "token":
            value = match.group(3)
            if "?" not in value:
                return match.group(0)
            # `?limit=1?token=x`: Flask reads limit as "1?token=x", a token mistyped into it all the same
            cut = value.index("?")
            return f"{match.group(1)}{match.group(2)}={value[:cut]}{_PARAM.sub(param, value[cut:])}"
        return f"{match.group(1)}{match.group(2)}=***{_closing_quote(match.group(3))}"

    def bearer(match):
        return f"{match.group(1)} ***{_closing_quote(match.group(2))}"

    return _BEARER.sub(bearer, _PARAM.sub(param, text))


class RedactSecrets(logging.Filter):
    """On every handler of the worker's logs: tokens never reach a log line (contract §6)."""

    def filter(self, record):
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def _json_http_errors():
    """gunicorn answers requests it cannot parse (a request line over 4094 bytes, a bad header) itself,
    with an HTML page; the contract wants every error as {"error": ...}. Its one writer is swapped for
    one that says the same thing in JSON (same status, same Connection: close)."""
    import json

    from gunicorn import util

    def write_error(sock, status_int, reason, mesg):
        body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason}).encode()
        head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        util.write_nonblock(sock, head.encode("latin-1") + body)

    util.write_error = write_error


def on_starting(server):
    _json_http_errors()  # in the master, before the workers fork
    # every client is a file descriptor: lift the soft limit to the hard one
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < worker_connections + 64:
        server.log.warning("open-file limit %d is below worker_connections=%d: raise it (ulimit -n)",
                           resource.getrlimit(resource.RLIMIT_NOFILE)[0], worker_connections)
    try:
        with open(_SOMAXCONN) as f:
            cap = int(f.read())
    except (OSError, ValueError):
        cap = None
    if cap is not None and cap < backlog:
        server.log.info("the listen queue holds %d connections (net.core.somaxconn), not BACKLOG=%d: a connect "
                        "storm larger than that has SYNs dropped and resent; raise net.core.somaxconn to hold it",
                        cap, backlog)
    if not _redis and _requested not in ("", "1"):
        server.log.warning("WEB_CONCURRENCY=%s ignored: several workers need REDIS_URL (one upstream "
                           "connection, one seq space); running one worker", _requested)


def post_worker_init(worker):
    from gunicorn.workers import ggevent

    import wsgi  # the app module; importing it again is free
    from webapp import accept, accesslog
    from webapp.conn import HeldPool

    # before the worker builds its pool: a connection held without a greenlet (webapp/conn.py)
    # keeps its request's slot, so worker_connections still caps every connection
    ggevent.Pool = HeldPool
    # HANDSHAKE_CONCURRENCY (opt-in): take a connect storm from the kernel's accept queue as it comes,
    # with a bounded number of handshakes in flight; else MAX_ACCEPT or gunicorn's pacing (webapp/accept.py)
    accept.install(ggevent, worker, wsgi.settings)
    # /ws, /sse and Polygon connections get their access line when they end (gunicorn never logs them)
    accesslog.install(worker.log)

    secrets_filter = RedactSecrets()
    for name in ("", "gunicorn.error", "gunicorn.access"):  # the app's root handler exists once wsgi is imported
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(secrets_filter)
    wsgi.start_runtime()
    _health_process(worker, wsgi)
    _tune_gc(wsgi.settings)
    handle_exit = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        # gunicorn's handler only flips worker.alive; clients must hear why first
        import gevent

        gevent.spawn(wsgi.stop_runtime)
        if callable(handle_exit):
            handle_exit(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def _health_process(worker, wsgi):
    """HEALTH_BIND answered by a small process this worker starts (webapp/healthchild.py), not by its gevent
    loop, so a connect storm's handshakes (and the worker's GIL) do not delay /health and /metrics there
    (webapp/healthproc.py). Before run() builds the servers: the listener is taken out of worker.sockets."""
    from webapp.healthproc import serve_in_child

    serve_in_child(worker, wsgi.app.extensions["relayhouse"], wsgi.settings)


def _tune_gc(settings):
    """What the interpreter loaded to boot (modules, the app) is moved out of the collector's reach,
    and the first generation collects every 5,000 allocations instead of 700, so collections are
    few and walk only what serving keeps alive. bench/latency_probe.py, 900 clients x 1000
    events/s, 20 s, 2 rounds: GC paused the worker 55-59 ms in all (the longest pause 26-37 ms,
    one gen-2 collection) with the interpreter's defaults; 12-13 ms (longest 3-4 ms, no gen-1 or
    gen-2 collection) with both. GC_FREEZE and GC_GEN0_THRESHOLD (webapp/settings.py) change them."""
    import gc

    gc.set_threshold(settings.gc_gen0_threshold, *gc.get_threshold()[1:])
    if settings.gc_freeze:
        gc.collect()
        gc.freeze()


def worker_exit(server, worker):
    # runs in the worker after its loop ends: let the shutdown finish flushing the store
    wsgi = sys.modules.get("wsgi")
    if wsgi is None:
        return  # the app never loaded (a bad setting): importing it here would print its error a second time
    wsgi.finish_runtime(timeout_s=max(1.0, graceful_timeout - 1))
