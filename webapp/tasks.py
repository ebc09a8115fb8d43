"""Supervised greenlets: every long-lived loop of a worker is started here, by name, with one failure policy.

A loop that dies of an unexpected exception is logged with its traceback,
counted (`relayhouse_task_crashes_total{task=...}`), shown in /health
(`tasks`), and then either started again after a backoff (RESTART: the loop's
state lives in its object, so a fresh run carries on where the old one
stopped) or the worker exits so that gunicorn starts a fresh one (EXIT: used
where a half-done run cannot be resumed safely, such as the start-up
recovery). Nothing dies silently: a worker never answers /health while one of
its loops is gone for good.

The shape is gevent's `Group` plus `link_exception`, with the shutdown of
centrifuge's `Node`: `shutdown()` is idempotent and waits for every task.
A loop's exception is caught inside its greenlet (`_guarded`) and handed to
the supervisor as the run's value: a greenlet that raised would also get
gevent's hub to print the same traceback on stderr, on top of our log line.

Test-only: with `RELAYHOUSE_FAULT_HOOKS` set, `inject(name)` raises
`FaultInjected` inside a running task at the point where it waits, exactly as
a bug in that loop would surface (the fault suite reaches it through
`POST /debug/fault`, a route that exists only then).
"""

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import gevent
import gevent.pool

from handlers.backoff import reconnect_delay_ms

log = logging.getLogger(__name__)

RESTART, EXIT = "restart", "exit"
HEALTHY_AFTER_S = 30.0  # a run that lasted this long resets the restart backoff


class FaultInjected(BaseException):  # noqa: N818  (named for what happened, like GreenletExit)
    """Raised inside a task by the test-only fault hook.

    A BaseException, like GreenletExit: no `except Exception` inside a loop (the
    writer's poison-batch handling, say) can absorb it, so the test measures the
    supervisor and the loop's restart, not the loop's own error handling."""


