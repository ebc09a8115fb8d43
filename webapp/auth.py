"""Who may call what: client routes need an API token when API_TOKENS is set; admin routes the admin token or loopback."""

import hmac
import ipaddress
from typing import Callable

from flask import Request

OPEN, CLIENT, ADMIN = "open", "client", "admin"


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


def refusal(level: str, request: Request, api_tokens: tuple[str, ...], admin_token: str | None) -> tuple[int, str] | None:
    """(status, message) when the request may not proceed, else None."""
    if level == CLIENT and api_tokens:
        given = request.args.get("token") or bearer_token(request)
        if not token_matches(given, api_tokens):
            return 401, "a valid API token is required (token= query parameter or Authorization: Bearer)"
    elif level == ADMIN:
        if admin_token:
            if not token_matches(bearer_token(request), (admin_token,)):
                return 401, "the admin token is required (Authorization: Bearer <ADMIN_TOKEN>)"
        elif not is_loopback(request.remote_addr):
            return 403, "admin routes are only open to loopback peers when ADMIN_TOKEN is unset"
    return None
