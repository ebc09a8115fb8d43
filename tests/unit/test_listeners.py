"""handlers/listeners.py: a listener's address text, split or refused (plain data in and out)."""

import pytest

from handlers.listeners import parse_bind

SHAPE = "expected host:port such as 127.0.0.1:8001 or [::1]:8001, got {!r}"


@pytest.mark.parametrize(("text", "address"), [
    ("127.0.0.1:8001", ("127.0.0.1", 8001)),
    ("  0.0.0.0:1\n", ("0.0.0.0", 1)),
    ("127.0.0.1:8001 ", ("127.0.0.1", 8001)),
    ("[::1]:65535", ("[::1]", 65535)),
    ("[::]:9100", ("[::]", 9100)),
    ("health.internal:8001", ("health.internal", 8001)),
])
def test_a_host_and_port_are_split(text, address):
    assert parse_bind(text) == address


@pytest.mark.parametrize(("text", "message"), [
    ("8001", SHAPE.format("8001")),
    ("127.0.0.1", SHAPE.format("127.0.0.1")),
    ("127.0.0.1:", SHAPE.format("127.0.0.1:")),
    (":8001", SHAPE.format(":8001")),
    ("::1:8001", SHAPE.format("::1:8001")),
    ("[]:8001", SHAPE.format("[]:8001")),
    ("[host]:8001", SHAPE.format("[host]:8001")),
    ("user@host:8001", SHAPE.format("user@host:8001")),
    ("unix:/run/h.sock", SHAPE.format("unix:/run/h.sock")),
    ("127.0.0.1:-1", SHAPE.format("127.0.0.1:-1")),
    ("127.0.0.1:0", "0 is outside 1..65535"),
    ("127.0.0.1:65536", "65536 is outside 1..65535"),
    ("127.0.0.1:" + "9" * 30, f"{'9' * 30} is outside 1..65535"),
])
def test_anything_else_is_refused_with_the_expected_form(text, message):
    with pytest.raises(ValueError) as refused:
        parse_bind(text)
    assert str(refused.value) == message
