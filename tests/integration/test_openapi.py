"""/openapi.json describes every HTTP route exactly (contract §6): kept in sync with the app's URL
map, every documented bound enforced by the app, and a schemathesis run over the live app (with a
real ClickHouse store) finding no 5xx and no response off its schema.

The schemathesis run is bounded (40 examples per operation and phase, a
fixed seed) so it takes well under a minute; /sse is left out of it because a
well-formed request to it is a stream that never ends (its refusals are
tested here and in test_security.py).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support.clickhouse import ClickHouseServer, clickhouse_server  # noqa: F401
from support.clients import upgrade_headers
from support.relay import ROOT, Relay

from webapp import create_app
from webapp.openapi import openapi_document
from webapp.settings import Settings

TOKEN = "openapi-test-token"
HISTORY_MAX_LIMIT = 500
SNAPSHOT_MAX = 300
RELAY_ENV = {"HISTORY_MAX_LIMIT": str(HISTORY_MAX_LIMIT), "SNAPSHOT_MAX": str(SNAPSHOT_MAX)}
SCHEMATHESIS = ROOT / ".venv" / "bin" / "st"
EXAMPLES_PER_OPERATION = 40


def openapi_path(rule: str) -> str:
    """Flask's `/cache/events/<seq>`, `<path:name>`, `<any(a, b):market>` as OpenAPI's `{seq}`."""
    return re.sub(r"<(?:[a-z]+(?:\([^)]*\))?:)?([a-z_]+)>", r"{\1}", rule)


def app_routes() -> dict[tuple[str, str], object]:
    app = create_app(Settings.from_env({"CLICKHOUSE_URL": "none", "UPSTREAM_URL": "ws://127.0.0.1:9/x"}))
    routes = {}
    for rule in app.url_map.iter_rules():
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            routes[(openapi_path(rule.rule), method.lower())] = rule
    return routes


def test_the_document_describes_every_route_of_the_app_and_nothing_else():
    document = openapi_document()
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    routes = app_routes()
    assert documented == set(routes), (
        f"undocumented routes: {sorted(set(routes) - documented)}; documented but gone: {sorted(documented - set(routes))}")
    for (path, method), rule in routes.items():
        operation = document["paths"][path][method]
        in_path = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "path"}
        assert set(in_path) == set(rule.arguments), (path, set(in_path), rule.arguments)
        for name, converter in rule._converters.items():
            items = getattr(converter, "items", None)
            if items is not None:  # any(...): the enum lists exactly the same values
                assert sorted(in_path[name]["schema"]["enum"]) == sorted(items), (path, name)
        assert operation["responses"], (path, method)
        assert "security" in operation, f"{method.upper()} {path}: say who may call it"


def test_the_document_is_valid_openapi_3_with_every_reference_resolved():
    document = openapi_document()
    assert document["openapi"].startswith("3.0")
    schemas = document["components"]["schemas"]
    text = repr(document)
    for name in re.findall(r"#/components/schemas/(\w+)", text):
        assert name in schemas, f"dangling $ref to {name}"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status), (path, method, status)
                assert response.get("description"), (path, method, status)


def test_the_served_document_is_the_one_for_the_relays_own_settings(relay):
    served = relay.get("/openapi.json")
    assert served.status_code == 200 and served.headers["Content-Type"].startswith("application/json")
    document = served.json()
    assert document == openapi_document(Settings.from_env(relay.settings))
    limit = next(p for p in document["paths"]["/history"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == HISTORY_MAX_LIMIT
    snapshot = next(p for p in document["paths"]["/ws"]["get"]["parameters"] if p["name"] == "snapshot")
    assert integer_schema(snapshot)["maximum"] == SNAPSHOT_MAX


def integer_schema(parameter: dict) -> dict:
    """The parameter's integer schema, or its integer alternative (snapshot: a count or latest)."""
    schema = parameter["schema"]
    return next((alt for alt in schema.get("oneOf", ()) if alt.get("type") == "integer"), schema)


