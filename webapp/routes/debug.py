"""TEST ONLY: POST /debug/fault makes a named background loop raise (registered only with RELAYHOUSE_FAULT_HOOKS)."""

from flask import Blueprint, request

from handlers import jsonx
from webapp.auth import ADMIN, access
from webapp.responses import json_error, json_response
from webapp.routes import runtime

bp = Blueprint("debug", __name__)


@bp.post("/debug/fault")
@access(ADMIN)
def fault():
    """{"task": name} → FaultInjected is raised inside that running task; 404 when it does not run."""
    try:
        body = jsonx.loads(request.get_data(cache=False))
    except jsonx.NotJSON as exc:
        return json_error(400, f"body must be JSON: {exc}")
    name = body.get("task") if isinstance(body, dict) else None
    if not isinstance(name, str):
        return json_error(400, "expected {\"task\": NAME}")
    tasks = runtime().tasks
    if not tasks.inject(name):
        return json_error(404, f"no running task {name[:64]!r}; running: {sorted(tasks.tasks)}")
    return json_response({"injected": name})
