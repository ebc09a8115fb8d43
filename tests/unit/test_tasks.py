"""Every background loop is supervised: a crash is logged, counted, shown, and restarted — or the worker exits."""

import gevent
import gevent.event
import pytest

from webapp.tasks import EXIT, Tasks


def wait_until(condition, timeout_s=5.0):
    with gevent.Timeout(timeout_s, AssertionError("condition not met in time")):
        while not condition():
            gevent.sleep(0.001)


def make_tasks(**kw):
    crashes, exits = [], []
    tasks = Tasks(crashes.append, lambda name, exc: exits.append((name, repr(exc))),
                  backoff_min_ms=1, backoff_max_ms=2, **kw)
    return tasks, crashes, exits


def test_a_crashed_loop_is_counted_shown_and_started_again():
    tasks, crashes, exits = make_tasks()
    runs = []

    def loop():
        runs.append(1)
        if len(runs) < 3:
            raise ValueError(f"bug number {len(runs)}")
        gevent.sleep(10)

    tasks.spawn("writer", loop)
    wait_until(lambda: len(runs) == 3 and tasks.get("writer").state == "running")
    status = tasks.status()["writer"]
    assert (status["state"], status["crashes"], status["policy"]) == ("running", 2, "restart")
    assert status["last_error"] == "ValueError: bug number 2"
    assert crashes == ["writer", "writer"] and exits == []
    assert tasks.shutdown(timeout_s=2)


def test_a_loop_that_cannot_be_restarted_exits_the_worker_instead():
    tasks, crashes, exits = make_tasks()

    def boot():
        raise RuntimeError("half-recovered")

    tasks.spawn("boot", boot, policy=EXIT)
    wait_until(lambda: exits)
    gevent.sleep(0.01)
    assert exits == [("boot", "RuntimeError('half-recovered')")]
    assert crashes == ["boot"] and tasks.get("boot").state == "crashed"
    assert tasks.restarting == ["boot"]


def test_a_loop_that_returns_is_finished_not_restarted():
    tasks, crashes, _ = make_tasks()
    tasks.spawn("once", lambda: None)
    wait_until(lambda: tasks.get("once").state == "finished")
    assert crashes == []


def test_the_fault_hook_raises_inside_a_running_loop_and_the_loop_comes_back():
    tasks, crashes, _ = make_tasks(fault_hooks=True)
    started = []

    def loop():
        started.append(1)
        gevent.sleep(10)

    tasks.spawn("hub", loop)
    wait_until(lambda: started)
    assert tasks.inject("hub")
    wait_until(lambda: len(started) == 2)
    assert crashes == ["hub"] and tasks.status()["hub"]["last_error"].startswith("FaultInjected")
    assert not tasks.inject("nobody")
    tasks.shutdown(timeout_s=2)


def test_the_fault_hook_is_refused_unless_explicitly_enabled():
    tasks, _, _ = make_tasks()
    tasks.spawn("hub", gevent.sleep, 10)
    with pytest.raises(PermissionError):
        tasks.inject("hub")
    tasks.shutdown(timeout_s=2)


def test_shutdown_stops_and_waits_for_every_loop_and_can_be_called_twice():
    tasks, crashes, _ = make_tasks()
    ended = []

    def loop(name):
        try:
            gevent.sleep(10)
        finally:
            ended.append(name)

    for name in ("a", "b", "c"):
        tasks.spawn(name, loop, name)
    gevent.sleep(0)
    assert tasks.shutdown(timeout_s=2)
    assert sorted(ended) == ["a", "b", "c"] and crashes == []
    assert tasks.shutdown(timeout_s=2)
    assert all(status["state"] == "stopped" for status in tasks.status().values())


def test_a_stopped_loop_is_never_restarted_even_when_it_was_waiting_to_be():
    tasks, _, _ = make_tasks()
    tasks.backoff_min_ms = tasks.backoff_max_ms = 50
    runs = []

    def loop():
        runs.append(1)
        raise ValueError("bug")

    task = tasks.spawn("x", loop)
    wait_until(lambda: task.state == "restarting")
    task.kill()
    gevent.sleep(0.1)
    assert runs == [1] and task.state == "stopped"

