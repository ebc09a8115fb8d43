"""The upstream's subscriptions follow the clients (UPSTREAM_SUBSCRIBE=polygon): the shell around handlers/subscriptions.py.

The hub reports every membership change (`client_changed`, never yields);
`ClientTable` says which patterns got their first client or lost their last.
One greenlet per worker (`run`) then does the I/O the pure part asks for:
with Redis, it writes this worker's patterns to its own hash (refreshed
within one lease period, so a dead worker's patterns expire) and announces
the change; on the leader it reads every worker's hash, hands the union to
`UpstreamPlan`, and sends what `due` returns through the upstream connection.
After every (re)connect, `connected_messages` is the whole union, sent by
webapp/upstream.py right after UPSTREAM_INIT. Error statuses the upstream
answers reach the clients that asked, on every worker (a Redis channel).

Redis keys, all under REDIS_PREFIX: `subs:w:<worker>` (hash pattern -> clients,
expires), `subs:workers` (sorted set of workers, by last write), `subs:upstream`
(what the leader has subscribed, for every worker's /health), and the pub/sub
channel `subs` (changes and errors).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import gevent
import orjson
from gevent.event import Event as Signal

from handlers.polygon import status_frame
from handlers.protocol import error_message, ws_frame
from handlers.subscriptions import (
    BATCH_MS,
    ClientTable,
    Step,
    UpstreamPlan,
    blamed_patterns,
    capped_counts,
    merge_counts,
)
from webapp.bus.redis import FAILURES as REDIS_FAILURES
from webapp.logs import printable

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class RedisRegistry:
    """Every worker's patterns in Redis: one expiring hash per worker, an index, one channel."""

    def __init__(self, url: str, prefix: str, worker: str, lease_ms: int):
        import redis

        self.failures = REDIS_FAILURES
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.listener = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.worker = worker
        self.key = f"{prefix}:subs:w:{worker}"
        self.index = f"{prefix}:subs:workers"
        self.upstream_key = f"{prefix}:subs:upstream"
        self.channel = f"{prefix}:subs"
        self.prefix = prefix
        # written every lease/3, gone lease*2/3 after the last write: a dead worker's
        # patterns leave the union within one lease period
        self.ttl_ms = max(100, lease_ms * 2 // 3)
        self.refresh_s = lease_ms / 3000.0
        self._written: dict[str, int] | None = None  # what the hash holds, as far as this worker knows

    def write(self, counts: dict[str, int], announce: bool) -> None:
        """This worker's patterns, rewritten when they changed, else only kept alive."""
        pipe = self.client.pipeline(transaction=True)
        if counts != self._written:
            pipe.delete(self.key)
            if counts:
                pipe.hset(self.key, mapping=counts)
        if counts:
            pipe.pexpire(self.key, self.ttl_ms)
        pipe.zadd(self.index, {self.worker: now_ms()})
        pipe.zremrangebyscore(self.index, "-inf", now_ms() - 100 * self.ttl_ms)  # long-gone workers
        if announce:
            pipe.publish(self.channel, b'{"changed":1}')
        try:
            pipe.execute()
        except self.failures:
            self._written = None  # unknown: written in full next time
            raise
        self._written = dict(counts)

    def remove(self) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.key)
        pipe.zrem(self.index, self.worker)
        pipe.publish(self.channel, b'{"changed":1}')
        pipe.execute()

    def union(self) -> dict[str, int]:
        workers = self.client.zrange(self.index, 0, -1)
        pipe = self.client.pipeline(transaction=False)
        for worker in workers:
            pipe.hgetall(f"{self.prefix}:subs:w:{worker.decode()}")
        tables = pipe.execute() if workers else []
        return merge_counts({k.decode(): int(v) for k, v in table.items()} for table in tables)

    def publish_upstream(self, subscribed: list[str], counts: dict[str, int]) -> None:
        self.client.set(self.upstream_key, orjson.dumps({"subscribed": subscribed, "clients": counts}),
                        px=max(10_000, self.ttl_ms * 10))

    def upstream(self) -> dict:
        raw = self.client.get(self.upstream_key)
        return orjson.loads(raw) if raw else {"subscribed": [], "clients": {}}

    def broadcast_error(self, patterns: list[str], status: dict) -> None:
        self.client.publish(self.channel, orjson.dumps({"error": status, "patterns": patterns}))

    def listen(self, on_message: Callable[[dict], None]) -> None:
        """Messages on the channel, for as long as the greenlet lives; reconnects after a failure."""
        while True:
            pubsub = self.listener.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                on_message({"changed": 1})  # whatever was missed while not listening
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        try:
                            on_message(orjson.loads(message["data"]))
                        except orjson.JSONDecodeError:
                            log.warning("subscriptions: an unreadable message on %s", self.channel)
            except self.failures as exc:
                log.warning("subscriptions: Redis listener failed (%s); retrying", exc)
                gevent.sleep(0.5)
            finally:
                try:
                    pubsub.close()
                except self.failures:
                    pass


