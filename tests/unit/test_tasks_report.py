"""A crashed loop is reported once: the supervisor's log line with its traceback, and not gevent's print too."""

import logging
import sys

import gevent

from webapp.tasks import Tasks


def test_a_crash_prints_its_traceback_once_on_stderr(capfd):
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger("webapp.tasks").addHandler(handler)
    crashes = []
    tasks = Tasks(crashes.append, backoff_min_ms=1000, backoff_max_ms=1000)
    try:
        def loop():
            raise ValueError("the one bug in this loop")

        tasks.spawn("writer", loop)
        with gevent.Timeout(5, AssertionError("the crash was not reported")):
            while not crashes:
                gevent.sleep(0.001)
        gevent.sleep(0.05)  # gevent's hub prints a raised greenlet's traceback on its next turn
    finally:
        assert tasks.shutdown(timeout_s=2)
        logging.getLogger("webapp.tasks").removeHandler(handler)
    err = capfd.readouterr().err
    assert err.count("Traceback (most recent call last)") == 1, err
    assert err.count("ValueError: the one bug in this loop") == 1, err
    assert "task writer crashed (1 so far)" in err
