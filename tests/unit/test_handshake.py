"""The WebSocket opening handshake checked as data before the library sees it (handlers/handshake.py)."""

import pytest

from handlers.handshake import upgrade_refusal

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def refusal(protocol="HTTP/1.1", upgrade="websocket", connection="Upgrade", version="13", key=KEY):
    found = upgrade_refusal(protocol, upgrade, connection, version, key)
    return None if found is None else found.status


def test_a_well_formed_handshake_passes_with_token_lists_and_any_case():
    assert refusal() is None
    assert refusal(upgrade="WebSocket", connection="keep-alive, Upgrade", version=" 13 ") is None


@pytest.mark.parametrize("kwargs, status", [
    ({"upgrade": ""}, 400), ({"upgrade": "h2c"}, 400), ({"key": None}, 400),
    ({"protocol": "HTTP/1.0"}, 400), ({"connection": "keep-alive"}, 400), ({"connection": ""}, 400),
    ({"version": None}, 426), ({"version": "8"}, 426), ({"version": "13, 8"}, 426),
    ({"key": "abc="}, 400), ({"key": ""}, 400), ({"key": "!" * 24}, 400), ({"key": KEY + ", " + KEY}, 400),
    ({"key": "é" * 24}, 400), ({"key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"}, 400),  # 21 bytes
])
def test_what_rfc_6455_refuses_is_refused_with_its_status(kwargs, status):
    assert refusal(**kwargs) == status


def test_a_version_refusal_names_the_version_the_relay_speaks():
    found = upgrade_refusal("HTTP/1.1", "websocket", "Upgrade", "8", KEY)
    assert found is not None and ("Sec-WebSocket-Version", "13") in found.headers
