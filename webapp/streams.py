"""What a new /ws or /sse client is sent first: recent events, or everything after its `since`."""

from dataclasses import dataclass

from handlers.events import Event
from handlers.params import StreamParams
from handlers.resume import plan_resume
from handlers.topics import Matcher


@dataclass(frozen=True, slots=True)
class Opening:
    epoch: str
    last_seq: int
    recovered: bool
    missing: tuple[int, int] | None
    events: list[Event]


def open_stream(runtime, params: StreamParams, matcher: Matcher) -> Opening:
    """Never yields: the caller registers the client with the hub right after,
    so nothing published in between is lost or sent twice."""
    now = runtime.now_ms()
    cache = runtime.cache
    last_seq = runtime.last_seq
    if params.since is None:
        events = cache.recent(params.snapshot, now, matcher) if params.snapshot else []
        return Opening(runtime.epoch, last_seq, True, None, events)
    plan = plan_resume(params.since, params.epoch, runtime.epoch, last_seq, cache.oldest_seq(now))
    events = cache.events_after(plan.after_seq, now, matcher)
    return Opening(runtime.epoch, last_seq, plan.recovered, plan.missing, events)
