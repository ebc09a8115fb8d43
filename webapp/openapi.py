"""The OpenAPI 3 description of every HTTP route, served at /openapi.json.

Every rule of the app's URL map is here with its methods, parameters, request
body and every status it can answer, each with the schema of what the app
really sends (tests/integration/test_openapi.py walks the URL map, and runs
schemathesis over the live app against this document). The WebSocket routes
are described as far as HTTP goes: their refusals before the upgrade, and the
101; their frames are in docs/api.md and docs/polygon.md.

The document is assembled here from its parts: webapp/openapi_paths.py (the
routes) and webapp/openapi_schemas.py (the bodies they send and take).
"""

from typing import Any

from webapp.health import VERSION
from webapp.openapi_paths import paths
from webapp.openapi_schemas import schemas
from webapp.settings import Settings


def openapi_document(settings: Settings | None = None) -> dict[str, Any]:
    """The document for an app built with `settings` (limits that depend on them are filled in)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "relayhouse", "version": VERSION,
            "description": "One upstream WebSocket feed, numbered, cached, stored and fanned out. Every error "
                           "is {\"error\": \"...\"} with a 4xx/5xx status; a wrong method is 405 with Allow. "
                           "Client routes need a token only when API_TOKENS is set; admin routes need "
                           "ADMIN_TOKEN, or a loopback peer when it is unset.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an API token (client routes) or ADMIN_TOKEN (admin routes)"},
                "token": {"type": "apiKey", "in": "query", "name": "token",
                          "description": "an API token (client routes only)"},
            },
            "schemas": schemas(),
        },
        "paths": paths(settings or Settings()),
    }
