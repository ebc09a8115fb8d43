"""Stream parameters of /ws and /sse, checked as data (contract §3, §12): delivery control, and Last-Event-ID
as the relay sends it (`<epoch>:<seq>`) or as a bare seq."""

import pytest

from handlers.params import ParamError, bool_param, int_param, stream_params


def parse(**args):
    return stream_params(args, None, 50, 1000)


def test_delivery_defaults_to_every_event_and_closing_slow_clients():
    p = parse()
    assert (p.max_hz, p.on_slow, p.snapshot_latest, p.snapshot) == (None, "close", False, 50)


def test_max_hz_on_slow_and_snapshot_latest_are_read():
    p = parse(max_hz="2.5", on_slow="conflate", snapshot="latest")
    assert (p.max_hz, p.on_slow, p.snapshot_latest, p.snapshot) == (2.5, "conflate", True, 1000)


@pytest.mark.parametrize("args, named", [
    ({"max_hz": "0"}, "max_hz"), ({"max_hz": "-1"}, "max_hz"), ({"max_hz": "abc"}, "max_hz"),
    ({"max_hz": "1e9"}, "max_hz"), ({"on_slow": "maybe"}, "on_slow"), ({"snapshot": "newest"}, "snapshot"),
])
def test_bad_delivery_values_name_their_parameter(args, named):
    with pytest.raises(ParamError, match=named):
        parse(**args)


def parse_id(args=None, last_event_id=None):
    return stream_params(args or {}, last_event_id, 50, 10_000)


def test_an_epoch_tagged_last_event_id_gives_both_the_seq_and_its_epoch():
    params = parse_id(last_event_id="67a1b2-9f3c0d1e:1042")
    assert (params.since, params.epoch) == (1042, "67a1b2-9f3c0d1e")


def test_a_bare_seq_last_event_id_is_still_a_seq_with_the_querys_epoch():
    params = parse_id({"epoch": "E1"}, last_event_id="1042")
    assert (params.since, params.epoch) == (1042, "E1")


def test_the_last_event_ids_epoch_wins_over_the_querys_because_it_is_newer():
    params = parse_id({"epoch": "OLD"}, last_event_id="NEW:7")
    assert (params.since, params.epoch) == (7, "NEW")


def test_last_event_id_wins_over_since_in_the_query_because_it_is_newer():
    """An EventSource reconnects to the URL it was given, `since` included, with the id of its last event."""
    params = parse_id({"since": "5", "epoch": "OLD"}, last_event_id="E:9")
    assert (params.since, params.epoch) == (9, "E")
    params = parse_id({"since": "5", "epoch": "E1"}, last_event_id="9")  # a bare seq: the query's epoch
    assert (params.since, params.epoch) == (9, "E1")
    assert parse_id({"since": "5"}, last_event_id="  ").since == 5  # an empty header is no header
    with pytest.raises(ParamError, match="since"):
        parse_id({"since": "x"}, last_event_id="E:9")  # the query is still checked


@pytest.mark.parametrize("bad", ["E:x", "E:-1", ":", "a:b:c"])
def test_a_malformed_last_event_id_is_a_400_naming_it(bad):
    with pytest.raises(ParamError, match="Last-Event-ID"):
        parse_id(last_event_id=bad)


def test_an_overlong_epoch_in_last_event_id_is_refused():
    with pytest.raises(ParamError, match="epoch"):
        parse_id(last_event_id="E" * 200 + ":1")


# -- the text of a number or a flag: only the documented forms (contract §10) --

@pytest.mark.parametrize("raw, value", [("5", 5), ("-5", -5), ("0", 0), ("007", 7), ("1000", 1000)])
def test_an_integer_is_ascii_digits_with_an_optional_minus(raw, value):
    assert int_param({"limit": raw}, "limit", None, -10, 1000) == value


@pytest.mark.parametrize("raw", ["1_0", "\u0663", "  5", "5 ", "+5", "5\n", "0x10", "1e3", "1.0", "--5", "-", "\uff15"])
def test_what_pythons_int_takes_beyond_that_is_refused_naming_the_parameter(raw):
    with pytest.raises(ParamError, match=r"'limit' must be an integer, got "):
        int_param({"limit": raw}, "limit", None, -10, 1000)


def test_an_absent_or_empty_integer_is_the_default_and_a_huge_one_is_out_of_range():
    assert int_param({}, "limit", 50, 1, 1000) == 50
    assert int_param({"limit": ""}, "limit", 50, 1, 1000) == 50
    with pytest.raises(ParamError, match=r"'limit' must be in 1\.\.1000, got 9999"):
        int_param({"limit": "9" * 5000}, "limit", 50, 1, 1000)


def test_stream_integers_are_checked_the_same_way():
    for args in ({"since": "1_0"}, {"snapshot": "\u0663"}, {"since": " 1"}):
        with pytest.raises(ParamError, match=next(iter(args))):
            parse(**args)
    with pytest.raises(ParamError, match="Last-Event-ID"):
        parse_id(last_event_id="E:1_0")


@pytest.mark.parametrize("raw, rate", [("2", 2.0), ("0.5", 0.5), (".5", 0.5), ("5.", 5.0), ("1e2", 100.0),
                                       ("1E-1", 0.1), ("1000", 1000.0)])
def test_max_hz_is_a_decimal_number(raw, rate):
    assert parse(max_hz=raw).max_hz == rate


@pytest.mark.parametrize("raw", ["1_0", " 2", "2 ", "+2", "\u0663", "inf", "nan", "0x1p3", ".", "e5", "1000.0001",
                                 "0", "-1", "1" * 40])
def test_other_max_hz_text_is_refused_quoting_the_value_as_given(raw):
    with pytest.raises(ParamError, match="'max_hz'") as refused:
        parse(max_hz=raw)
    assert str(refused.value).endswith(f"got {raw[:32]!r}")


@pytest.mark.parametrize("raw, value", [(None, False), ("", False), ("0", False), ("false", False), ("no", False),
                                        ("1", True), ("true", True), ("yes", True)])
def test_a_flag_takes_its_documented_spellings(raw, value):
    assert bool_param({} if raw is None else {"strict": raw}, "strict") is value


@pytest.mark.parametrize("raw", ["abc", "2", "on", "TRUE", " 1", "\u0661", "%ff"])
def test_any_other_flag_value_is_refused_naming_it(raw):
    with pytest.raises(ParamError, match=r"'strict' must be 1, true, yes, 0, false or no"):
        bool_param({"strict": raw}, "strict")


def test_a_last_event_id_is_a_seq_or_one_epoch_and_a_seq():
    """':51605' was read as a bare seq and 'E:51605:1' as seq 1 of an epoch 'E:51605' (an outside audit)."""
    for bad in (":51605", "E:51605:1", "::1", "E:"):
        with pytest.raises(ParamError, match="Last-Event-ID"):
            parse_id(last_event_id=bad)
    assert (parse_id(last_event_id="51605").since, parse_id(last_event_id="51605").epoch) == (51605, None)
    assert (parse_id(last_event_id="E-1:7").since, parse_id(last_event_id="E-1:7").epoch) == (7, "E-1")
