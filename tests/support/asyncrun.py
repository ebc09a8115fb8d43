"""Run a coroutine to completion in a thread of its own, with its own event loop.

Some test tools (Playwright's sync API) leave an asyncio loop running in the
main thread for the rest of the session; asyncio.run() refuses to start there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any


def run_in_own_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001  (handed back to the caller below)
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="own-event-loop")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
