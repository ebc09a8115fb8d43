"""Redis failures by kind, for every loop that talks to Redis: which to retry, and what /health says."""

import redis

# Redis failures by kind; each is retried with a pause and shown in /health, never fatal to a loop:
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.InvalidResponse, OSError)  # no (sane) answer
REFUSED = (redis.ResponseError,)  # an answer that says no: READONLY after a failover, OOM at maxmemory, ...
FAILURES = UNREACHABLE + REFUSED
# anything else (DataError: arguments this code built wrongly) is a bug: the task crashes and is restarted


def failure_text(exc: Exception) -> str:
    """What /health says: 'refused' for an answer that said no, 'unavailable' for no answer."""
    kind = "refused" if isinstance(exc, REFUSED) else "unavailable"
    return f"{kind}: {type(exc).__name__}: {exc}"

