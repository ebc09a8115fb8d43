"""URLs as /health, the monitor and the log show them: credentials in them replaced.

An upstream URL may carry a password (`ws://user:pass@host/`) or a key in its query
(`?apiKey=...`); /health is open to anyone who can reach the relay and the log is read
by more people than hold the key (an outside audit found both in clear). The URL the
relay connects to is unchanged; only what it shows is masked.
"""

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

MASK = "***"
# query parameters whose values are credentials: apiKey, api_key, token, access_token, secret, password,
# passwd, auth, authorization, signature, sig, credential, session, jwt
SECRET_NAME = re.compile(r"key|token|secret|pass|auth|sig|cred|session|jwt", re.IGNORECASE)


def shown_url(url: str) -> str:
    """`url` with its user info and the values of credential-like query parameters masked, its fragment
    dropped; a URL that does not parse is shown as its scheme and host only, or masked whole."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc}"
    items = []
    for item in parts.query.split("&"):
        name, eq, value = item.partition("=")
        if eq and SECRET_NAME.search(unquote_plus(name)):  # api%4Bey is apiKey too
            value = MASK
        items.append(name + eq + value)
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(items), ""))
