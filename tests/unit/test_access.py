"""handlers/access.py: what a connection's access line is made of, from plain values."""

import sys

from handlers.access import BYTES_ACKED, bytes_acked, kept_environ, request_headers


def tcp_info_with(acked: int, length: int = 232) -> bytes:
    info = bytearray(length)
    info[BYTES_ACKED] = acked.to_bytes(8, sys.byteorder)
    return bytes(info)


def test_bytes_acked_is_read_from_its_place_in_tcp_info():
    assert bytes_acked(tcp_info_with(123_456_789_012)) == 123_456_789_012
    assert bytes_acked(tcp_info_with(0)) == 0


def test_a_reading_too_short_to_hold_bytes_acked_gives_none():
    assert bytes_acked(tcp_info_with(5)[:127]) is None
    assert bytes_acked(b"") is None


def test_only_the_environs_strings_are_kept():
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/ws?topics=T.*", "wsgi.input": object(),
               "gunicorn.socket": object(), "wsgi.version": (1, 0), "HTTP_USER_AGENT": "probe/1"}
    assert kept_environ(environ) == {"REQUEST_METHOD": "GET", "RAW_URI": "/ws?topics=T.*", "HTTP_USER_AGENT": "probe/1"}


def test_request_headers_are_named_as_on_the_wire():
    environ = {"HTTP_USER_AGENT": "probe/1", "HTTP_X_FORWARDED_FOR": "10.0.0.7", "CONTENT_TYPE": "text/plain",
               "CONTENT_LENGTH": "", "REMOTE_ADDR": "127.0.0.1"}
    assert sorted(request_headers(environ)) == [("Content-Type", "text/plain"), ("User-Agent", "probe/1"),
                                                ("X-Forwarded-For", "10.0.0.7")]
