"""Stream parameters: Last-Event-ID as the relay sends it (`<epoch>:<seq>`) or as a bare seq."""

import pytest

from handlers.params import ParamError, stream_params


def parse(args=None, last_event_id=None):
    return stream_params(args or {}, last_event_id, 50, 10_000)


def test_an_epoch_tagged_last_event_id_gives_both_the_seq_and_its_epoch():
    params = parse(last_event_id="67a1b2-9f3c0d1e:1042")
    assert (params.since, params.epoch) == (1042, "67a1b2-9f3c0d1e")


def test_a_bare_seq_last_event_id_is_still_a_seq_with_the_querys_epoch():
    params = parse({"epoch": "E1"}, last_event_id="1042")
    assert (params.since, params.epoch) == (1042, "E1")


def test_the_last_event_ids_epoch_wins_over_the_querys_because_it_is_newer():
    params = parse({"epoch": "OLD"}, last_event_id="NEW:7")
    assert (params.since, params.epoch) == (7, "NEW")


def test_since_in_the_query_wins_over_last_event_id():
    params = parse({"since": "5"}, last_event_id="E:9")
    assert (params.since, params.epoch) == (5, None)


@pytest.mark.parametrize("bad", ["E:x", "E:-1", ":", "a:b:c"])
def test_a_malformed_last_event_id_is_a_400_naming_it(bad):
    with pytest.raises(ParamError, match="Last-Event-ID"):
        parse(last_event_id=bad)


def test_an_overlong_epoch_in_last_event_id_is_refused():
    with pytest.raises(ParamError, match="epoch"):
        parse(last_event_id="E" * 200 + ":1")