class UpstreamSubscriptions:
    """One worker's part in keeping the upstream subscribed to what the clients want."""

    def __init__(self, settings, *, leading: Callable[[], bool], upstream: Callable[[], object],
                 registry: RedisRegistry | None = None):
        self.enabled = settings.upstream_subscribe == "polygon"
        self.table = ClientTable()
        self.plan = UpstreamPlan(fixed=settings.upstream_topics, delay_ms=settings.upstream_unsubscribe_delay_ms,
                                 max_patterns=settings.upstream_max_subscriptions)
        self.leading = leading
        self.upstream = upstream
        self.registry = registry
        self.union: dict[str, int] = {}  # the leader's last view: pattern -> clients (all workers)
        self._wake = Signal()
        self._local_changed = True
        self._remote_changed = True
        self.sent_messages = 0
        self._cut: set[str] = set()  # patterns past the limit on this worker, their clients told
        self._published: bool | None = None  # the leader's view is in Redis for the other workers

    # -- from the hub and the upstream (never yield) -----------------------------------------

    def client_changed(self, client, before: tuple, after: tuple) -> None:
        first, empty = self.table.change(client, before, after)
        if first or empty:
            self._local_changed = True
            self._wake.set()
        if self.plan.failed or self.plan.over:
            known = [p for p in after if (p in self.plan.failed or p in self.plan.over) and p not in before]
            if known:  # later, not here: the hub's membership changes never yield, and a snapshot goes first
                gevent.spawn(self._tell_late_client, client, known)

    def _tell_late_client(self, client, patterns: list[str]) -> None:
        """A client that asks for a pattern the upstream already refused (or that is past the limit) hears
        it too; the relay does not ask again while the pattern is held. (The leader's worker knows which.)"""
        for pattern in patterns:
            if pattern in self.plan.failed:
                status = {"ev": "status", "status": "error", "message": self.plan.failed[pattern]}
            elif pattern in self.plan.over:
                status = {"ev": "status", "status": "error", "message": self._over_limit_message(pattern)}
            else:
                continue
            self._notify_one(client, pattern, status)

    def connected_messages(self) -> list[dict]:
        """Called by the upstream after UPSTREAM_INIT on every (re)connect: the whole union."""
        if not self.enabled:
            return []
        if self.registry is None:
            self.union = self._local_union()
        else:
            self._wake.set()  # a new leader's view may be old: read the union again at once
        self.plan.want(self.union, now_ms())
        step = self.plan.connected(now_ms())
        self._after_step(step)
        if step.messages:
            log.info("upstream subscriptions after connect: %s", ", ".join(m["params"] for m in step.messages))
        return list(step.messages)

    def disconnected(self) -> None:
        self.plan.disconnected()

    def upstream_statuses(self, statuses: list[dict], recv_ms: int) -> None:
        """Error statuses answering a subscription go to the clients that asked for it."""
        if not self.enabled:
            return
        for status in statuses:
            if status.get("status") != "error":
                continue
            message = status.get("message") or ""
            patterns = blamed_patterns(message, self.plan.sent, self.plan.last_subscribe, recv_ms)
            if not patterns:
                log.warning("the upstream sent an error naming no subscribed pattern (blamed on none): %s",
                            printable(str(message)))
                continue
            self.plan.refused(patterns, message)
            log.warning("the upstream refused %s: %s", ", ".join(patterns), printable(str(message)))
            if self.registry is not None:
                gevent.spawn(self._broadcast_error, patterns, status)
            else:
                self.notify(patterns, status)
            self._wake.set()

    # -- what clients are told ------------------------------------------------------------------

    def notify(self, patterns: list[str], status: dict) -> None:
        """/ws: an `error` frame naming the pattern; /<market>: the status as the upstream sent it (once)."""
        told = set()
        for pattern in patterns:
            for client in self.table.owners(pattern):
                if client not in told:
                    self._notify_one(client, pattern, status)
                    if client.kind == "polygon":
                        told.add(client)

    @staticmethod
    def _notify_one(client, pattern: str, status: dict) -> None:
        if getattr(client, "closed", False):
            return
        if client.kind == "ws":
            frame = error_message(f"upstream refused {pattern}: {status.get('message', '')}")
            held = getattr(client, "held", None)
            if held is not None:  # its snapshot is still being fetched: the snapshot comes first
                held.append((ws_frame(frame), 0))
            else:
                client.send(frame)
        elif client.kind == "polygon":
            client.send(status_frame(status))

    def _broadcast_error(self, patterns: list[str], status: dict) -> None:
        try:
            self.registry.broadcast_error(patterns, status)
        except self.registry.failures as exc:
            log.warning("subscriptions: could not pass an upstream error on: %s", exc)
            self.notify(patterns, status)

    def _on_channel(self, message: dict) -> None:
        if "error" in message and isinstance(message.get("patterns"), list):
            self.notify([p for p in message["patterns"] if isinstance(p, str)], message["error"])
        else:
            self._remote_changed = True
            self._wake.set()

    # -- the greenlet ---------------------------------------------------------------------------

    def run(self) -> None:
        if not self.enabled:
            return
        if self.registry is not None:
            listener = gevent.spawn(self.registry.listen, self._on_channel)
        refreshed = last_round = 0.0
        try:
            while True:
                # deadlines matter only with a connection to send on; a (re)connect sends the union itself
                wake_at = self.plan.wake_at() if self.leading() and self.upstream().state.connected else None
                timeout = self.registry.refresh_s if self.registry is not None else None
                if wake_at is not None:
                    until = max(0.0, (wake_at - now_ms()) / 1000)
                    timeout = until if timeout is None else min(timeout, until)
                self._wake.wait(timeout)
                if self.registry is not None:
                    # a burst of changes (a subscribe flood) costs one Redis round per batch window
                    gevent.sleep(max(0.0, BATCH_MS / 1000 - (time.monotonic() - last_round)))
                    last_round = time.monotonic()
                self._wake.clear()
                try:
                    if self.registry is not None and (self._local_changed
                                                      or time.monotonic() - refreshed >= self.registry.refresh_s):
                        announce, self._local_changed = self._local_changed, False
                        self.registry.write(self._reported_counts(), announce)
                        refreshed = time.monotonic()
                    if self.leading():
                        self._lead_step()
                except REDIS_FAILURES as exc:
                    self._local_changed = True
                    log.warning("subscriptions: Redis failed (%s); retrying", exc)
                    gevent.sleep(0.5)
        finally:
            if self.registry is not None:
                listener.kill(block=False)

    def _reported_counts(self) -> dict[str, int]:
        """What this worker writes to Redis: at most UPSTREAM_MAX_SUBSCRIPTIONS patterns; the clients
        of a pattern left out are told once, as the leader would tell them."""
        counts, cut = capped_counts(self.table.counts(), self.plan.max_patterns)
        fresh = [p for p in cut if p not in self._cut]
        self._cut = set(cut)
        self._tell_over_limit(fresh, everywhere=False)
        return counts

    def _local_union(self) -> dict[str, int]:
        return merge_counts([self.table.counts()])

    def _lead_step(self) -> None:
        if self.registry is None:
            if self._local_changed:
                self._local_changed = False
                self.union = self._local_union()
        else:
            union = self.registry.union()  # each wake: a change somewhere, a deadline, or the refresh
            if union != self.union:
                self._published = None  # other workers' /health shows the new counts
            self.union = union
            self._remote_changed = False
        now = now_ms()
        self.plan.want(self.union, now)
        upstream = self.upstream()
        if not upstream.state.connected:
            return
        step = self.plan.due(now)
        for message in step.messages:
            if upstream.send(message):
                self.sent_messages += 1
                log.info("upstream %s: %s", message["action"], message["params"])
        self._after_step(step)

    def _over_limit_message(self, pattern: str) -> str:
        return f"the relay's upstream subscription limit ({self.plan.max_patterns} patterns) is reached: {pattern}"

    def _tell_over_limit(self, patterns, everywhere: bool) -> None:
        """Clients of patterns past the limit are told: this worker's, or (the leader) every worker's."""
        for pattern in patterns:
            status = {"ev": "status", "status": "error", "message": self._over_limit_message(pattern)}
            if everywhere and self.registry is not None:
                gevent.spawn(self._broadcast_error, [pattern], status)
            else:
                self.notify([pattern], status)

    def _after_step(self, step: Step) -> None:
        """The leader's follow-up of a step: the clients past the limit told, the view shared."""
        self._tell_over_limit(step.over_limit, everywhere=True)
        if self.registry is not None and (step.messages or self._published is None):
            self._published = True
            gevent.spawn(self._publish_upstream)

    def _publish_upstream(self) -> None:
        try:
            self.registry.publish_upstream(self.plan.subscribed(), self.union)
        except self.registry.failures as exc:
            self._published = None
            log.warning("subscriptions: could not record the upstream's subscriptions: %s", exc)

    def stop(self) -> None:
        """A worker that stops takes its patterns out of the union at once."""
        if self.registry is not None and self.enabled:
            try:
                self.registry.remove()
            except self.registry.failures as exc:
                log.warning("subscriptions: could not remove this worker's patterns: %s", exc)

    # -- views ----------------------------------------------------------------------------------

    def view(self) -> dict:
        """/health upstream.subscriptions and the monitor: what is subscribed upstream, with client counts."""
        if not self.enabled:
            return {"subscribed": [], "clients": {}}
        if self.registry is None:  # client counts change without changing the union: read them now
            return {"subscribed": self.plan.subscribed(), "clients": self._local_union()}
        if self.leading():  # the cluster's counts as of the last read (at most a third of a lease old)
            return {"subscribed": self.plan.subscribed(), "clients": dict(self.union)}
        try:
            return self.registry.upstream()
        except self.registry.failures:
            return {"subscribed": [], "clients": {}}

