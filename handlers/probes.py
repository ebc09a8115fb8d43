"""The health listener's HTTP without I/O: a request head read into what to answer, the event loop's
stall verdict, and the answers' bytes (webapp/healthchild.py does the sockets)."""

from dataclasses import dataclass
from urllib.parse import parse_qsl

from handlers import jsonx
from handlers.params import ParamError, bool_param

HEALTH, METRICS = "/health", "/metrics"
PATHS = frozenset({HEALTH, METRICS})
METHODS = frozenset({"GET", "HEAD"})
MAX_REQUEST_LINE = 4094  # gunicorn's limit_request_line, so both listeners refuse the same lines
MAX_HEAD_BYTES = 8192  # the request line and every header together
NOT_HERE = "the health listener serves only /health and /metrics"
PHRASES = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           414: "URI Too Long", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


@dataclass(frozen=True)
class Probe:
    """A request the health listener answers: its path, whether the body is wanted, ?strict=."""

    path: str
    head_only: bool = False
    strict: bool = False


@dataclass(frozen=True)
class Refusal:
    """A request answered with an error: status, the {"error": ...} message, an Allow header."""

    status: int
    message: str
    allow: str | None = None


def head_end(buffer: bytes) -> int | None:
    """Where the head received so far ends (just past its blank line), None while it has not."""
    end = buffer.find(b"\r\n\r\n")
    return None if end < 0 else end + 4


def oversize(buffer: bytes) -> Refusal | None:
    """The refusal for a head that already passed a bound (checked after every read), else None."""
    line_end = buffer.find(b"\r\n")
    line_len = len(buffer) if line_end < 0 else line_end
    if line_len > MAX_REQUEST_LINE:
        return Refusal(414, f"request line over {MAX_REQUEST_LINE} bytes")
    end = head_end(buffer)
    if (len(buffer) if end is None else end) > MAX_HEAD_BYTES:
        return Refusal(431, f"request head over {MAX_HEAD_BYTES} bytes")
    return None


def read_probe(head: bytes) -> Probe | Refusal:
    """What to answer to a complete request head (headers and any body are not read: every answer
    closes the connection)."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if (len(parts) != 3 or not parts[0].isascii() or not parts[0].isalpha() or not parts[0].isupper()
            or parts[2] not in ("HTTP/1.0", "HTTP/1.1")):
        return Refusal(400, "malformed request line: expected METHOD /path HTTP/1.1")
    method, target, _ = parts
    if not target.startswith("/") or any(not 0x21 <= ord(c) <= 0x7E for c in target):
        return Refusal(400, "malformed request target: expected /health or /metrics")
    path, _, query = target.partition("?")
    if path not in PATHS:
        return Refusal(404, NOT_HERE)
    if method not in METHODS:
        return Refusal(405, f"{method} is not allowed here: use GET", allow="GET, HEAD")
    if path != HEALTH:
        return Probe(path, head_only=method == "HEAD")
    strict = next((value for name, value in parse_qsl(query, keep_blank_values=True) if name == "strict"), "")
    try:
        # as on PORT: a value that is no flag is a 400
        return Probe(path, head_only=method == "HEAD", strict=bool_param({"strict": strict}, "strict"))
    except ParamError as exc:
        return Refusal(400, str(exc))


def loop_state(silent_s: float, stall_s: float, report_age_s: float | None) -> dict:
    """The event loop as /health on the health listener reports it: how long since it last ran its
    heartbeat, the bound past which that is a stall, and how old the rest of the report is."""
    return {"silent_ms": round(silent_s * 1000), "stall_ms": round(stall_s * 1000), "stalled": silent_s > stall_s,
            "report_age_ms": None if report_age_s is None else round(report_age_s * 1000)}


def health_answer(report: bytes | None, loop: dict, strict: bool) -> tuple[int, bytes]:
    """(status, body) of /health from the loop's last report (JSON, None before the first) and
    `loop_state`: a stalled loop, or no report yet, is a 503 whatever ?strict= says."""
    if report is None:
        body = {"status": "degraded", "reasons": ["no report from the worker's event loop yet"]}
        return 503, jsonx.dumps({**body, "loop": loop})
    body = jsonx.loads(report)
    if loop["stalled"]:
        body["status"] = "degraded"
        body["reasons"] = [*body.get("reasons", []),
                           f"event loop stalled: it has not run for {loop['silent_ms']} ms "
                           f"(HEALTH_LOOP_STALL_MS={loop['stall_ms']})"]
    body["loop"] = loop
    bad = loop["stalled"] or (strict and body.get("status") != "ok")
    return (503 if bad else 200), jsonx.dumps(body)


def metrics_answer(text: bytes, silent_s: float, report_age_s: float) -> bytes:
    """The loop's last /metrics text with two gauges only the health listener's thread can know."""
    return text + (
        "# HELP relayhouse_event_loop_silent_seconds Seconds since this worker's event loop last ran its "
        "heartbeat (every 0.1 s; from the health listener's thread)\n"
        "# TYPE relayhouse_event_loop_silent_seconds gauge\n"
        f"relayhouse_event_loop_silent_seconds {silent_s:.3f}\n"
        "# HELP relayhouse_metrics_age_seconds Age of the other values of this scrape (taken on the event loop)\n"
        "# TYPE relayhouse_metrics_age_seconds gauge\n"
        f"relayhouse_metrics_age_seconds {report_age_s:.3f}\n").encode()


def response(status: int, body: bytes, content_type: str = "application/json", *, head_only: bool = False,
             allow: str | None = None, retry_after: int | None = None) -> bytes:
    """One HTTP/1.1 response that closes the connection."""
    lines = [f"HTTP/1.1 {status} {PHRASES[status]}", "Connection: close",
             f"Content-Type: {content_type}", f"Content-Length: {len(body)}", "Cache-Control: no-store"]
    if allow:
        lines.append(f"Allow: {allow}")
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


def refusal_response(refusal: Refusal) -> bytes:
    return response(refusal.status, jsonx.dumps({"error": refusal.message}), allow=refusal.allow)
