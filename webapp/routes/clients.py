"""/clients: this worker's connected clients, each with its delivery mode (contract §12), bounded by `limit`."""

import os
import secrets
import time

import gevent
from flask import Blueprint, request

from handlers.clients import LIMIT_DEFAULT, LIMIT_MAX, ClientState, client_listing
from handlers.params import int_param
from webapp.auth import CLIENT, access, request_scope
from webapp.responses import json_error, json_response
from webapp.routes import runtime

bp = Blueprint("clients", __name__)

ID_KEY = secrets.token_bytes(16)  # per worker: client ids reveal nothing of the process's memory
GATHER_CHUNK = 1000  # clients read between two yields: a large audience is walked without stalling the flusher


def gather(hub) -> list[ClientState]:
    """Every client's state, read without changing anything; yields to other greenlets every GATHER_CHUNK clients
    (a client that leaves meanwhile is still listed: the listing is a moment's view)."""
    states = []
    for n, client in enumerate(hub.clients(), 1):
        states.append(ClientState(
            ref=id(client), transport=client.kind, mode=hub.mode_of(client),
            max_hz=getattr(client, "max_hz", None), on_slow=getattr(client, "on_slow", "close"),
            patterns=client.matcher.patterns, connected_at_s=getattr(client, "connected_at", None),
            queued_events=client.behind(0), queued_bytes=client.wire.backlog_bytes))
        if n % GATHER_CHUNK == 0:
            gevent.sleep(0)
    return states


@bp.get("/clients")
@access(CLIENT)
def clients():
    rt = runtime()
    limit = int_param(request.args, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    if request_scope(request, rt.settings) is not None:
        return json_error(403, "this token is limited to some topics (TOKEN_TOPICS): "
                               "/clients would show every client's subscriptions")
    states = gather(rt.hub)
    return json_response(client_listing(states, limit=limit, now_s=time.monotonic(), worker=os.getpid(),
                                        key=ID_KEY))
