"""Stream parameters of /ws and /sse, checked as data (contract §3, §12)."""

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
