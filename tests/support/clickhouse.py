"""A real ClickHouse server for tests: `.ci/clickhouse.sh` in a directory of its own, on free ports.

    server = ClickHouseServer(tmp_path / "ch").start()
    server.url          # clickhouse://default:@127.0.0.1:PORT/relay_test_<hex> (the relay creates it)
    server.fresh_url()  # the same server, a database name no other test uses
    server.client()     # a clickhouse_driver.Client for assertions
    server.stop(); server.start()   # an outage: same ports, same data directory
    server.restart()

`clickhouse_server` is a session-scoped pytest fixture holding one such
server; import it into a conftest (`from support.clickhouse import
clickhouse_server  # noqa: F401`). It never skips: when clickhouse-server is
not installed the tests using it fail, saying to run `.ci/clickhouse.sh install`.
Every server still running when the interpreter exits is stopped.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "clickhouse.sh"
INSTALL_HINT = "run `.ci/clickhouse.sh install` (as root, or with sudo) to install Debian's clickhouse-server"
START_TIMEOUT_S = 90  # the script itself gives up after 60 s and prints the log tail

_RUNNING: set[ClickHouseServer] = set()


def server_binary() -> str | None:
    """Path of clickhouse-server (Debian puts it in /usr/sbin, not always on PATH), or None."""
    found = shutil.which("clickhouse-server") or shutil.which("clickhouse-server", path="/usr/sbin:/usr/local/sbin")
    return found if found and shutil.which("clickhouse-client") else None


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_refuses(port: int) -> bool:
    """True when a TCP connection to 127.0.0.1:port is refused (nothing listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


class ClickHouseServer:
    """One clickhouse-server process: config, data and logs under `directory`; ports fixed at first start."""

    def __init__(self, directory: Path | str, port: int | None = None, http_port: int | None = None):
        self.directory = Path(directory).resolve()
        self.port = port
        self.http_port = http_port
        self.database = "relay_test_" + secrets.token_hex(4)

    def __repr__(self) -> str:
        return f"<ClickHouseServer 127.0.0.1:{self.port} in {self.directory}>"

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> ClickHouseServer:
        """Start (or find running) and return once it answers `SELECT 1`; the same ports every time."""
        if server_binary() is None:
            raise RuntimeError(f"clickhouse-server is not installed: {INSTALL_HINT}")
        pick_ports = self.port is None
        attempts = 3 if pick_ports else 1
        for attempt in range(1, attempts + 1):
            if pick_ports:
                self.port, self.http_port = free_port(), free_port()
            result = self._script("start", str(self.directory), str(self.port), str(self.http_port))
            if result.returncode == 0:
                _RUNNING.add(self)
                return self
            # another process may have taken a freshly picked port in between: pick again
            if attempt == attempts or "Address already in use" not in result.stderr + self.log_tail():
                raise RuntimeError(f"{self!r} did not start (attempt {attempt}):\n{result.stdout}{result.stderr}")
            self._script("stop", str(self.directory))
        return self

    def stop(self) -> None:
        """Stop it (SIGTERM, SIGKILL after 30 s); the data directory stays."""
        result = self._script("stop", str(self.directory))
        _RUNNING.discard(self)
        if result.returncode != 0:
            raise RuntimeError(f"stopping {self!r} failed:\n{result.stdout}{result.stderr}")

    def restart(self, down_s: float = 0.0) -> ClickHouseServer:
        """Stop, stay down for `down_s`, start again on the same ports with the same data."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        return self.start()

    def kill(self) -> None:
        """SIGKILL, no shutdown at all (a crash); start() brings it back with the same data."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        (self.directory / "pid").unlink(missing_ok=True)
        _RUNNING.discard(self)

    @property
    def pid(self) -> int | None:
        try:
            pid = int((self.directory / "pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- connecting -------------------------------------------------------------

    @property
    def url(self) -> str:
        """CLICKHOUSE_URL for a relay: user `default`, no password, this server's test database."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"clickhouse://default:@127.0.0.1:{self.port}/{database}"

    def fresh_url(self) -> str:
        """A URL naming a database no other test uses (not created: the relay creates it)."""
        return self.url_for("relay_test_" + secrets.token_hex(4))

    def client(self, database: str = "default", user: str = "default", **settings: Any) -> Any:
        """A clickhouse_driver.Client for assertions (the caller disconnects it, or lets it be collected)."""
        from clickhouse_driver import Client  # imported here so a missing driver fails only the tests using it

        return Client(host="127.0.0.1", port=self.port, user=user, password="", database=database,
                      settings=settings or None, connect_timeout=5, send_receive_timeout=30)

    # -- diagnostics ------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        chunks = []
        for name in ("stdout.log", "clickhouse-server.err.log"):
            path = self.directory / "log" / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"---- {path} ----\n" + "\n".join(text))
        return "\n".join(chunks)

    def _script(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                              timeout=START_TIMEOUT_S, check=False)


def _alive(pid: int) -> bool:
    """Runs, and is not a zombie (an orphan nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING):
        server._script("stop", str(server.directory))


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """One real ClickHouse server for the whole run; fails (never skips) when it cannot run."""
    if server_binary() is None:
        pytest.fail(f"clickhouse-server / clickhouse-client not found: {INSTALL_HINT}", pytrace=False)
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse"))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()
