"""A WebSocket opening handshake checked before the library sees it (RFC 6455 §4.2.1), as data.

simple-websocket hands the request to wsproto, which raises on a missing or unknown
`Sec-WebSocket-Version`: the relay answered 500 and logged a 25-line traceback per request (an outside
audit: 20 requests, 500 log lines), and it upgraded a request with a malformed `Sec-WebSocket-Key` or over
HTTP/1.0. Each is refused here with the status RFC 6455 names.
"""

import binascii
from dataclasses import dataclass

SUPPORTED_VERSION = "13"


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


def _tokens(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",")}


def upgrade_refusal(protocol: str, upgrade: str, connection: str, version: str | None,
                    key: str | None) -> Refusal | None:
    """Why this request cannot become a WebSocket (None: it can). Header values as the WSGI environ holds
    them (a header sent twice arrives joined with ', ')."""
    if "websocket" not in _tokens(upgrade) or key is None:
        return Refusal(400, "this route needs a WebSocket upgrade request")
    if protocol.upper() in ("HTTP/0.9", "HTTP/1.0"):
        return Refusal(400, "a WebSocket upgrade needs HTTP/1.1")
    if "upgrade" not in _tokens(connection):
        return Refusal(400, "a WebSocket upgrade needs 'Connection: Upgrade'")
    if version is None or version.strip() != SUPPORTED_VERSION:
        return Refusal(426, f"'Sec-WebSocket-Version' must be {SUPPORTED_VERSION}",
                       (("Sec-WebSocket-Version", SUPPORTED_VERSION),))
    try:
        nonce = binascii.a2b_base64(key.strip().encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        nonce = b""
    if len(nonce) != 16:
        return Refusal(400, "'Sec-WebSocket-Key' must be 16 bytes in base64, sent once")
    return None
