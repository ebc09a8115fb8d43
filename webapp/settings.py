"""Settings: one frozen object built once from an environment mapping, every problem reported together."""

import hmac
import json
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from handlers.listeners import parse_bind
from handlers.sql import SqlError, check_read_only_sql, placeholder_names
from handlers.subscriptions import is_upstream_form
from handlers.topics import PatternError, parse_patterns


class SettingsError(Exception):
    """One or more bad variables; `problems` names each one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"{value} is outside {lo}..{hi}")
        return value
    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"not a number: {text!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"{value} is outside {lo}..{hi}")
        return value
    return parse


def _ws_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"expected a ws:// or wss:// URL, got {text!r}")
    return text.strip()


def _json_list(text: str) -> tuple[Any, ...]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"malformed JSON ({exc})") from None
    if not isinstance(value, list):
        raise ValueError("expected a JSON array of messages")
    return tuple(value)


def _json_headers(text: str) -> tuple[tuple[str, str], ...]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"malformed JSON ({exc})") from None
    if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) for v in value.values()):
        raise ValueError("expected a JSON object of header names to string values")
    return tuple((str(k), str(v)) for k, v in value.items())


def _names(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise ValueError("expected at least one comma-separated name")
    return names


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _clickhouse_url(text: str) -> str:
    text = text.strip()
    if text == "none":
        return text
    parts = urlsplit(text)
    if parts.scheme not in ("clickhouse", "clickhouses") or not parts.hostname:
        raise ValueError(f"expected clickhouse://user:password@host:9000/database or 'none', got a {parts.scheme or 'scheme-less'} URL")
    return text


def _redis_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected a redis:// or rediss:// URL")
    return text.strip()


def _key_prefix(text: str) -> str:
    prefix = text.strip()
    if not prefix or any(c.isspace() for c in prefix) or len(prefix) > 100:
        raise ValueError("expected a short key prefix without spaces")
    return prefix


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


def _str(text: str) -> str:
    return text


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _origins(text: str) -> tuple[str, ...]:
    """CORS_ORIGINS: `*`, or comma-separated origins (scheme://host[:port], no path)."""
    origins = tuple(p.strip().rstrip("/") for p in text.split(",") if p.strip())
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
            raise ValueError(f"expected * or origins like https://app.example.com, got {origin!r}")
    return origins


def _subscribe_mode(text: str) -> str | None:
    mode = text.strip().lower()
    if mode not in ("polygon", "none"):
        raise ValueError(f"expected polygon (or none), got {text.strip()[:40]!r}")
    return None if mode == "none" else mode


def _upstream_patterns(text: str) -> tuple[str, ...]:
    patterns = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [p for p in patterns if not is_upstream_form(p)]
    if bad:
        raise ValueError(f"expected patterns like T.AAPL or Q.*, not {', '.join(repr(p[:40]) for p in bad[:5])}")
    return patterns


def _token_topics(text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """TOKEN_TOPICS: {"token": ["T.AAPL", "Q.*"], ...}; problems never quote a token."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"malformed JSON ({exc})") from None
    if not isinstance(value, dict) or not value:
        raise ValueError('expected a JSON object of token to a list of topic patterns: {"token": ["T.AAPL", "Q.*"]}')
    scopes = []
    for n, (token, patterns) in enumerate(value.items(), 1):
        if not token.strip():
            raise ValueError(f"entry {n}: an empty token")
        if not isinstance(patterns, list) or not patterns:
            raise ValueError(f"entry {n}: expected a non-empty list of topic patterns")
        try:
            scopes.append((token, parse_patterns(patterns)))
        except PatternError as exc:
            raise ValueError(f"entry {n}: {exc}") from None
    return tuple(scopes)


def _health_bind(text: str) -> str:
    host, port = parse_bind(text)
    return f"{host}:{port}"


def env(name: str, default: Any, parse: Callable[[str], Any], doc: str) -> Any:
    """Declare a setting read from environment variable `name`."""
    return field(default=default, metadata={"env": name, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Every tunable of the relay. Build with `Settings.from_env(mapping)`."""

    port: int = env("PORT", 8000, _int(1, 65535), "HTTP port")
    health_bind: str | None = env("HEALTH_BIND", None, _health_bind, "a second listener (host:port, e.g. 127.0.0.1:8001) answering only GET /health and /metrics, for probes that must not queue behind a connect storm; unset = none")
    health_loop_stall_ms: int = env("HEALTH_LOOP_STALL_MS", 5000, _int(100, 600_000), "on the health listener (answered by a small process of each worker, not its event loop), /health is a 503 once the worker's event loop has not run for this long: a stuck worker is not reported alive")
    health_nice: int = env("HEALTH_NICE", -10, _int(-20, 19), "the scheduling priority (nice) of the small process of each worker that answers HEALTH_BIND, so a probe runs before a saturated machine's other work; raising it needs CAP_SYS_NICE, without which it keeps the worker's (and says so in the log)")
    web_concurrency: int = env("WEB_CONCURRENCY", 1, _int(1, 64), "gunicorn workers; above 1 only with REDIS_URL")
    leader_accepts: bool = env("LEADER_ACCEPTS", True, _bool, "with several workers on one socket (WEB_CONCURRENCY > 1, REDIS_URL): false = the lease holder takes no new client connections and leaves them to the other workers, so the upstream read that every client's events pass through does not wait behind its own clients' writes (webapp/clientgate.py); clients it already holds stay")
    upstream_url: str | None = env("UPSTREAM_URL", None, _ws_url, "ws:// or wss:// upstream; unset = built-in demo feed")
    upstream_init: tuple = env("UPSTREAM_INIT", (), _json_list, "JSON array of messages sent after every (re)connect")
    upstream_headers: tuple = env("UPSTREAM_HEADERS", (), _json_headers, "JSON object of extra handshake headers")
    upstream_max_frame_bytes: int = env("UPSTREAM_MAX_FRAME_BYTES", 4 * 1024 * 1024, _int(1024, 1 << 30), "larger upstream frames are counted and skipped")
    upstream_ping_interval_s: float = env("UPSTREAM_PING_INTERVAL_S", 20.0, _float(0.1, 3600), "ping the upstream this often")
    upstream_ping_timeout_s: float = env("UPSTREAM_PING_TIMEOUT_S", 10.0, _float(0.1, 3600), "reconnect when nothing arrived for ping interval + this")
    upstream_connect_timeout_s: float = env("UPSTREAM_CONNECT_TIMEOUT_S", 10.0, _float(0.1, 600), "upstream handshake time-out")
    upstream_backoff_min_ms: int = env("UPSTREAM_BACKOFF_MIN_MS", 50, _int(1, 600_000), "first reconnect delay")
    upstream_backoff_max_ms: int = env("UPSTREAM_BACKOFF_MAX_MS", 1000, _int(1, 600_000), "reconnect delay cap (jittered)")
    upstream_healthy_after_s: float = env("UPSTREAM_HEALTHY_AFTER_S", 5.0, _float(0, 3600), "a connection up this long resets the backoff")
    upstream_subscribe: str | None = env("UPSTREAM_SUBSCRIBE", None, _subscribe_mode, "polygon: the relay subscribes the upstream to what its clients want; unset: UPSTREAM_INIT fixes it")
    upstream_topics: tuple = env("UPSTREAM_TOPICS", (), _upstream_patterns, "comma-separated patterns always subscribed upstream (with UPSTREAM_SUBSCRIBE)")
    upstream_unsubscribe_delay_ms: int = env("UPSTREAM_UNSUBSCRIBE_DELAY_MS", 5000, _int(0, 86_400_000), "a pattern stays subscribed upstream this long after its last client left")
    upstream_max_subscriptions: int = env("UPSTREAM_MAX_SUBSCRIPTIONS", 10_000, _int(1, 1_000_000), "most patterns subscribed upstream at once; clients past it get an error")
    token_topics: tuple = env("TOKEN_TOPICS", (), _token_topics, "JSON object: token -> patterns it may subscribe to; unlisted tokens may take any")
    topic_fields: tuple = env("TOPIC_FIELDS", ("ev", "sym"), _names, "fields joined with '.' to form the topic")
    cache_max_items: int = env("CACHE_MAX_ITEMS", 10_000, _int(1, 10_000_000), "cache size bound")
    cache_ttl_seconds: int = env("CACHE_TTL_SECONDS", 3600, _int(1, 31_536_000), "cache age bound")
    cache_max_bytes: int = env("CACHE_MAX_BYTES", 268_435_456, _int(1024, 1 << 40),
                               "cache bound in the events' JSON bytes (oldest evicted first; the newest always "
                               "stays): CACHE_MAX_ITEMS events of up to UPSTREAM_MAX_FRAME_BYTES each would be "
                               "40 GB")
    clickhouse_url: str | None = env("CLICKHOUSE_URL", None, _clickhouse_url, "ClickHouse server URL; unset = embedded chDB; none = no store")
    data_dir: str = env("DATA_DIR", "./data", _str, "embedded store and write spool")
    redis_url: str | None = env("REDIS_URL", None, _redis_url, "enables several workers / instances")
    redis_prefix: str = env("REDIS_PREFIX", "relayhouse", _key_prefix, "prefix of every Redis key this relay uses")
    leader_lease_ms: int = env("LEADER_LEASE_MS", 3000, _int(1500, 600_000),
                               "leader lease; a dead leader is replaced within about this long (at least 1500: "
                               "a leader inserts only while more than 1 s of its lease is left)")
    bus_outbox_max: int = env("BUS_OUTBOX_MAX", 50_000, _int(1, 10_000_000),
                              "leader: events waiting for Redis; past it the leader stops reading the upstream")
    stream_maxlen: int = env("STREAM_MAXLEN", 0, _int(0, 100_000_000), "events kept in the Redis stream (0 = CACHE_MAX_ITEMS)")
    api_tokens: tuple = env("API_TOKENS", (), _tokens, "comma-separated tokens for client routes; unset = open")
    admin_token: str | None = env("ADMIN_TOKEN", None, _str, "token for admin routes; unset = loopback only")
    ws_queue_max_events: int = env("WS_QUEUE_MAX_EVENTS", 10_000, _int(1, 10_000_000), "a client's outbound bound in events")
    ws_queue_max_bytes: int = env("WS_QUEUE_MAX_BYTES", 8 * 1024 * 1024, _int(1024, 1 << 31), "a client's outbound bound in bytes")
    ws_ping_interval_s: float = env("WS_PING_INTERVAL_S", 25.0, _float(0.1, 3600), "server pings to /ws clients")
    ws_max_message_bytes: int = env("WS_MAX_MESSAGE_BYTES", 65536, _int(125, 1 << 24), "larger client frames close with 1009")
    hub_flush_interval_ms: float = env("HUB_FLUSH_INTERVAL_MS", 0.0, _float(0, 1000), "least time between two flushes (0: none; load alone batches, see webapp/hub.py)")
    gc_freeze: bool = env("GC_FREEZE", True, _bool, "after boot, move what start-up loaded out of the garbage collector's reach (gc.freeze)")
    handshake_concurrency: int = env("HANDSHAKE_CONCURRENCY", 0, _int(0, 100_000), "opt-in (32 is the measured choice): handshakes a worker runs at once per listener; it drains the kernel's accept queue on every wake-up and keeps the other accepted connections waiting as plain sockets (bounded by WORKER_CONNECTIONS), so a connect storm is not dropped by the listen queue and the worker's loop keeps its timers (webapp/accept.py). 0 (the default) = no bound and gunicorn's accept pacing (then MAX_ACCEPT applies): in the 100,000-client crowd on 7 workers the per-worker queues timed clients out with 503 and the leader lease flapped (docs/benchmarks.md, \"Connect storms, sixth session\")")
    handshake_slot_max_s: float = env("HANDSHAKE_SLOT_MAX_S", 1.0, _float(0.1, 3600), "how long a handshake keeps its slot; past it (a client sending its request or body slowly) the slot starts the next waiting connection and the handshake goes on without one")
    accept_wait_timeout_s: float = env("ACCEPT_WAIT_TIMEOUT_S", 30.0, _float(0.1, 3600), "how long an accepted connection may wait for a handshake slot; past it the client gets a 503 (Retry-After: 1) and the connection is closed")
    max_accept: int = env("MAX_ACCEPT", 0, _int(0, 1_000_000), "with HANDSHAKE_CONCURRENCY=0 only: connections a worker takes from the kernel's accept queue per wake-up of its listener, each started at once with no bound (a worker busy with thousands of handshakes missed its leader-lease renewals; see webapp/accept.py); the pool (WORKER_CONNECTIONS) still caps what it holds. 0 = gunicorn's choice (gevent's 100 with one worker, 1 with several)")
    gc_gen0_threshold: int = env("GC_GEN0_THRESHOLD", 5000, _int(1, 10_000_000), "allocations between two young-generation garbage collections (the interpreter's default is 700)")
    slow_close_timeout_s: float = env("SLOW_CLOSE_TIMEOUT_S", 5.0, _float(0.1, 600), "how long a slow consumer gets to take its close frame")
    sse_keepalive_s: float = env("SSE_KEEPALIVE_S", 15.0, _float(0.1, 3600), "SSE keep-alive comment interval")
    snapshot_default: int = env("SNAPSHOT_DEFAULT", 50, _int(0, 10_000), "recent events sent first when a client gives no since")
    snapshot_max: int = env("SNAPSHOT_MAX", 10_000, _int(0, 10_000_000), "most events a snapshot= may ask for")
    query_timeout_s: float = env("QUERY_TIMEOUT_S", 10.0, _float(0.1, 3600), "/query time limit")
    query_max_rows: int = env("QUERY_MAX_ROWS", 10_000, _int(1, 10_000_000), "/query row limit")
    query_concurrency: int = env("QUERY_CONCURRENCY", 4, _int(1, 64), "/query statements run at once per worker; "
                                 "the others wait up to QUERY_TIMEOUT_S for a turn, then 503")
    query_max_bytes: int = env("QUERY_MAX_BYTES", 16 << 20, _int(1024, 1 << 31), "/query: largest result, in bytes of the engine's JSON output (chDB) or of its values (server); larger → 400")
    query_max_rows_to_read: int = env("QUERY_MAX_ROWS_TO_READ", 100_000_000, _int(1, 1 << 62), "/query: most rows a query may scan")
    query_max_memory_bytes: int = env("QUERY_MAX_MEMORY_BYTES", 2_000_000_000, _int(1 << 20, 1 << 62), "/query: memory limit per query")
    clickhouse_query_url: str | None = env("CLICKHOUSE_QUERY_URL", None, _clickhouse_url, "a read-only ClickHouse user for /query and enrichment (docs/clickhouse.md); unset = CLICKHOUSE_URL with readonly=1 per query")
    query_allow_unrestricted: bool = env("QUERY_ALLOW_UNRESTRICTED", False, _bool, "serve /query even when its connection can write or reach files/URLs (not recommended)")
    store_batch_rows: int = env("STORE_BATCH_ROWS", 5000, _int(1, 1_000_000), "store writes a batch at this many events")
    store_batch_ms: int = env("STORE_BATCH_MS", 500, _int(1, 600_000), "... or after this long")
    store_retry_max_ms: int = env("STORE_RETRY_MAX_MS", 5000, _int(10, 600_000), "cap of the retry backoff while the store is down")
    spool_max_bytes: int = env("SPOOL_MAX_BYTES", 1 << 30, _int(1024, 1 << 50), "bound of the write spool under DATA_DIR/spool")
    seq_reserve_block: int = env("SEQ_RESERVE_BLOCK", 10_000, _int(1, 1 << 40), "seqs reserved at a time in DATA_DIR/relay.sqlite3")
    history_max_limit: int = env("HISTORY_MAX_LIMIT", 10_000, _int(1, 10_000_000), "largest /history limit")
    resume_max_events: int = env("RESUME_MAX_EVENTS", 100_000, _int(1, 100_000_000), "most stored events a resume replays (older ones are reported missing)")
    resume_concurrency: int = env("RESUME_CONCURRENCY", 2, _int(1, 64), "resumes that read the store at once per worker (the others wait their turn)")
    snapshot_queue_max_bytes: int = env("SNAPSHOT_QUEUE_MAX_BYTES", 256 << 20, _int(1 << 20, 1 << 40), "snapshot bytes a worker holds queued for its clients at once; a resume with since waits while they are past it")
    snapshot_queue_wait_s: float = env("SNAPSHOT_QUEUE_WAIT_S", 30.0, _float(0, 3600), "how long a resume waits for SNAPSHOT_QUEUE_MAX_BYTES before it is refused (ws: closing busy, 1013; sse: 503)")
    resume_page_events: int = env("RESUME_PAGE_EVENTS", 10_000, _int(100, 1_000_000), "stored events a resume reads per query (the worker serves others between pages)")
    enrich_sql: str | None = env("ENRICH_SQL", None, _str, "parameterised SELECT run for an event's topic")
    enrich_ttl_ms: int = env("ENRICH_TTL_MS", 1000, _int(0, 86_400_000), "enrichment results are cached per topic this long")
    enrich_timeout_ms: int = env("ENRICH_TIMEOUT_MS", 50, _int(1, 60_000), "an event never waits longer than this for enrichment")
    startup_grace_s: float = env("STARTUP_GRACE_S", 10.0, _float(0, 3600), "/health is not degraded by a disconnected upstream before this")
    graceful_timeout_s: float = env("GRACEFUL_TIMEOUT_S", 10.0, _float(1, 3600), "gunicorn graceful time-out on SIGTERM")
    max_body_bytes: int = env("MAX_BODY_BYTES", 4 * 1024 * 1024, _int(1024, 1 << 30), "largest accepted request body")
    body_timeout_s: float = env("BODY_TIMEOUT_S", 30.0, _float(0.1, 3600), "a request body must arrive within this (408 after)")
    demo_rate: float = env("DEMO_RATE", 50.0, _float(0, 1_000_000), "demo feed events per second")
    demo_port: int = env("DEMO_PORT", 0, _int(0, 65535), "demo feed port on 127.0.0.1 (0 = any free port)")
    log_level: str = env("LOG_LEVEL", "INFO", _log_level, "logging level")
    cors_origins: tuple = env("CORS_ORIGINS", (), _origins, "origins whose pages may read HTTP answers (comma-separated, or *); unset = none")
    cors_allow_credentials: bool = env("CORS_ALLOW_CREDENTIALS", False, _bool, "send Access-Control-Allow-Credentials to listed origins (never with *)")
    cors_max_age_s: int = env("CORS_MAX_AGE_S", 600, _int(0, 86_400), "how long browsers may cache a CORS preflight answer")
    task_backoff_max_ms: int = env("TASK_BACKOFF_MAX_MS", 5000, _int(10, 600_000), "cap of the restart backoff of a crashed background loop")
    store_poison_attempts: int = env("STORE_POISON_ATTEMPTS", 5, _int(1, 1000), "a batch the store refuses this many times in a row goes to DATA_DIR/dead-letter")
    ws_max_patterns: int = env("WS_MAX_PATTERNS", 10_000, _int(1, 10_000_000), "most topic patterns one /ws or Polygon connection may hold")
    enrich_queue_max: int = env("ENRICH_QUEUE_MAX", 100_000, _int(1, 100_000_000), "frames waiting for enrichment; past it frames go out without enrichment")
    enrich_cache_max: int = env("ENRICH_CACHE_MAX", 10_000, _int(1, 10_000_000), "topics whose enrichment is cached (least recently used evicted)")
    enrich_concurrency: int = env("ENRICH_CONCURRENCY", 4, _int(1, 1000), "enrichment queries running at once")
    fault_hooks: bool = env("RELAYHOUSE_FAULT_HOOKS", False, _bool, "TEST ONLY: enables POST /debug/fault, which makes a named background loop raise")

    @classmethod
    def from_env(cls, mapping: Mapping[str, str]) -> "Settings":
        """Parse every known variable of `mapping`; raise SettingsError naming all bad ones."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            name = f.metadata["env"]
            raw = mapping.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        settings = None
        if not problems:
            settings = cls(**values)
            problems.extend(settings._cross_checks())
        if problems:
            raise SettingsError(problems)
        return settings

    def _cross_checks(self) -> list[str]:
        problems = []
        if self.upstream_backoff_min_ms > self.upstream_backoff_max_ms:
            problems.append("UPSTREAM_BACKOFF_MIN_MS: larger than UPSTREAM_BACKOFF_MAX_MS")
        if self.enrich_sql:
            try:
                check_read_only_sql(self.enrich_sql)
                unknown = placeholder_names(self.enrich_sql) - {"topic"}
                if unknown:
                    problems.append(f"ENRICH_SQL: only %(topic)s can be filled, not {', '.join(sorted(unknown))}")
            except SqlError as exc:
                problems.append(f"ENRICH_SQL: {exc}")
            if self.store_backend == "none":
                problems.append("ENRICH_SQL: needs a store (CLICKHOUSE_URL is none, or unset with REDIS_URL)")
        if self.clickhouse_query_url and (self.store_backend != "clickhouse" or self.clickhouse_query_url == "none"):
            problems.append("CLICKHOUSE_QUERY_URL: needs CLICKHOUSE_URL set to a ClickHouse server, and a server URL itself")
        if self.upstream_topics and not self.upstream_subscribe:
            problems.append("UPSTREAM_TOPICS: needs UPSTREAM_SUBSCRIBE=polygon")
        if self.token_topics:
            unknown = sum(1 for token, _ in self.token_topics if token not in self.api_tokens)
            if unknown:
                problems.append(f"TOKEN_TOPICS: {unknown} of its tokens are not in API_TOKENS (tokens are not shown)")
        if self.health_port == self.port:
            problems.append("HEALTH_BIND: its port is PORT's; the health listener needs a port of its own")
        if self.cors_allow_credentials and "*" in self.cors_origins:
            problems.append("CORS_ALLOW_CREDENTIALS: credentials need an explicit CORS_ORIGINS list, not *")
        return problems

    def topic_scope(self, token: str | None) -> tuple[str, ...] | None:
        """The patterns `token` may subscribe to (TOKEN_TOPICS), None when it is not limited."""
        if token is None or not self.token_topics:
            return None
        for listed, patterns in self.token_topics:
            if hmac.compare_digest(listed.encode(), token.encode()):
                return patterns
        return None

    @property
    def health_port(self) -> int | None:
        """The health listener's port (HEALTH_BIND), None when there is none."""
        return parse_bind(self.health_bind)[1] if self.health_bind else None

    @property
    def store_backend(self) -> str:
        if self.clickhouse_url == "none":
            return "none"
        if self.redis_url and not self.clickhouse_url:
            return "none"  # chDB is one process's files: a cluster needs a ClickHouse server
        return "clickhouse" if self.clickhouse_url else "chdb"

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for the README's configuration table."""
        return [(f.metadata["env"], repr(f.default), f.metadata["doc"]) for f in fields(cls)]
