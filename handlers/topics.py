"""Event topics: derive one from an event's data, and match topic patterns."""

from dataclasses import dataclass
from typing import Any, Iterable

from handlers import jsonx

DEFAULT_TOPIC = "default"
MAX_PATTERN_LENGTH = 256
MAX_PATTERNS = 1000


def topic_of(data: Any, fields: tuple[str, ...]) -> str:
    """Join the values of `fields` present in `data` with '.'; 'default' if none is."""
    if not isinstance(data, dict):
        return DEFAULT_TOPIC
    parts = [_topic_part(data[f]) for f in fields if f in data]
    return ".".join(parts) if parts else DEFAULT_TOPIC


def _topic_part(value: Any) -> str:
    if isinstance(value, str):
        return value if value.isascii() else text_of(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        # as JSON text, as every other value is written (an outside audit found the Python repr
        # `{'k0': [...]}` in topics)
        return jsonx.dumps(value).decode()
    return str(value)


def text_of(value: str) -> str:
    """`value` as text every store and client can take: a lone surrogate (JSON allows the escape
    "\\udfff", UTF-8 has no encoding for it) becomes U+FFFD. A topic is a stored column and a
    subscription key: one such topic made the store refuse its whole batch."""
    try:
        value.encode()
        return value
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class PatternError(ValueError):
    """A topic pattern that is not an exact topic, a prefix ending in '*', or '*'."""


def parse_patterns(raw: str | Iterable[Any]) -> tuple[str, ...]:
    """Validate patterns from a comma-separated string or a list; order kept, duplicates dropped."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    if len(items) > MAX_PATTERNS:
        raise PatternError(f"at most {MAX_PATTERNS} topic patterns")
    seen: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise PatternError(f"topic pattern must be a string, got {type(item).__name__}")
        pattern = item.strip()
        if not pattern:
            raise PatternError("empty topic pattern")
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise PatternError(f"topic pattern longer than {MAX_PATTERN_LENGTH} characters")
        if not pattern.isascii() and text_of(pattern) is not pattern:
            # "\udfff" is legal JSON and no UTF-8: taken as a pattern, it failed every message that carried
            # it (the upstream's subscribe, a cluster's Redis entry), every other client's patterns with it
            raise PatternError("topic pattern holds a lone surrogate (\\ud800-\\udfff): not Unicode text")
        if "*" in pattern[:-1]:
            raise PatternError(f"'*' may only end a topic pattern: {pattern!r}")
        seen[pattern] = None
    if not seen:
        raise PatternError("no topic patterns")
    return tuple(seen)


@dataclass(frozen=True, slots=True)
class Matcher:
    """A compiled set of patterns; call it with a topic."""

    patterns: tuple[str, ...]
    everything: bool
    exact: frozenset[str]
    prefixes: tuple[str, ...]

    def __call__(self, topic: str) -> bool:
        return self.everything or topic in self.exact or topic.startswith(self.prefixes)


def compile_patterns(patterns: Iterable[str]) -> Matcher:
    """Build a matcher; `patterns` must already be valid (see parse_patterns)."""
    pats = tuple(dict.fromkeys(patterns))
    prefixes = tuple(p[:-1] for p in pats if p.endswith("*"))
    return Matcher(
        patterns=pats,
        everything="" in prefixes,
        exact=frozenset(p for p in pats if not p.endswith("*")),
        prefixes=prefixes,
    )


MATCH_ALL = compile_patterns(("*",))


def add_patterns(current: tuple[str, ...], added: Iterable[str],
                 limit: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A subscribe under a cap: the subscription after it, and the new patterns refused because it
    would hold more than `limit` (the ones already held always stay; the first new ones win)."""
    after = dict.fromkeys(current)
    refused: list[str] = []
    for pattern in added:
        if pattern in after:
            continue
        if len(after) >= limit:
            refused.append(pattern)
            continue
        after[pattern] = None
    return tuple(after), tuple(refused)


def limit_message(limit: int, refused: tuple[str, ...]) -> str:
    """What a client is told when its subscribe passed the cap."""
    return (f"subscription limit of {limit} patterns reached: {len(refused)} not subscribed "
            f"(first: {refused[0][:64]!r})")


def remove_patterns(current: tuple[str, ...], removed: Iterable[str]) -> tuple[str, ...]:
    """The subscription after an unsubscribe (may become empty)."""
    gone = set(removed)
    return tuple(p for p in current if p not in gone)
