"""Runs the relay the way production does: `gunicorn -c gunicorn.conf.py wsgi:app` on a free port.

Each Relay owns one gunicorn process group (started in its own session), a
data directory and a log file holding gunicorn's stdout and stderr. The
conftest shows the log of every relay involved in a failing test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from support.procnet import stat_fields
from webapp.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"

# Every variable the relay (or gunicorn) reads: a developer's shell must not
# leak into a test's relay; each test states what it needs.
# every variable the relay reads (its Settings, plus gunicorn's and Flask's): the
# harness drops them from the inherited environment so only a test's own apply
RELAY_VARIABLES = frozenset(
    {name for name, _default, _doc in Settings.documentation()}
    | {"GUNICORN_CMD_ARGS", "FLASK_APP", "FLASK_DEBUG", "ACCESS_LOG", "WORKER_CONNECTIONS"}
)

# Every Relay ever made in this session, so failure reports can find their logs.
ALL_RELAYS: list[Relay] = []


class RelayError(AssertionError):
    """The relay did not start, or did not stop, as it must."""


def free_port() -> int:
    """A TCP port nothing listens on right now (on any interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def health_port() -> int:
    """A free loopback port below the ephemeral range, for HEALTH_BIND: the relay's own PORT is drawn
    by `free_port` (binding port 0, inside that range), so the two cannot be the same (drawn both from
    it, they once were, and the relay refused to start: "its port is PORT's")."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in range(low - 1, 1024, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _live_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that are still running (zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = stat_fields(int(entry.name))  # state, ppid, pgrp, ...
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the whole group is gone already


class Relay:
    """One relay under gunicorn, with its settings, data directory and log."""

    def __init__(self, workdir: Path, upstream_url: str, env: Mapping[str, str] | None = None,
                 config: str = "gunicorn.conf.py") -> None:
        self.workdir = workdir
        self.config = config  # gunicorn's -c: the project's, or a test's that wraps it
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = workdir / "gunicorn.log"
        self.log_path.touch()
        self.settings: dict[str, str] = {
            "UPSTREAM_URL": upstream_url,
            "CLICKHOUSE_URL": "none",
            "DATA_DIR": str(self.data_dir),
            **(env or {}),
        }
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.starts = 0
        self.http = requests.Session()
        self.http.trust_env = False  # no proxies between the tests and the relay
        # A fresh connection per request: an idle keep-alive socket must never
        # be what keeps gunicorn from shutting down.
        self.http.headers["Connection"] = "close"
        ALL_RELAYS.append(self)

    def __repr__(self) -> str:
        return f"<Relay {self.workdir.name} port={self.port}>"

    # -- life cycle ---------------------------------------------------------

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in RELAY_VARIABLES}
        env.update(self.settings)
        env["PORT"] = str(self.port)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, *, timeout_s: float = 20.0, wait_upstream: bool = True) -> Relay:
        """Start gunicorn and wait until /health answers 200 (and the upstream is connected)."""
        if self.proc is not None:
            raise RuntimeError(f"{self!r} is already running")
        self.port = free_port()
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== test harness: start #{self.starts} on port {self.port} =====\n".encode())
            self.proc = subprocess.Popen(
                [str(GUNICORN), "-c", self.config, "wsgi:app"],
                cwd=ROOT,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.returncode = None
        try:
            self.wait_ready(timeout_s, wait_upstream=wait_upstream)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float = 20.0, *, wait_upstream: bool = True) -> dict[str, Any]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RelayError(
                    f"gunicorn exited with code {code} before the relay was ready\n{self.log_tail()}"
                )
            try:
                response = self.http.get(self.url + "/health", timeout=2)
                last = f"{response.status_code} {response.text[:500]}"
                if response.status_code == 200:
                    body = response.json()
                    if not wait_upstream or body.get("upstream", {}).get("connected") is True:
                        return body
            except (requests.RequestException, ValueError) as exc:
                last = repr(exc)
            if time.monotonic() >= deadline:
                raise RelayError(
                    f"relay not ready within {timeout_s}s (last /health: {last})\n{self.log_tail()}"
                )
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        """Signal the gunicorn master (not the group), as a process manager would."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the gunicorn master to exit; return its exit code."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise RelayError(f"gunicorn still running {timeout_s}s later\n{self.log_tail()}") from None

    def stop(self, *, grace_s: float = 5.0) -> None:
        """Stop the whole process group (TERM, then KILL) and check that nothing survives."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        pgid = proc.pid  # start_new_session: the master leads its own group
        if proc.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass  # killed below
        _signal_group(pgid, signal.SIGKILL)
        self.returncode = proc.wait(10)
        deadline = time.monotonic() + 5
        while (survivors := _live_members(pgid)) and time.monotonic() < deadline:
            _signal_group(pgid, signal.SIGKILL)
            time.sleep(0.05)
        if survivors:
            raise RelayError(f"processes of {self!r} survived SIGKILL: {survivors}")

    def restart(self, **start_kwargs: Any) -> Relay:
        self.stop()
        return self.start(**start_kwargs)

    # -- logs ---------------------------------------------------------------

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_text(self, start: int = 0) -> str:
        with self.log_path.open("rb") as log:
            log.seek(start)
            return log.read().decode("utf-8", "replace")

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log_text()
        return f"--- gunicorn log tail ({self.log_path}) ---\n{text[-chars:]}"

    # -- talking to it ------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def target(path: str, **params: Any) -> str:
        """`path` with `params` (None values left out) as its query string."""
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return path + (f"?{query}" if query else "")

    def ws_url(self, path: str = "/ws", **params: Any) -> str:
        return f"ws://127.0.0.1:{self.port}" + self.target(path, **params)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("allow_redirects", False)
        return self.http.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def health(self) -> dict[str, Any]:
        response = self.get("/health")
        assert response.status_code == 200, f"/health answered {response.status_code}: {response.text[:500]}"
        return response.json()
