"""HTTP and WebSocket routes, one blueprint per module."""

from flask import current_app


def runtime():
    """The per-worker Runtime this app was built with."""
    return current_app.extensions["relayhouse"]
