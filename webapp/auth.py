"""Who may call what: client routes need an API token when API_TOKENS is set; admin routes the admin token or loopback;
TOKEN_TOPICS limits the topics a token may subscribe to and read."""

import hmac
import ipaddress
import re
import socket
from dataclasses import replace
from typing import Callable

from flask import Request
from werkzeug.exceptions import Forbidden

from handlers.entitlements import Scope, refusal_message, split_by_scope
from handlers.params import StreamParams, topics_param
from handlers.protocol import Action, error_message

OPEN, CLIENT, ADMIN = "open", "client", "admin"
# /<market>: the Polygon clients authenticate in-band (the `auth` message), so a request with no token is let
# through; one that brings a token (`token=`, Authorization: Bearer) not among API_TOKENS is refused before the
# upgrade, as contract §10 asks of /<market> too
MARKET = "market"


def access(level: str) -> Callable:
    """Mark a view function's access level (read by the app's before_request)."""
    def mark(view: Callable) -> Callable:
        view.access = level
        return view
    return mark


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def token_matches(given: str | None, accepted: tuple[str, ...]) -> bool:
    """Constant-time: every accepted token is compared, whatever matches first."""
    if given is None:
        return False
    given_b = given.encode()
    found = False
    for token in accepted:
        found |= hmac.compare_digest(given_b, token.encode())
    return found


def is_loopback(addr: str | None) -> bool:
    try:
        return addr is not None and ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


# this machine's own name: Debian maps it to 127.0.1.1, so `curl http://$(hostname):8000/...` is a loopback peer
OWN_NAME = socket.gethostname().lower().rstrip(".")


# host[:port] as a Host header or an Origin carries it, nothing else (no user info, path, %-escape or
# port outside 0..65535: '127.0.0.1:80@evil.com' and 'localhost:evil' passed a looser reading)
HOST_PORT = re.compile(r"(?:\[([0-9a-f:.]+)\]|([a-z0-9_.-]+))(?::([0-9]{1,5}))?")


def is_loopback_host(host: str | None) -> bool:
    """A Host header (or an Origin's host) naming this machine: localhost, *.localhost, its own host name or a
    loopback address, with or without a port."""
    match = HOST_PORT.fullmatch(host.strip().lower()) if host else None
    if match is None or (match.group(3) is not None and int(match.group(3)) > 65535):
        return False
    name = (match.group(1) or match.group(2)).rstrip(".")
    return name in ("localhost", OWN_NAME) or name.endswith(".localhost") or is_loopback(name)


def is_loopback_origin(origin: str | None) -> bool:
    """No Origin (not a browser's cross-origin call), or one on this machine."""
    if origin is None:
        return True
    scheme, sep, rest = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and is_loopback_host(rest)  # an Origin has no path


def request_authority(request: Request) -> str | None:
    """The host the request names: an absolute-form target's authority (RFC 9112 §3.2.2: it wins over Host),
    else the Host header."""
    target = request.environ.get("RAW_URI") or ""
    if target[:8].lower().startswith(("http://", "https://")):
        return target.split("://", 1)[1].split("/", 1)[0]
    return request.headers.get("Host")


def refusal(level: str, request: Request, api_tokens: tuple[str, ...], admin_token: str | None) -> tuple[int, str] | None:
    """(status, message) when the request may not proceed, else None."""
    if level == CLIENT and api_tokens:
        if not token_matches(request_token(request), api_tokens):
            return 401, "a valid API token is required (token= query parameter or Authorization: Bearer)"
    elif level == MARKET and api_tokens:
        given = request_token(request)
        if given is not None and not token_matches(given, api_tokens):
            return 401, "the token given is not valid (a Polygon client may also bring none and send its key in 'auth')"
    elif level == ADMIN:
        if admin_token:
            if not token_matches(bearer_token(request), (admin_token,)):
                return 401, "the admin token is required (Authorization: Bearer <ADMIN_TOKEN>)"
        elif not is_loopback(request.remote_addr):
            return 403, "admin routes are only open to loopback peers when ADMIN_TOKEN is unset"
        elif not is_loopback_host(request_authority(request)) or not is_loopback_origin(request.headers.get("Origin")):
            # a loopback peer is also any web page open in a browser on this machine: through a DNS name
            # rebound to 127.0.0.1 (its Host) or by CORS (its Origin) it cleared the cache and published
            # (an outside audit); without ADMIN_TOKEN the request must name this machine on both
            return 403, ("without ADMIN_TOKEN, admin routes need a loopback peer, a Host of localhost or a "
                         "loopback address, and no Origin or one of this machine")
    return None


# -- TOKEN_TOPICS: what a token may subscribe to (checked where subscriptions are made) ------------


class TopicsForbidden(Forbidden):
    """A `topics=` outside the token's TOKEN_TOPICS patterns: 403, naming them."""

    def __init__(self, refused: tuple[str, ...]):
        super().__init__(refusal_message(refused))


def request_token(request: Request) -> str | None:
    return request.args.get("token") or bearer_token(request)


def request_scope(request: Request, settings) -> Scope:
    """The patterns this request's token may subscribe to; None when it is not limited."""
    return settings.topic_scope(request_token(request)) if settings.token_topics else None


def scoped_topics(args, scope: Scope) -> tuple[str, ...]:
    """`topics=` for REST and /sse: the token's own patterns when absent; a 403 when any is outside them."""
    if scope is None:
        return topics_param(args)
    if not args.get("topics"):
        return scope
    patterns = topics_param(args)
    _, refused = split_by_scope(patterns, scope)
    if refused:
        raise TopicsForbidden(refused)
    return patterns


def scoped_stream(params: StreamParams, args, scope: Scope) -> tuple[StreamParams, tuple[str, ...]]:
    """/ws and /sse parameters within the scope, and the patterns left out (/sse answers those with 403,
    /ws with an error frame, the rest of the subscription applying)."""
    if scope is None:
        return params, ()
    if not args.get("topics"):
        return replace(params, topics=scope), ()
    allowed, refused = split_by_scope(params.topics, scope)
    return replace(params, topics=allowed), refused


def scoped_action(action, scope: Scope, refuse: Callable[[bytes], None]):
    """A /ws subscribe with what the scope allows; `refuse` gets the error frame for the rest."""
    if scope is None or not isinstance(action, Action) or action.kind != "subscribe":
        return action
    allowed, refused = split_by_scope(action.topics, scope)
    if refused:
        refuse(error_message(refusal_message(refused)))
    return replace(action, topics=allowed)
