"""Processes the bench starts and watches: JSON-line children, /proc readings, ports, the three systems.

Everything listens on 127.0.0.1 and every process started here is stopped by its
own pid (or the process group it leads, which it was started as), never by name.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
LOADGEN = BENCH / "loadgen"
VENV_BIN = ROOT / ".venv" / "bin"
TICKS = os.sysconf("SC_CLK_TCK")

# Variables the relay reads: the caller's shell must not leak into a bench relay.
RELAY_VARIABLES = {
    "PORT", "WEB_CONCURRENCY", "UPSTREAM_URL", "UPSTREAM_INIT", "UPSTREAM_HEADERS", "TOPIC_FIELDS",
    "CACHE_MAX_ITEMS", "CACHE_TTL_SECONDS", "CLICKHOUSE_URL", "DATA_DIR", "REDIS_URL", "API_TOKENS",
    "ADMIN_TOKEN", "ENRICH_SQL", "WS_QUEUE_MAX_EVENTS", "WS_QUEUE_MAX_BYTES", "HUB_FLUSH_INTERVAL_MS",
    "GUNICORN_CMD_ARGS", "ACCESS_LOG", "LOG_LEVEL", "WORKER_CONNECTIONS", "STORE_BATCH_ROWS", "STORE_BATCH_MS",
    "REDIS_PREFIX", "LEADER_LEASE_MS", "STREAM_MAXLEN", "STARTUP_GRACE_S", "MAX_ACCEPT", "HEALTH_BIND",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- /proc ----------------------------------------------------------------------------


def cpu_seconds(pid: int, path: str | None = None) -> float:
    """utime + stime of a process, in seconds (0 when it is gone)."""
    try:
        stat = Path(path or f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_cpu_seconds(tid: int) -> float:
    """utime + stime of one thread of this process, in seconds (0 when it is gone)."""
    return cpu_seconds(tid, f"/proc/self/task/{tid}/stat")


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine_jiffies() -> list[int]:
    """The machine's time by kind (user, nice, system, idle, iowait, irq, softirq, steal, ...), /proc/stat."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def machine_busy() -> tuple[float, float]:
    """(busy jiffies, total jiffies) of the whole machine, from /proc/stat."""
    parts = machine_jiffies()
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


class CpuMeter:
    """CPU share (% of one core) of named processes over a window, plus the machine's."""

    def __init__(self, pids: dict[str, list[int]]):
        self.pids = pids
        self.start()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()}
        self.m0 = machine_busy()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        out = {name: round(100 * (sum(cpu_seconds(p) for p in pids) - self.c0[name]) / wall, 1)
               for name, pids in self.pids.items()}
        busy, total = machine_busy()
        out["machine_busy_pct_of_all_cores"] = round(100 * (busy - self.m0[0]) / max(1, total - self.m0[1]), 1)
        return out


# -- children that talk JSON lines ------------------------------------------------------


