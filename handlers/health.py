"""The degraded verdict as data: what the parts report in, the reasons the relay is degraded out."""

from dataclasses import dataclass

# How long the leader's outbox may stay full, or its appends keep failing, before the relay says it is
# degraded: a burst that fills the outbox for a moment, or one refused append, is not a reason.
BUS_STUCK_GRACE_S = 3.0


@dataclass(frozen=True, slots=True)
class HealthFacts:
    """What /health knows about each part at one moment (gathered by the shell)."""

    leading: bool  # this worker holds the upstream (alone, or the cluster's leader)
    upstream_connected: bool
    in_grace: bool  # within STARTUP_GRACE_S of the start
    shutting_down: bool
    ready: bool  # seq base and epoch known
    store_ok: bool
    spooled: int  # events in the spool, not yet in the store
    bus_ok: bool
    follower_without_leader: bool  # a cluster follower that knows of no leader
    tasks_down: tuple[str, ...] = ()  # supervised loops waiting for a restart (or the worker's exit)
    outbox_full_s: float = 0.0  # how long the leader's bus outbox has been full (the upstream held); 0: not full
    append_failing_s: float = 0.0  # how long every append to Redis has failed, without one success; 0: none
    append_error: str | None = None  # the last append failure, e.g. "refused: OutOfMemoryError: ..."
    readers_wait_s: float = 0.0  # how long the leader's publisher has held events back for a reader far behind
    bus_refused: str | None = None  # Redis answers this worker's last bus call with an error (a refusal)


def degraded_reasons(facts: HealthFacts) -> tuple[str, ...]:
    """Why the relay is degraded, in words; empty when it is ok."""
    reasons = []
    if facts.leading and not facts.upstream_connected and not facts.in_grace:
        reasons.append("upstream disconnected")
    if facts.shutting_down:
        reasons.append("shutting down")
    if not facts.ready:
        reasons.append("starting: seq base not known yet")
    if not facts.store_ok:
        reasons.append("store failing")
    if facts.spooled > 0:
        reasons.append(f"{facts.spooled} events spooled")
    if not facts.bus_ok:
        reasons.append("bus (Redis) unavailable")
    elif facts.bus_refused:
        reasons.append(f"bus (Redis) refuses: {facts.bus_refused}")
    if facts.follower_without_leader and not facts.in_grace:
        reasons.append("no leader known")
    if facts.outbox_full_s >= BUS_STUCK_GRACE_S:
        reasons.append(f"bus outbox full for {facts.outbox_full_s:.0f} s: the upstream is held")
    if facts.append_failing_s >= BUS_STUCK_GRACE_S:
        reasons.append(f"Redis appends failing for {facts.append_failing_s:.0f} s: {facts.append_error}")
    if facts.readers_wait_s >= BUS_STUCK_GRACE_S:
        reasons.append(f"bus publisher waiting {facts.readers_wait_s:.0f} s for a reader more than half of "
                       "STREAM_MAXLEN behind")
    if facts.tasks_down:
        reasons.append("restarting: " + ", ".join(facts.tasks_down))
    return tuple(reasons)
