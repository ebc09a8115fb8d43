"""TOKEN_TOPICS entitlements as data: is a requested pattern within what a token may subscribe to?

A token's scope is a tuple of patterns (exact topics, prefixes ending in `*`,
or `*`). A requested pattern is within the scope when every topic it can
match is matched by the scope: an exact topic by any pattern of the scope,
a prefix `T.A*` only by `*` or a shorter-or-equal prefix (`T.*`, `T.A*`).
Checked where subscriptions are made, never per event.
"""

from typing import Iterable

Scope = tuple[str, ...] | None
"""None: not limited (the token is not listed in TOKEN_TOPICS, or there is no TOKEN_TOPICS)."""


def pattern_within(pattern: str, scope: Iterable[str]) -> bool:
    for allowed in scope:
        if allowed == pattern:
            return True
        if allowed.endswith("*"):
            prefix = allowed[:-1]
            if pattern.startswith(prefix):  # `T.A*` within `T.*`; `T.AAPL` within `T.*`
                return True
    return False


def split_by_scope(patterns: Iterable[str], scope: Scope) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(allowed, refused), each in the order given."""
    if scope is None:
        return tuple(patterns), ()
    allowed, refused = [], []
    for pattern in patterns:
        (allowed if pattern_within(pattern, scope) else refused).append(pattern)
    return tuple(allowed), tuple(refused)


def refusal_message(refused: Iterable[str]) -> str:
    names = list(refused)
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"not allowed for this token: {shown}"
