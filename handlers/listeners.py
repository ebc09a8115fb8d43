"""A listener's address: `host:port` or `[v6]:port` text checked and split, for HEALTH_BIND."""


def parse_bind(text: str) -> tuple[str, int]:
    """(host, port) of `text`; ValueError naming the expected form. The host keeps its brackets (gunicorn's
    form); the port is a real one, never 0 (any)."""
    host, sep, port = text.strip().rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    bracketed = bare != host
    if (not sep or not port.isdigit() or not bare or (":" in bare) != bracketed
            or any(c.isspace() or c in "/[]@" for c in bare)):
        raise ValueError(f"expected host:port such as 127.0.0.1:8001 or [::1]:8001, got {text.strip()[:60]!r}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{int(port)} is outside 1..65535")
    return host, int(port)
