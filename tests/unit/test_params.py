"""Stream parameters of /ws and /sse, checked as data (contract §3, §12): delivery control, and Last-Event-ID
as the relay sends it (`<epoch>:<seq>`) or as a bare seq."""

import pytest

from handlers.params import ParamError, stream_params


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


def test_since_in_the_query_wins_over_last_event_id():
    params = parse_id({"since": "5"}, last_event_id="E:9")
    assert (params.since, params.epoch) == (5, None)


@pytest.mark.parametrize("bad", ["E:x", "E:-1", ":", "a:b:c"])
def test_a_malformed_last_event_id_is_a_400_naming_it(bad):
    with pytest.raises(ParamError, match="Last-Event-ID"):
        parse_id(last_event_id=bad)


def test_an_overlong_epoch_in_last_event_id_is_refused():
    with pytest.raises(ParamError, match="epoch"):
        parse_id(last_event_id="E" * 200 + ":1")