class _Crash:
    """What a loop's run ends with when it raised: the exception, for the supervisor to report once."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


def _guarded(task: "Task") -> "_Crash | None":
    try:
        task.run(*task.args)
    except (Exception, FaultInjected) as exc:  # noqa: BLE001  (the supervisor logs it, with its traceback)
        return _Crash(exc)  # GreenletExit (a kill) is neither: it passes through
    return None


@dataclass
class Task:
    """One named loop and its record: how often it crashed, and why last."""

    name: str
    run: Callable[..., None]
    args: tuple
    policy: str
    greenlet: gevent.Greenlet | None = None
    started_at: float = 0.0
    crashes: int = 0
    restarts_in_a_row: int = 0
    last_error: str | None = None
    last_crash_at: float | None = None
    state: str = "running"  # running | restarting | finished | stopped | crashed
    _timer: gevent.Greenlet | None = field(default=None, repr=False)

    def kill(self, block: bool = False, timeout: float | None = None) -> None:
        """Stop it for good (no restart)."""
        self.state = "stopped"
        if self._timer is not None:
            self._timer.kill(block=False)
            self._timer = None
        if self.greenlet is not None:
            self.greenlet.kill(block=block, timeout=timeout)

    @property
    def dead(self) -> bool:
        return self.state in ("finished", "stopped", "crashed")

    def status(self) -> dict:
        return {"state": self.state, "policy": self.policy, "crashes": self.crashes,
                "last_error": self.last_error, "last_crash_at": self.last_crash_at}


class Tasks:
    """Starts, names, supervises and stops the worker's long-lived greenlets."""

    def __init__(self, on_crash: Callable[[str], None] = lambda name: None,
                 exit_worker: Callable[[str, BaseException], None] | None = None, *,
                 backoff_min_ms: int = 100, backoff_max_ms: int = 5000, fault_hooks: bool = False):
        self.group = gevent.pool.Group()
        self.tasks: dict[str, Task] = {}
        self.on_crash = on_crash  # counts the crash (the metric)
        self.exit_worker = exit_worker or (lambda name, exc: None)
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.fault_hooks = fault_hooks
        self.closing = False

    def spawn(self, name: str, run: Callable[..., None], *args, policy: str = RESTART) -> Task:
        """Start `run(*args)` as task `name` (a name in use is replaced: its old task is stopped)."""
        old = self.tasks.get(name)
        if old is not None and not old.dead:
            old.kill()
        task = Task(name, run, args, policy)
        self.tasks[name] = task
        if self.closing:
            task.state = "stopped"
            return task
        self._start(task)
        return task

    def _start(self, task: Task) -> None:
        task._timer = None
        if self.closing or task.state == "stopped":
            return
        task.state = "running"
        task.started_at = time.monotonic()
        greenlet = gevent.Greenlet(_guarded, task)
        greenlet.name = task.name
        greenlet.link_value(lambda g: self._finished(task, g))
        # what _guarded lets through (SystemExit, KeyboardInterrupt) is still a crash of the task
        greenlet.link_exception(lambda g: self._crashed(task, g, g.exception))
        task.greenlet = greenlet
        self.group.start(greenlet)

    def _finished(self, task: Task, greenlet: gevent.Greenlet) -> None:
        if isinstance(greenlet.value, _Crash):
            self._crashed(task, greenlet, greenlet.value.exc)
        elif task.greenlet is greenlet and task.state == "running":
            task.state = "finished"

    def _crashed(self, task: Task, greenlet: gevent.Greenlet, exc: BaseException) -> None:
        if task.greenlet is not greenlet or task.state == "stopped":
            return
        task.crashes += 1
        task.last_crash_at = time.time()
        task.last_error = f"{type(exc).__name__}: {exc}"
        lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.error("task %s crashed (%d so far): %s", task.name, task.crashes, lines.rstrip())
        self.on_crash(task.name)
        if self.closing:
            task.state = "crashed"
            return
        if task.policy == EXIT:
            task.state = "crashed"
            log.critical("task %s cannot be restarted safely: this worker exits and gunicorn starts a fresh one",
                         task.name)
            self.exit_worker(task.name, exc)
            return
        if time.monotonic() - task.started_at >= HEALTHY_AFTER_S:
            task.restarts_in_a_row = 0
        delay_ms = reconnect_delay_ms(task.restarts_in_a_row, self.backoff_min_ms, self.backoff_max_ms, 0.5)
        task.restarts_in_a_row += 1
        task.state = "restarting"
        log.warning("task %s restarts in %.2f s", task.name, delay_ms / 1000)
        task._timer = gevent.spawn_later(delay_ms / 1000, self._start, task)

    # -- views and control ------------------------------------------------------------

    def get(self, name: str) -> Task | None:
        return self.tasks.get(name)

    def status(self) -> dict[str, dict]:
        return {name: task.status() for name, task in sorted(self.tasks.items())}

    @property
    def restarting(self) -> list[str]:
        """Tasks that are down right now, waiting for their restart (or for the worker to exit)."""
        return [t.name for t in self.tasks.values() if t.state in ("restarting", "crashed")]

    def inject(self, name: str) -> bool:
        """Test-only: raise FaultInjected inside running task `name`. False when no such task runs."""
        if not self.fault_hooks:
            raise PermissionError("fault hooks are off (RELAYHOUSE_FAULT_HOOKS)")
        task = self.tasks.get(name)
        if task is None or task.state != "running" or task.greenlet is None or task.greenlet.dead:
            return False
        log.warning("fault hook: raising FaultInjected in task %s", name)
        task.greenlet.kill(FaultInjected(f"fault hook fired in {name}"), block=False)
        return True

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Stop every task and wait for all of them; safe to call more than once. True when all ended."""
        self.closing = True
        for task in list(self.tasks.values()):
            if task.state != "crashed":
                task.kill(block=False)
        self.group.join(timeout=timeout_s)
        return not self.group.greenlets