class LineProc:
    """A child process controlled with JSON lines on stdin and answering on stdout."""

    def __init__(self, argv: list[str], *, cwd: Path | None = None, env: dict | None = None, log: Path | None = None):
        self.log = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, start_new_session=True, text=True, bufsize=1)
        self.pid = self.proc.pid
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                try:
                    self.lines.put(json.loads(line))
                except ValueError:
                    self.lines.put({"text": line})
        self.lines.put({"eof": True})

    def send(self, **msg: Any) -> None:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def expect(self, key: str, timeout_s: float) -> dict:
        """The next line carrying `key` (others are skipped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"pid {self.pid}: no {key!r} within {timeout_s} s")
            try:
                msg = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if msg.get("eof"):
                raise RuntimeError(f"pid {self.pid} exited (code {self.proc.poll()}) while waiting for {key!r}")
            if key in msg:
                return msg

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def node() -> str:
    return shutil.which("node") or "node"


class Upstream(LineProc):
    """bench/loadgen/upstream.js: serve mode (relays connect to it) or publish mode (nchan)."""

    def __init__(self, mode: str, log: Path):
        port = free_port() if mode == "serve" else 0
        argv = [node(), str(LOADGEN / "upstream.js"), mode] + ([str(port)] if mode == "serve" else [])
        super().__init__(argv, cwd=LOADGEN, log=log)
        self.port = self.expect("ready", 10).get("port")
        self.url = f"ws://127.0.0.1:{self.port}/" if mode == "serve" else None

    def run(self, base: int, rate: float, duration_s: float, per_frame: int = 1, topics: int = 20) -> None:
        self.send(cmd="run", base=base, rate=rate, duration_s=duration_s, per_frame=per_frame, topics=topics)

    def connect(self, url: str) -> None:
        self.send(cmd="connect", url=url)
        self.expect("connected", 10)


class Subscribers(LineProc):
    """bench/loadgen/subscribers.js: N clients, every frame parsed, every event checked."""

    def __init__(self, url: str, clients: int, *, deflate: bool, slow: int = 0, log: Path,
                 connect_timeout_s: float = 120, first_frame: bool = False, memo: bool = True, **extra: Any):
        cfg = {"url": url, "clients": clients, "deflate": deflate, "slow": slow, "first_frame": first_frame,
               "memo": memo, **extra}
        super().__init__([node(), "--max-old-space-size=4096", str(LOADGEN / "subscribers.js"), json.dumps(cfg)],
                         cwd=LOADGEN, log=log)
        self.opened = self.expect("connected", connect_timeout_s)

    def arm(self, base: int, count: int) -> None:
        self.send(cmd="arm", base=base, count=count)
        self.expect("armed", 30)

    def quiet(self, quiet_ms: int, max_ms: int) -> dict:
        self.send(cmd="quiet", quiet_ms=quiet_ms, max_ms=max_ms)
        return self.expect("quiet", max_ms / 1000 + 30)

    def report(self) -> dict:
        self.send(cmd="report")
        return self.expect("report", 60)["report"]


def merged_percentiles(hists: list[list], maxima: list, ps: tuple) -> dict:
    """subscribers.js's percentiles over several processes' histograms ([bucket, count] pairs, 0.1 ms buckets)."""
    counts: dict[int, int] = {}
    for hist in hists:
        for bucket, n in hist:
            counts[bucket] = counts.get(bucket, 0) + n
    total = sum(counts.values())
    out: dict = {f"p{p:g}": None for p in ps}
    if total:
        targets = [(f"p{p:g}", math.ceil(p / 100 * total)) for p in ps]
        acc = 0
        for bucket in sorted(counts):
            acc += counts[bucket]
            while targets and acc >= targets[0][1]:
                out[targets.pop(0)[0]] = (bucket + 1) / 10
    out["max"] = max((m for m in maxima if m is not None), default=None)
    return out


class SubscriberSet:
    """`clients` subscribers spread over `procs` subscribers.js processes, one report for all of them.

    One Node.js process holding 1,000 clients at 200 events/s is itself ~85 % busy on this machine,
    so its own queue is part of what it measures, and whatever else takes a core (an idle crowd's
    load generators) lengthens that queue; several processes each have room."""

    def __init__(self, url: str, clients: int, procs: int, *, log: Path, **options: Any):
        procs = max(1, min(procs, clients))
        shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        self.parts: list[Subscribers] = []
        try:
            for i, n in enumerate(shares):
                name = log if procs == 1 else log.with_name(f"{log.stem}-{i + 1}{log.suffix}")
                self.parts.append(Subscribers(url, n, log=name, hist=True, **options))
        except BaseException:
            self.stop()
            raise
        self.pids = [p.pid for p in self.parts]

    def arm(self, base: int, count: int) -> None:
        for p in self.parts:
            p.arm(base, count)

    def quiet(self, quiet_ms: int, max_ms: int) -> list[dict]:
        for p in self.parts:
            p.send(cmd="quiet", quiet_ms=quiet_ms, max_ms=max_ms)
        return [p.expect("quiet", max_ms / 1000 + 30) for p in self.parts]

    def report(self) -> dict:
        reps = [p.report() for p in self.parts]
        out = {k: sum(r.get(k) or 0 for r in reps) for k in
               ("clients", "delivered", "lost", "duplicated", "out_of_order", "frames", "foreign", "parse_errors",
                "other_frames", "closed", "clients_with_loss")}
        out["max_lost_per_client"] = max(r.get("max_lost_per_client") or 0 for r in reps)
        out["latency_ms"] = merged_percentiles([r["latency_hist"] for r in reps],
                                               [r["latency_ms"].get("max") for r in reps], (50, 90, 99, 99.9))
        out["relay_receive_ms"] = merged_percentiles([r["relay_receive_hist"] for r in reps],
                                                     [r["relay_receive_ms"].get("max") for r in reps], (50, 99, 99.9))
        return out

    def stop(self) -> None:
        for p in self.parts:
            p.stop()


class SlowReader:
    """A /ws client that reads `bytes_per_s` (a slow mobile link), with a 4 KiB receive buffer.

    A thread takes a slice of the socket every 100 ms and parses the frames it completes:
    it files `slow` messages, and for each event its age on arrival (now - the upstream's
    CLOCK_MONOTONIC stamp `t`, the clock time.monotonic() reads), i.e. how old the value
    this client is shown is.
    """

    def __init__(self, url: str, bytes_per_s: int = 4096):
        self.stalled = StalledClient(url)
        self.sock = self.stalled.sock
        self.per_tick = max(1, bytes_per_s // 10)
        self.buffer = bytearray()
        self.modes: list[str] = []
        self.events = self.frames = 0
        self.max_age_ms = 0.0
        self.ages: list[float] = []
        self.closed_code: int | None = None
        self.eof = False
        self.cpu_s: float | None = None  # this reader thread's own CPU (is the load generator the interference?)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._read()
        finally:
            self.cpu_s = thread_cpu_seconds(threading.get_native_id())

    def _read(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop.is_set() and not self.eof:
            try:
                chunk = self.sock.recv(self.per_tick)
            except TimeoutError:
                continue
            except OSError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            self.buffer += chunk
            self._parse()
            self._stop.wait(0.1)

    def _parse(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            length, at = buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, at = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, at = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < at + length:
                return
            opcode, payload = buf[0] & 0x0F, bytes(buf[at:at + length])
            del buf[:at + length]
            if opcode == 0x8:
                self.closed_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.eof = True
                return
            if opcode != 0x1:
                continue
            self.frames += 1
            msg = json.loads(payload)
            if msg.get("type") == "slow":
                self.modes.append(msg["mode"])
            now_ms = time.monotonic() * 1000
            for env in msg.get("events", ()):
                t = env.get("data", {}).get("t") if isinstance(env.get("data"), dict) else None
                if t is not None:
                    self.events += 1
                    age = now_ms - t
                    self.ages.append(age)
                    self.max_age_ms = max(self.max_age_ms, age)

    def outcome(self) -> dict:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        ages = sorted(self.ages)
        return {"frames": self.frames, "events": self.events, "modes": self.modes,
                "closed_code": self.closed_code, "connected": not self.eof,
                "age_ms_p50": round(ages[len(ages) // 2], 1) if ages else None,
                "age_ms_max": round(self.max_age_ms, 1), "cpu_s": self.cpu_s}


class StalledClient:
    """A WebSocket client that completes the handshake and never reads again.

    Its receive buffer is set to 4 KiB before connecting (Node cannot do that), so the
    kernel holds little and the server feels the backpressure within seconds instead of
    after the ~10 MB that loopback buffers otherwise absorb.
    """

    def __init__(self, url: str):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((parts.hostname, parts.port))
        path = parts.path + ("?" + parts.query if parts.query else "")
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)  # byte by byte: nothing after the headers is taken
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        self.opened_at = time.monotonic()

    def outcome(self, timeout_s: float = 5.0) -> dict:
        """Read what is left: was the connection closed by the server, and with which close code?"""
        self.sock.settimeout(timeout_s)
        data = bytearray()
        closed = False
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    closed = True
                    break
                data += chunk
        except OSError:
            pass
        finally:
            self.sock.close()
        return {"closed_by_server": closed, "close_code": close_code(bytes(data)), "bytes_after_stall": len(data)}


def close_code(data: bytes) -> int | None:
    """The code of the close frame in a server's byte stream (unmasked frames from its start), if any."""
    pos = 0
    while pos + 2 <= len(data):
        opcode, n, head = data[pos] & 0x0F, data[pos + 1] & 0x7F, pos + 2
        if n == 126:
            n, head = int.from_bytes(data[head:head + 2], "big"), head + 2
        elif n == 127:
            n, head = int.from_bytes(data[head:head + 8], "big"), head + 8
        if opcode == 0x8 and n >= 2 and head + 2 <= len(data):
            return int.from_bytes(data[head:head + 2], "big")
        pos = head + n
    return None


