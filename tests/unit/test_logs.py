"""Lines that could repeat per frame are written once per interval per kind, with a count of those held."""

from webapp.logs import Throttle, held_note


def test_one_line_per_interval_per_kind_and_the_count_of_those_held_back():
    now = [0.0]
    said = Throttle(10.0, clock=lambda: now[0])
    assert said.allow("oversize") == 0
    assert [said.allow("oversize") for _ in range(5)] == [None] * 5
    assert said.allow("queue") == 0  # another kind has its own interval
    now[0] = 10.0
    assert said.allow("oversize") == 5
    assert said.allow("oversize") is None


def test_the_note_names_what_was_held_back_only_when_something_was():
    assert held_note(0) == ""
    assert held_note(3) == " (3 more like it since the last line)"


def test_printable_escapes_what_could_end_a_line_or_drive_a_terminal():
    from webapp.logs import printable

    assert printable("/x\r\n2026 ERROR forged\x1b[2K") == "/x\\r\\n2026 ERROR forged\\x1b[2K"
    assert printable("/ü") == "/\\xfc" and printable("a" * 5, limit=3) == "aaa..."


def test_redact_hides_a_whole_token_however_it_is_spelled():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gunicorn_conf", Path(__file__).resolve().parents[2] / "gunicorn.conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    assert conf.redact('"GET /s?token=pre;SECRET-TAIL HTTP/1.1" 200') == '"GET /s?token=*** HTTP/1.1" 200'
    assert conf.redact('"GET /s?token=a"QUOTED-TAIL HTTP/1.1"') == '"GET /s?token=*** HTTP/1.1"'
    assert conf.redact('"http://app/?token=p;SECRET" "curl/8"') == '"http://app/?token=***" "curl/8"'
    assert conf.redact('"GET /x?a=1&token=abc&b=2 HTTP/1.1"') == '"GET /x?a=1&token=***&b=2 HTTP/1.1"'
    # a token mistyped after a second `?` (Flask reads it as part of `limit`): hidden all the same
    assert conf.redact('"GET /h?limit=1?token=SECRET HTTP/1.1"') == '"GET /h?limit=1?token=*** HTTP/1.1"'
    assert conf.redact('"GET /h?token=a?SECRET HTTP/1.1"') == '"GET /h?token=*** HTTP/1.1"'
    assert conf.redact('auth="Bearer ab"c;d" x') == 'auth="Bearer ***" x'
