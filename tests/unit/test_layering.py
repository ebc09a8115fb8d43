"""The pure core stays pure: handlers/ imports no I/O, web or driver module."""

import ast
import sys
from pathlib import Path

import pytest

HANDLERS = Path(__file__).resolve().parents[2] / "handlers"
MODULES = sorted(HANDLERS.glob("*.py"))

# Top-level names the core may not import: the shell, the web stack, the
# drivers, and the stdlib modules that reach the network, the disk, the
# process, the clock or the log.
FORBIDDEN = frozenset({
    "webapp", "wsgi", "flask", "flask_sock", "werkzeug", "gunicorn",
    "gevent", "greenlet", "websocket", "websockets", "simple_websocket",
    "clickhouse_driver", "clickhouse_connect", "chdb", "redis", "requests", "urllib3",
    "httpx", "socket", "ssl", "select", "selectors", "asyncio", "http", "subprocess",
    "signal", "multiprocessing", "logging", "os", "time", "shutil", "tempfile",
    "importlib",
})
# Allowed on purpose: threading (the cache's Lock), and pure stdlib modules.


def imported_modules(source: str) -> set[str]:
    """Every absolute module name a source file imports, dotted as written."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__"):
            names.add("__import__")
    return names


def forbidden_in(source: str) -> set[str]:
    return {
        name for name in imported_modules(source)
        if name == "__import__" or name.split(".")[0] in FORBIDDEN
        or name.startswith("flask") or name == "urllib.request"
    }


def test_the_check_sees_every_kind_of_import():
    source = (
        "import os\nimport os.path as p\nfrom webapp.hub import Hub\n"
        "from flask_sock import Sock\nimport urllib.request\nfrom . import topics\n"
        "from handlers import jsonx\nimport threading\nfrom urllib.parse import quote\n"
        "def f():\n    import gevent\n    __import__('socket')\n"
    )
    assert forbidden_in(source) == {
        "os", "os.path", "webapp.hub", "flask_sock", "urllib.request", "gevent",
        "__import__",
    }


def test_there_are_handlers_modules_to_check():
    assert {"cache.py", "events.py", "frames.py", "jsonx.py", "protocol.py", "resume.py",
            "topics.py", "demo.py"} <= {m.name for m in MODULES}


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_a_handlers_module_imports_nothing_that_does_io(module):
    assert forbidden_in(module.read_text(encoding="utf-8")) == set()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_a_handlers_module_imports_only_the_stdlib_orjson_and_handlers(module):
    allowed = set(sys.stdlib_module_names) | {"orjson", "handlers"}
    outside = {
        name for name in imported_modules(module.read_text(encoding="utf-8"))
        if name.split(".")[0] not in allowed
    }
    assert outside == set()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_a_handlers_module_opens_with_a_docstring_saying_its_job(module):
    docstring = ast.get_docstring(ast.parse(module.read_text(encoding="utf-8")))
    assert docstring and docstring.splitlines()[0].strip()
