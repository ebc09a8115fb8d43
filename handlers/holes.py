"""Which seq ranges of the current epoch the store lacks for good (dead-lettered, dropped while the
spool was full), as a resume reports them: this worker's record merged with the cluster's."""

from handlers.resume import add_hole


def holes_to_report(current_epoch: str, local_epoch: str | None, local_holes: list[tuple[int, int]],
                    shared: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """`local_*`: DATA_DIR's record (its epoch and ranges); `shared`: Redis's ranges for `current_epoch`,
    None when there is no cluster or Redis did not answer (then the local ones alone)."""
    local = list(local_holes) if local_epoch == current_epoch else []
    if shared is None:
        return local
    merged = list(shared)
    for first, last in local:
        merged = add_hole(merged, first, last)
    return merged
