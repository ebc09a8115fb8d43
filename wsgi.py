"""Entry point: gevent patch first, then settings from the environment, then the app."""

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from webapp import create_app  # noqa: E402
from webapp.settings import Settings, SettingsError  # noqa: E402

try:
    settings = Settings.from_env(os.environ)
except SettingsError as exc:
    sys.stderr.write(f"relayhouse: {exc}\n")
    sys.exit(4)  # gunicorn halts on a worker exit code of 4 (app failed to load) instead of respawning

logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
app = create_app(settings)


def start_runtime() -> None:
    """Start this worker's background greenlets (called from gunicorn's post_worker_init)."""
    app.extensions["relayhouse"].start()


def stop_runtime() -> None:
    """Tell clients, stop the upstream, flush the store (called on SIGTERM)."""
    app.extensions["relayhouse"].shutdown()


def finish_runtime(timeout_s: float) -> None:
    """Before the worker exits: make sure the shutdown ran and finished (SIGINT/SIGQUIT start it here)."""
    import gevent

    runtime = app.extensions["relayhouse"]
    if not runtime.shutting_down:
        gevent.spawn(runtime.shutdown)
    runtime.wait_stopped(timeout_s)
