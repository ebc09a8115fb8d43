"""handlers.jsonx: exact JSON in, compact JSON out, hostile text refused as NotJSON."""

import json

import pytest

from handlers import jsonx
from handlers.jsonx import MAX_DEPTH, NotJSON


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_loads_reads_str_and_bytes_alike():
    text = '{"ev":"T","sym":"AAPL","p":191.2,"s":100,"ok":true,"x":null}'
    expected = {"ev": "T", "sym": "AAPL", "p": 191.2, "s": 100, "ok": True, "x": None}
    assert jsonx.loads(text) == expected
    assert jsonx.loads(text.encode()) == expected


def test_not_json_is_a_value_error():
    assert issubclass(NotJSON, ValueError)


@pytest.mark.parametrize("number", [
    2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**70, -(2**63), -(2**63) - 1, -(2**64),
    10**40, -(10**40), 1_764_124_800_120_000_000, 9_999_999_999_999_999_999,
])
def test_integers_of_any_size_come_back_exact_and_still_integers(number):
    value = jsonx.loads(f'{{"n":{number},"nested":[{number}]}}')
    assert value == {"n": number, "nested": [number]}
    assert type(value["n"]) is int


def test_a_long_digit_run_inside_a_string_does_not_change_the_value():
    text = '{"id":"123456789012345678901234567890","p":1.5}'
    assert jsonx.loads(text) == {"id": "123456789012345678901234567890", "p": 1.5}


def test_floats_with_many_digits_parse_exactly_as_the_stdlib_does():
    text = "[0.12345678901234567890123, 1.7976931348623157e308, 5e-324, 1e-400]"
    assert jsonx.loads(text) == json.loads(text)


@pytest.mark.parametrize("text", [
    "NaN", "Infinity", "-Infinity", '{"p":NaN}', "[1,Infinity]", '{"p":-Infinity}',
])
def test_nan_and_infinity_tokens_are_not_json(text):
    with pytest.raises(NotJSON):
        jsonx.loads(text)


@pytest.mark.parametrize("text", ["1e400", "-1e400", '{"p":1E999}', f'[{2**70},1e400]'])
def test_numbers_that_overflow_a_double_are_not_json(text):
    with pytest.raises(NotJSON):
        jsonx.loads(text)


@pytest.mark.parametrize("blob", [
    b'{"sym":"\xff"}',                        # invalid UTF-8
    b'{"sym":"\xed\xa0\x80"}',                # a surrogate encoded as UTF-8
    '{"ev":"T"}'.encode("utf-16-le"),         # the stdlib alone would accept these
    '{"ev":"T"}'.encode("utf-16-be"),
    '{"ev":"T"}'.encode("utf-32"),
    b'\xef\xbb\xbf{"ev":"T"}',                # a BOM
    b"1\x002\x00",
    f'{{"n":{2**70},"s":"\xff"}}'.encode("latin-1"),  # stdlib path, bad UTF-8
])
def test_bytes_that_are_not_utf8_json_are_not_json(blob):
    with pytest.raises(NotJSON):
        jsonx.loads(blob)


def test_a_bom_in_a_str_is_not_json_either():
    with pytest.raises(NotJSON):
        jsonx.loads('\ufeff{"ev":"T"}')


def test_an_escaped_lone_surrogate_is_kept_as_a_lone_surrogate():
    assert jsonx.loads('{"sym":"A\\ud800"}') == {"sym": "A\ud800"}


def test_a_str_carrying_a_lone_surrogate_is_kept():
    assert jsonx.loads('{"sym":"A\ud800"}') == {"sym": "A\ud800"}


@pytest.mark.parametrize("depth", [1, 100, 254, 255, 300, MAX_DEPTH])
def test_nesting_up_to_max_depth_is_accepted_and_serializes_again(depth):
    value = jsonx.loads(nested(depth))
    assert jsonx.dumps(value) == nested(depth).encode()


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 1000, 1024, 1025, 5000, 100_000])
def test_nesting_beyond_max_depth_is_not_json_rather_than_a_recursion_error(depth):
    with pytest.raises(NotJSON):
        jsonx.loads(nested(depth))


def test_deep_objects_count_as_nesting_too():
    deep = '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)
    with pytest.raises(NotJSON):
        jsonx.loads(deep)


def test_a_deep_document_with_a_big_integer_is_measured_not_guessed():
    ok = "[" * MAX_DEPTH + str(2**70) + "]" * MAX_DEPTH
    too_deep = "[" * (MAX_DEPTH + 1) + str(2**70) + "]" * (MAX_DEPTH + 1)
    assert jsonx.dumps(jsonx.loads(ok)) == ok.encode()
    with pytest.raises(NotJSON):
        jsonx.loads(too_deep)


def test_many_brackets_side_by_side_are_not_depth():
    wide = "[" + ",".join(["[{}]"] * 10_000) + "]"
    assert jsonx.loads(wide) == [[{}]] * 10_000


def test_an_integer_too_long_for_python_to_convert_is_not_json():
    with pytest.raises(NotJSON):
        jsonx.loads("1" * 5000)


@pytest.mark.parametrize("text", ["", " ", "{", '{"a":1', "[1,]", "{'a': 1}", "tru", "01"])
def test_malformed_text_is_not_json(text):
    with pytest.raises(NotJSON):
        jsonx.loads(text)


def test_dumps_writes_compact_utf8():
    value = {"sym": "北京", "p": 191.2, "c": [0, 12], "ok": True, "x": None}
    assert jsonx.dumps(value) == '{"sym":"北京","p":191.2,"c":[0,12],"ok":true,"x":null}'.encode()


def test_dumps_writes_big_integers_exactly():
    assert jsonx.dumps({"n": 2**70, "m": -(2**64)}) == b'{"n":1180591620717411303424,"m":-18446744073709551616}'


def test_dumps_escapes_a_lone_surrogate_so_the_output_is_valid_utf8():
    out = jsonx.dumps({"sym": "A\ud800"})
    assert out == b'{"sym":"A\\ud800"}'
    assert jsonx.loads(out) == {"sym": "A\ud800"}


def test_loads_reads_any_bytes_like_value():
    text = f'{{"ev":"T","n":{2**70}}}'.encode()
    for blob in (bytearray(text), memoryview(text)):
        assert jsonx.loads(blob) == {"ev": "T", "n": 2**70}
    with pytest.raises(NotJSON):
        jsonx.loads(bytearray(b"\xff"))