def tcp_sockets(pid: int) -> int:
    """Sockets a process holds open (its file descriptors that are sockets)."""
    count = 0
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd).startswith("socket:"):
                    count += 1
            except OSError:
                pass
    except OSError:
        pass
    return count


def redis_pid(url: str) -> int:
    """The pid of the Redis server behind `url` (INFO server), for its CPU share."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


# -- the systems under test -------------------------------------------------------------


def http_json(url: str, body: Any = None, timeout_s: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", "Connection": "close"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    with opener.open(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def wait_for(check, timeout_s: float, what: str, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not within {timeout_s} s ({last})")


class Relayhouse:
    """The relay as production runs it: `gunicorn -c gunicorn.conf.py wsgi:app`, one gevent worker
    (or, with REDIS_URL and WEB_CONCURRENCY in `env`, several behind one upstream connection)."""

    name = "relayhouse"
    root = ROOT  # the checkout to run (bench/ab.py points it at another revision)

    def __init__(self, workdir: Path, upstream_url: str, env: dict | None = None, config: str = "gunicorn.conf.py"):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        environ = {k: v for k, v in os.environ.items() if k not in RELAY_VARIABLES}
        environ.update({"UPSTREAM_URL": upstream_url, "CLICKHOUSE_URL": "none", "DATA_DIR": str(workdir / "data"),
                        "PORT": str(self.port), "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
        environ.update(env or {})
        environ = {k: v for k, v in environ.items() if v is not None}
        self.env = environ
        self.log = open(workdir / "gunicorn.log", "ab")
        # -b keeps it on loopback (gunicorn.conf.py binds 0.0.0.0 for platforms); a -b replaces every
        # bind of the config, so HEALTH_BIND's listener is named again
        binds = ["-b", f"127.0.0.1:{self.port}"] + (["-b", environ["HEALTH_BIND"]] if environ.get("HEALTH_BIND") else [])
        self.proc = subprocess.Popen([str(VENV_BIN / "gunicorn"), "-c", config, *binds, "wsgi:app"],
                                     cwd=self.root, env=environ, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"
        # where /health and /metrics are timed: the health listener when there is one
        self.health_base = f"http://{environ['HEALTH_BIND']}" if environ.get("HEALTH_BIND") else self.base
        self.side_pids: dict[str, list[int]] = {}  # other processes whose CPU the run should report
        self.workers = int(environ.get("WEB_CONCURRENCY") or 1) if environ.get("REDIS_URL") else 1
        try:
            if not environ.get("REDIS_URL"):
                wait_for(lambda: http_json(self.base + "/health")["upstream"]["connected"], 60,
                         "relay connected upstream")
                self.worker = wait_for(lambda: children(self.proc.pid)[0] if children(self.proc.pid) else None, 10,
                                       "worker")
                self.pids = [self.worker]
            else:
                self._wait_for_cluster()
        except BaseException:
            # the caller gets no handle to stop it: a relay that never became ready must not outlive
            # its run (two such, idle, ran beside every later bench of the twelfth session until found)
            self.stop()
            raise

    def _wait_for_cluster(self) -> None:
        """Every worker up and reading the stream, one of them leading with the upstream connected.

        Each /health is a new connection (Connection: close) that whichever worker accepts first
        answers, so asking often enough hears from all of them."""
        self.pids = wait_for(lambda: sorted(children(self.proc.pid)) if len(children(self.proc.pid)) == self.workers
                             else None, 60, f"{self.workers} workers")
        self.worker = self.pids[0]
        heard: dict[str, dict] = {}

        # LEADER_ACCEPTS=false: the lease holder takes no connection once it leads, so it is heard
        # of through the others (the lease's holder and the stream's epoch they read)
        leader_apart = self.env.get("LEADER_ACCEPTS", "").lower() in ("0", "false", "no", "off")

        def all_ready() -> bool:
            h = http_json(self.base + "/health")
            heard[h["bus"]["worker"]] = h
            if leader_apart:
                holder = h["bus"]["lease_holder"]
                ready = [x for name, x in heard.items() if name != holder and x["role"] == "follower"
                         and x["ready"] and x["bus"]["ok"] and x["epoch"]]
                return holder is not None and len(ready) == self.workers - 1
            leaders = [x for x in heard.values() if x["role"] == "leader" and x["upstream"]["connected"]]
            return (len(heard) == self.workers and len(leaders) == 1
                    and all(x["ready"] and x["bus"]["ok"] for x in heard.values()))
        wait_for(all_ready, 90, f"{self.workers} workers ready, one leading", interval_s=0.02)
        self.side_pids["redis"] = [redis_pid(self.env["REDIS_URL"])]

    def connections_per_worker(self) -> list[int]:
        """Established TCP connections held by each worker (clients, plus Redis and the upstream)."""
        return [tcp_sockets(pid) for pid in self.pids]

    def sub_url(self, run_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?snapshot=0"

    def health(self) -> dict:
        return http_json(self.base + "/health")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


NGINX_CONF = """\
load_module {module};
worker_processes 1;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{ worker_connections 19000; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    nchan_shared_memory_size 256m;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /pub {{
            nchan_publisher websocket http;
            nchan_channel_id $arg_ch;
            nchan_message_buffer_length 1000;
            nchan_message_timeout 60s;
        }}
        location = /sub {{
            nchan_subscriber websocket;
            nchan_channel_id $arg_ch;
        }}
    }}
}}
"""


class Nchan:
    """nginx + nchan on loopback with its own config, one worker process; a channel per run."""

    name = "nchan"

    def __init__(self, workdir: Path):
        self.workdir = workdir
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        module = "/usr/lib/nginx/modules/ngx_nchan_module.so"
        (workdir / "nginx.conf").write_text(NGINX_CONF.format(module=module, dir=workdir, port=self.port))
        self.log = open(workdir / "nginx.stderr", "ab")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-p", str(workdir), "-e", str(workdir / "error.log"),
                                      "-c", str(workdir / "nginx.conf")],
                                     stdout=self.log, stderr=self.log, start_new_session=True)

        def up():
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        wait_for(up, 10, "nginx listening")
        self.worker = wait_for(lambda: children(self.proc.pid)[0] if children(self.proc.pid) else None, 10, "worker")
        self.pids = [self.worker]

    def sub_url(self, run_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/sub?ch={run_id}"

    def pub_url(self, run_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/pub?ch={run_id}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then the master exits
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        self.log.close()


class Naive:
    """bench/naive/relay.py: per-client json.dumps and a send loop (asyncio `websockets`)."""

    name = "naive"

    def __init__(self, workdir: Path, upstream_url: str):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = open(workdir / "naive.log", "ab")
        self.proc = subprocess.Popen([str(VENV_BIN / "python"), str(BENCH / "naive" / "relay.py"),
                                      "--port", str(self.port), "--upstream", upstream_url],
                                     stdout=self.log, stderr=self.log, start_new_session=True)

        def up():
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        wait_for(up, 20, "naive relay listening")
        self.pids = [self.proc.pid]

    def sub_url(self, run_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
