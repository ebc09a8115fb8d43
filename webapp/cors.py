"""CORS: which other web origins may read the relay's HTTP answers; none unless CORS_ORIGINS says so.

Closed by default: without CORS_ORIGINS no Access-Control-* header is ever
sent, so a page on another origin cannot read any answer (the browser
blocks it). With it, listed origins (or every origin, for `*`) may read
answers; credentials (`Access-Control-Allow-Credentials: true`) are allowed
only with CORS_ALLOW_CREDENTIALS=true and an explicit list, never with `*`.

Preflight requests (OPTIONS with `Access-Control-Request-Method`) are
answered here, before the access check: a browser never sends a token with a
preflight, so the check would refuse it and the real request could never be
made. The real request is checked as usual.

WebSocket upgrades are not governed by CORS in browsers; /ws and the Polygon
sockets authenticate with tokens (never cookies), so a foreign page gains
nothing by opening one without a token.
"""

from flask import Flask, Response, request

from webapp.settings import Settings

ALLOWED_HEADERS = "Authorization, Content-Type, Last-Event-ID"
EXPOSED_HEADERS = "Allow, Retry-After"


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    return bool(origin) and ("*" in allowed or origin in allowed)


def register_cors(app: Flask, settings: Settings) -> None:
    """Answer preflights and mark readable answers, per CORS_ORIGINS and CORS_ALLOW_CREDENTIALS."""
    allowed = settings.cors_origins
    credentials = settings.cors_allow_credentials and "*" not in allowed
    max_age = str(settings.cors_max_age_s)
    # the answer depends on the Origin unless every origin gets the same `*`: say so on every answer,
    # those to origins not listed too, or a shared cache may hand one origin's answer to another
    by_origin = bool(allowed) and not ("*" in allowed and not credentials)

    def allow_origin(response: Response, origin: str) -> None:
        if "*" in allowed and not credentials:
            response.headers["Access-Control-Allow-Origin"] = "*"
        else:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.vary.add("Origin")
        if credentials:
            response.headers["Access-Control-Allow-Credentials"] = "true"

    @app.before_request
    def preflight():
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        if request.url_rule is None:
            return None  # an unknown path: 404 as usual
        response = Response(status=204)
        if by_origin:
            response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin_allowed(origin, allowed):
            allow_origin(response, origin)
            # every method of the path: its routes may be several (GET and PUT /cache/config are two, and
            # the preflight for PUT named only the first's GET)
            path = request.url_rule.rule
            methods = sorted({m for rule in app.url_map.iter_rules() if rule.rule == path
                              for m in rule.methods or ()} - {"HEAD"})
            response.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = max_age
        return response

    @app.after_request
    def mark(response: Response) -> Response:
        if by_origin:
            response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin_allowed(origin, allowed) and "Access-Control-Allow-Origin" not in response.headers:
            allow_origin(response, origin)
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return response
