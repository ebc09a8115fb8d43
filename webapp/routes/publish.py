"""POST /publish: an admin injects a frame, handled exactly like one from the upstream."""

from flask import Blueprint, request

from handlers import jsonx
from webapp.auth import ADMIN, access
from webapp.responses import json_error, json_response
from webapp.routes import runtime

bp = Blueprint("publish", __name__)


@bp.post("/publish")
@access(ADMIN)
def publish():
    rt = runtime()
    body = request.get_data(cache=False)
    try:
        value = jsonx.loads(body)
    except jsonx.NotJSON as exc:
        return json_error(400, f"body must be a JSON object or array: {exc}")
    if not isinstance(value, (dict, list)):
        return json_error(400, "body must be a JSON object or array")
    if len(body) > rt.settings.upstream_max_frame_bytes:
        return json_error(413, f"body exceeds UPSTREAM_MAX_FRAME_BYTES ({rt.settings.upstream_max_frame_bytes})")
    events = rt.ingest.publish(body, rt.now_ms())
    return json_response({"seqs": [ev.seq for ev in events]})
