"""/monitor: the operator's live page (Jinja template, vanilla JS and CSS, no CDN) and its assets."""

from pathlib import Path

from flask import Blueprint, render_template, request, send_from_directory

from webapp.auth import OPEN, access
from webapp.health import VERSION
from webapp.routes import runtime

bp = Blueprint("monitor", __name__)

ASSET_DIR = Path(__file__).resolve().parents[1] / "static"
SNAPSHOT_EVENTS = 100  # what the page asks /ws for on a fresh connection
DEFAULT_DATABASE = "relayhouse"  # named in the SQL console's examples when there is no store

# The page loads nothing from elsewhere; event data is only ever set as text,
# and this keeps it that way should a bug try otherwise.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'")


@bp.get("/monitor")
@access(OPEN)
def monitor():
    rt = runtime()
    settings = rt.settings
    html = render_template("monitor.html", version=VERSION,
                           snapshot=min(SNAPSHOT_EVENTS, settings.snapshot_max),
                           topic_fields=",".join(settings.topic_fields),
                           db=getattr(getattr(rt, "store", None), "db", None) or DEFAULT_DATABASE)
    return html, 200, {
        "Content-Security-Policy": _CSP.format(host=request.host),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


@bp.get("/monitor/assets/<path:name>")
@access(OPEN)
def asset(name: str):
    """The page's CSS, JS and icon, open like the page itself.

    Flask's own /static endpoint carries no access mark, so it counts as a
    client route and would need an API token that a <script> tag cannot send.
    """
    # max_age=0: the browser revalidates (ETag, 304) so a deploy shows at once
    return send_from_directory(ASSET_DIR, name, max_age=0)
