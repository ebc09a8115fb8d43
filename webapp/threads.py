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
