"""/monitor: the operator's live page (Jinja template, vanilla JS, no CDN)."""

from flask import Blueprint, render_template

from webapp.auth import OPEN, access
from webapp.routes import runtime

bp = Blueprint("monitor", __name__)


@bp.get("/monitor")
@access(OPEN)
def monitor():
    rt = runtime()
    return render_template("monitor.html", settings=rt.settings, version=rt.health()["version"])
