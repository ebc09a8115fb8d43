"""What a starting leader continues from, as a pure function of what the store, the spool, the local
state and the stream say (the shell gathers those; this decides)."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    last_seq: int  # the next event gets last_seq + 1
    epoch: str | None  # the seq space to continue; None: nothing to continue, start a fresh one
    lost: tuple[int, int] | None  # numbered before a crash and never persisted (told to resuming clients)
    reserve_to: int | None  # the seq reservation to save before numbering (None in a cluster: the stream is the record)
    unwritten_after: int | None  # stream events above this seq are the store's to receive (None: store unknown)


def plan_recovery(*, store_max: int | None, spool_max: int, reserved: int, floor_seq: int,
                  floor_epoch: str | None, stored_epoch: str | None, local_epoch: str | None,
                  current_epoch: str | None, clustered: bool, block: int) -> RecoveryPlan:
    """`store_max` None: the store did not answer. `floor_seq`/`floor_epoch`: the stream's newest (cluster)."""
    last_seq = max(store_max or 0, spool_max, reserved, floor_seq)
    epoch = (floor_epoch or stored_epoch or local_epoch or current_epoch) if last_seq else None
    persisted = max(store_max, spool_max) if store_max is not None else None
    lost = None
    if not clustered and persisted is not None and last_seq > persisted:
        lost = (persisted + 1, last_seq)
    return RecoveryPlan(
        last_seq=last_seq,
        epoch=epoch,
        lost=lost,
        reserve_to=None if clustered else last_seq + block,
        unwritten_after=None if store_max is None else max(store_max, spool_max),
    )
