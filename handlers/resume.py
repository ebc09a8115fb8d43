"""What a resuming client is owed: which seqs to send and which are gone for good."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """Send every matching event with seq > `after_seq` (up to last_seq).

    `missing` is the inclusive seq range that cannot be served; `recovered`
    is False when anything is missing or the client's epoch is not ours.
    """

    after_seq: int
    recovered: bool
    missing: tuple[int, int] | None = None


def is_foreign(since: int, epoch: str | None, current_epoch: str, last_seq: int) -> bool:
    """Does a resume's `since` belong to another seq space: another epoch named, or past our last seq?"""
    return (epoch is not None and epoch != current_epoch) or since > last_seq


def plan_resume(since: int, epoch: str | None, current_epoch: str, last_seq: int,
                available_from: int | None) -> ResumePlan:
    """Plan a resume after `since`.

    `available_from` is the lowest seq from which every event up to
    `last_seq` can still be served (cache, or store), None when none can.
    A different epoch, or a `since` beyond anything this relay has numbered,
    means the client's seq belongs to another seq space: it gets everything
    still available in ours, flagged as not recovered.
    """
    foreign = is_foreign(since, epoch, current_epoch, last_seq)
    after = 0 if foreign else since
    missing = None
    if after < last_seq:
        first_needed = after + 1
        if available_from is None or available_from > last_seq:
            missing = (first_needed, last_seq)
        elif available_from > first_needed:
            missing = (first_needed, available_from - 1)
    return ResumePlan(after_seq=after, recovered=not foreign and missing is None, missing=missing)


MAX_HOLES = 100  # dropped ranges remembered; older ones are forgotten (and logged when made)


def add_hole(holes: list[tuple[int, int]], first: int, last: int) -> list[tuple[int, int]]:
    """`holes` (ascending, disjoint, inclusive seq ranges) with first..last added, overlaps and
    neighbours merged, at most MAX_HOLES kept (the newest)."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted([*holes, (first, last)]):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged[-MAX_HOLES:]


def last_hole_end(holes: list[tuple[int, int]], first: int, last: int) -> int | None:
    """The highest seq within first..last that lies in a hole, or None when the range has none.

    A resume from the store can name one missing range: everything from its
    start up to the last hole is reported missing and only what follows is sent.
    """
    end = None
    for lo, hi in holes:
        if lo <= last and hi >= first:
            end = min(hi, last) if end is None else max(end, min(hi, last))
    return end

