"""Deadline-based waiting: tests poll for a condition, they never sleep and hope."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.02,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call `probe` until it returns something truthy and return that; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" ({describe()})" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{detail}")
        time.sleep(interval_s)
