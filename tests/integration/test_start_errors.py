"""A relay that cannot start says why once: a bad setting's message is not printed a second time by gunicorn's
worker_exit hook (it imported the app module again, which read the settings again)."""

import pytest
from support.relay import RelayError


@pytest.mark.parametrize(("name", "value"), [("HUB_FLUSH_INTERVAL_MS", "abc"), ("LEADER_LEASE_MS", "12")])
def test_a_bad_setting_prints_its_error_once(launch_relay, name, value):
    with pytest.raises(RelayError) as failed:
        launch_relay("ws://127.0.0.1:9/feed", {name: value})
    log = str(failed.value)
    assert log.count("relayhouse: invalid configuration:") == 1, log
    assert log.count(f"- {name}:") == 1, log
    assert "Traceback" not in log
