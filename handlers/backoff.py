"""Reconnect delays: exponential, capped, with jitter so a fleet does not reconnect in step."""


def reconnect_delay_ms(attempt: int, min_ms: int, max_ms: int, jitter: float) -> float:
    """Delay before reconnect number `attempt` (0-based); `jitter` is a uniform draw in [0, 1).

    "Equal jitter": half the capped exponential step is fixed, half is random,
    so the delay never collapses to zero and never exceeds `max_ms`.
    """
    step = min(max_ms, min_ms * (2 ** min(attempt, 32)))
    return step / 2 + jitter * step / 2
