"""POST /publish: an admin injects a frame, handled exactly like one from the upstream.

With Redis, any worker takes it: the frame goes to the leader, whose append
gives its events their seqs, and the answer carries those seqs. A 503
`{"error": "not published: ..."}` when no leader is known, when none answered
within 2 x LEADER_LEASE_MS (a leader change fits in that: the old lease lapses,
the next leader serves the waiting request), or when the leader's outbox is
full (BUS_OUTBOX_MAX); the events are then never published later.
"""

from flask import Blueprint, request

from handlers import jsonx
from webapp.auth import ADMIN, access
from webapp.bus.receipt import Unconfirmed
from webapp.bus.redis import NoLeader
from webapp.responses import json_error, json_response
from webapp.routes import not_json_content, runtime

bp = Blueprint("publish", __name__)


@bp.post("/publish")
@access(ADMIN)
def publish():
    rt = runtime()
    refused = not_json_content()
    if refused is not None:
        return refused
    body = request.get_data(cache=False)
    try:
        value = jsonx.loads(body)
    except jsonx.NotJSON as exc:
        return json_error(400, f"body must be a JSON object or array: {exc}")
    if not isinstance(value, (dict, list)):
        return json_error(400, "body must be a JSON object or array")
    if len(body) > rt.settings.upstream_max_frame_bytes:
        return json_error(413, f"body exceeds UPSTREAM_MAX_FRAME_BYTES ({rt.settings.upstream_max_frame_bytes})")
    most = rt.publish_max_events
    if most is not None and isinstance(value, list) and len(value) > most:
        # its events go into the stream in one append, which must not trim what a reader has not read
        return json_error(413, f"body holds {len(value)} items; one publish takes at most {most} in a cluster "
                               "(half of STREAM_MAXLEN)")
    try:
        seqs = rt.publish_frame(body)
    except Unconfirmed as exc:
        # the append call got no answer: saying "not published" could be false
        return json_error(503, f"publish unconfirmed: {exc}")
    except NoLeader as exc:
        # never a 200 for events nobody will see: no seq was given, or none is known to be
        return json_error(503, f"not published: {exc}")
    return json_response({"seqs": seqs})
