"""HEALTH_BIND: its values, and the health listener's filter through Flask's test client with a socket of a given port."""

import pytest

from webapp import create_app
from webapp.healthport import local_port
from webapp.settings import Settings, SettingsError

UPSTREAM = {"UPSTREAM_URL": "ws://127.0.0.1:9/feed", "CLICKHOUSE_URL": "none"}


class AcceptedOn:
    """What gunicorn puts in environ["gunicorn.socket"]: here only its local address matters."""

    def __init__(self, name):
        self.name = name

    def getsockname(self):
        if isinstance(self.name, Exception):
            raise self.name
        return self.name


@pytest.mark.parametrize(("value", "bind", "port"), [
    ("127.0.0.1:8001", "127.0.0.1:8001", 8001),
    (" 0.0.0.0:9100 ", "0.0.0.0:9100", 9100),
    ("[::1]:8001", "[::1]:8001", 8001),
    ("localhost:65535", "localhost:65535", 65535),
])
def test_a_good_health_bind_gives_its_port(value, bind, port):
    settings = Settings.from_env({"HEALTH_BIND": value})
    assert (settings.health_bind, settings.health_port) == (bind, port)


def test_no_health_bind_means_no_health_listener():
    assert (Settings.from_env({}).health_bind, Settings.from_env({"HEALTH_BIND": " "}).health_port) == (None, None)


@pytest.mark.parametrize(("env", "problem"), [
    ({"HEALTH_BIND": "8001"}, "HEALTH_BIND: expected host:port such as 127.0.0.1:8001 or [::1]:8001, got '8001'"),
    ({"HEALTH_BIND": ":8001"}, "HEALTH_BIND: expected host:port such as 127.0.0.1:8001 or [::1]:8001, got ':8001'"),
    ({"HEALTH_BIND": "::1:8001"}, "HEALTH_BIND: expected host:port such as 127.0.0.1:8001 or [::1]:8001, got '::1:8001'"),
    ({"HEALTH_BIND": "[127.0.0.1]:8001"},
     "HEALTH_BIND: expected host:port such as 127.0.0.1:8001 or [::1]:8001, got '[127.0.0.1]:8001'"),
    ({"HEALTH_BIND": "a b:1"}, "HEALTH_BIND: expected host:port such as 127.0.0.1:8001 or [::1]:8001, got 'a b:1'"),
    ({"HEALTH_BIND": "unix:/run/health.sock"},
     "HEALTH_BIND: expected host:port such as 127.0.0.1:8001 or [::1]:8001, got 'unix:/run/health.sock'"),
    ({"HEALTH_BIND": "127.0.0.1:0"}, "HEALTH_BIND: 0 is outside 1..65535"),
    ({"HEALTH_BIND": "127.0.0.1:65536"}, "HEALTH_BIND: 65536 is outside 1..65535"),
    ({"HEALTH_BIND": "127.0.0.1:http"},
     "HEALTH_BIND: expected host:port such as 127.0.0.1:8001 or [::1]:8001, got '127.0.0.1:http'"),
    ({"HEALTH_BIND": "127.0.0.1:8000"}, "HEALTH_BIND: its port is PORT's; the health listener needs a port of its own"),
    ({"HEALTH_BIND": "0.0.0.0:9000", "PORT": "9000"},
     "HEALTH_BIND: its port is PORT's; the health listener needs a port of its own"),
])
def test_a_bad_health_bind_is_named(env, problem):
    with pytest.raises(SettingsError) as failed:
        Settings.from_env(env)
    assert failed.value.problems == [problem]


def test_the_local_port_is_the_accepted_sockets_own():
    assert local_port({"gunicorn.socket": AcceptedOn(("127.0.0.1", 8001))}) == 8001
    assert local_port({"gunicorn.socket": AcceptedOn(("::1", 8001, 0, 0))}) == 8001
    assert local_port({"gunicorn.socket": AcceptedOn(OSError("closed"))}) is None
    assert local_port({"gunicorn.socket": AcceptedOn("/run/relay.sock")}) is None
    assert local_port({"SERVER_PORT": "8001", "HTTP_HOST": "x:8001"}) is None


def answers(env, port):
    client = create_app(Settings.from_env({**UPSTREAM, **env})).test_client()
    base = {"gunicorn.socket": AcceptedOn(("127.0.0.1", port))}
    return {path: client.get(path, environ_base=base).status_code
            for path in ("/health", "/metrics", "/cache/recent", "/openapi.json", "/")}


def test_the_health_listener_answers_health_and_metrics_only():
    assert answers({"HEALTH_BIND": "127.0.0.1:8001"}, 8001) == {
        "/health": 200, "/metrics": 200, "/cache/recent": 404, "/openapi.json": 404, "/": 404}


def test_the_main_port_answers_everything_with_or_without_a_health_listener():
    everything = {"/health": 200, "/metrics": 200, "/cache/recent": 200, "/openapi.json": 200, "/": 302}
    assert answers({"HEALTH_BIND": "127.0.0.1:8001"}, 8000) == everything
    assert answers({}, 8001) == everything
