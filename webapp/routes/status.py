"""/health, /metrics, /openapi.json and the / redirect: open to everyone."""

from flask import Blueprint, Response, redirect, request

from handlers.params import bool_param
from webapp.auth import OPEN, access
from webapp.metrics import CONTENT_TYPE_LATEST
from webapp.openapi import openapi_document
from webapp.responses import json_response
from webapp.routes import runtime

bp = Blueprint("status", __name__)


@bp.get("/health")
@access(OPEN)
def health():
    strict = bool_param(request.args, "strict")
    report = runtime().health()
    status = 503 if strict and report["status"] != "ok" else 200
    return json_response(report, status)


@bp.get("/metrics")
@access(OPEN)
def metrics():
    return Response(runtime().render_metrics(), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})


@bp.get("/")
@access(OPEN)
def index():
    return redirect("/monitor", code=302)


@bp.get("/openapi.json")
@access(OPEN)
def openapi():
    return json_response(openapi_document(runtime().settings))