def integer_bounds() -> list[tuple[str, str, str, str, int, int]]:
    """(path, method, where, name, minimum, maximum) of every bounded integer parameter."""
    document = openapi_document(Settings.from_env(RELAY_ENV))
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                schema = integer_schema(parameter)
                if schema.get("type") == "integer" and parameter["in"] in ("query", "path"):
                    found.append((path, method, parameter["in"], parameter["name"], schema["minimum"],
                                  schema["maximum"]))
    return found


@pytest.mark.parametrize("path, method, where, name, low, high", integer_bounds(),
                         ids=[f"{m.upper()} {p} {n}" for p, m, _, n, _, _ in integer_bounds()])
def test_every_documented_bound_is_the_apps_own(relay, path, method, where, name, low, high):
    """Just outside a documented range: 400 naming the parameter. Just inside: never that 400."""
    def call(value: int):
        target = path.replace("{" + name + "}", str(value)) if where == "path" else path
        params = {name: value} if where == "query" else {}
        if "{seq}" in target:
            target = target.replace("{seq}", "1")
        if "{market}" in target:
            target = target.replace("{market}", "stocks")
        if path == "/ws":  # an upgrade request, on a connection of its own that is closed at once
            with requests.Session() as session:
                session.trust_env = False
                return session.get(relay.url + target, params=params, headers=upgrade_headers(), timeout=10)
        return relay.request(method.upper(), target, params=params, stream=path == "/sse")

    for outside in (low - 1, high + 1):
        response = call(outside)
        try:
            assert response.status_code == 400, (outside, response.status_code, response.text[:200])
            assert name in response.json()["error"], response.json()
        finally:
            response.close()
    for inside in (low, high):
        response = call(inside)
        try:
            if response.status_code == 400:
                assert name not in response.json()["error"], (inside, response.json())
        finally:
            response.close()


# -- schemathesis over the live app -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed_relay(upstream, clickhouse_server: ClickHouseServer,  # noqa: F811
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """Tokens on (one value for client and admin routes, so one bearer header reaches every route), a real
    store, short query limits, and some events to find."""
    env = {"API_TOKENS": TOKEN, "ADMIN_TOKEN": TOKEN, "CLICKHOUSE_URL": clickhouse_server.fresh_url(),
           "QUERY_TIMEOUT_S": "2", "QUERY_MAX_ROWS": "100", "STORE_BATCH_MS": "50"}
    running = Relay(tmp_path_factory.mktemp("fuzzed"), upstream.url, env).start()
    published = running.request("POST", "/publish", headers={"Authorization": f"Bearer {TOKEN}"},
                                json=[{"ev": "T", "sym": "FUZZ", "n": n, "p": 1.5} for n in range(20)])
    assert published.status_code == 200, published.text
    yield running
    running.stop()


def test_schemathesis_finds_no_server_error_and_no_response_off_its_schema(fuzzed_relay, tmp_path: Path):
    relay = fuzzed_relay
    command = [
        str(SCHEMATHESIS), "run", f"{relay.url}/openapi.json",
        "--header", f"Authorization: Bearer {TOKEN}",
        "--checks", "all",
        # A schema cannot say which SQL is a read or which topic patterns parse, so well-formed
        # input may still get a 400; and these routes create no resources to check links on.
        "--exclude-checks", "positive_data_acceptance,use_after_free,ensure_resource_availability",
        "--exclude-path", "/sse",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(EXAMPLES_PER_OPERATION),
        "--seed", "20261126",
        "--workers", "1",
        "--max-redirects", "0",
        "--request-timeout", "15",
        "--max-response-time", "10",
        "--suppress-health-check", "all",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "HOME": str(tmp_path)})
    output = result.stdout + result.stderr
    print(output[-3000:])
    assert result.returncode == 0, f"schemathesis failed (exit {result.returncode}):\n{output[-20000:]}"
    assert "No issues found" in output or "passed" in output, output[-3000:]
    unhandled = [line for line in relay.log_text().splitlines() if "unhandled error" in line or "Traceback" in line]
    assert not unhandled, unhandled[:5]
    assert relay.health()["upstream"]["connected"] is True
