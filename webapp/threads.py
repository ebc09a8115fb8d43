"""Blocking calls (file I/O, chDB) run in a thread so the gevent hub keeps serving."""

import gevent


def _capture(fn, args):
    try:
        return None, fn(*args)
    except Exception as exc:  # noqa: BLE001  (re-raised in the calling greenlet, not swallowed)
        return exc, None


def call_in_thread(fn, *args, pool=None):
    """Run fn(*args) in `pool` (default: gevent's threadpool) and return or raise its outcome here.

    Exceptions travel back as values: gevent would otherwise print every
    exception raised in a pool thread as if it were unhandled.
    """
    failure, value = (pool or gevent.get_hub().threadpool).apply(_capture, (fn, args))
    if failure is not None:
        raise failure
    return value


def call_in_turn(turn, wait_s: float, fn, *args, pool=None, waited: Exception | None = None):
    """fn(*args) in `pool`, once `turn` (a gevent semaphore) is free, holding it until fn has returned in its
    thread, even if the caller stops waiting before then: whoever comes next starts only after it. When
    `turn` is not free within `wait_s`, raise `waited` without running fn."""
    if not turn.acquire(timeout=wait_s):
        raise waited or TimeoutError(f"waited {wait_s:g} s for its turn")
    try:
        pending = (pool or gevent.get_hub().threadpool).spawn(_capture, fn, args)
    except BaseException:
        turn.release()
        raise
    pending.rawlink(lambda _result: turn.release())
    failure, value = pending.get()
    if failure is not None:
        raise failure
    return value
