"""Runtime and Leadership in a cluster, built for real from plain settings (construction connects nothing):
/health's stream lag when Redis cannot answer, and taking over the lead when Redis fails just after the
election. The lag arithmetic itself is handlers/roles.py's (tests/unit/test_roles.py). The holes merge is
handlers/holes.py's (tests/unit/test_seq_state.py).

Redis here is a unix socket path where nothing listens: every command fails at connect(), with no network.
"""


from handlers import roles
from webapp.health import stream_lag
from webapp.runtime import Runtime
from webapp.settings import Settings

UPSTREAM = {"UPSTREAM_URL": "ws://127.0.0.1:9/feed", "CLICKHOUSE_URL": "none"}


def cluster_runtime(tmp_path, **env) -> Runtime:
    """A worker of a cluster whose Redis does not answer."""
    return Runtime(Settings.from_env({**UPSTREAM, "REDIS_URL": f"unix://{tmp_path}/no-redis.sock",
                                      "DATA_DIR": str(tmp_path), **env}))


def joined(rt: Runtime) -> Runtime:
    rt.leadership.apply(roles.JOINED)
    return rt


def test_a_single_worker_is_never_behind(tmp_path):
    rt = Runtime(Settings.from_env({**UPSTREAM, "DATA_DIR": str(tmp_path)}))
    assert not rt.clustered and stream_lag(rt) == 0


def test_a_follower_whose_redis_fails_on_the_question_does_not_know(tmp_path):
    rt = joined(cluster_runtime(tmp_path))
    assert rt.bus.ok  # nothing has failed yet: the question is asked, and fails
    assert stream_lag(rt) is None


def test_the_leaders_lag_needs_no_question_to_redis(tmp_path):
    rt = cluster_runtime(tmp_path)
    for event in (roles.JOINED, roles.ELECTED, roles.CAUGHT_UP):
        rt.leadership.apply(event)
    rt.bus.assigned_seq, rt.bus.last_seq = 120, 100
    assert stream_lag(rt) == 20  # asking this Redis would fail, and give None


# -- taking over the lead ------------------------------------------------------------------------


def test_a_worker_elected_during_a_redis_outage_stands_down(tmp_path, caplog):
    rt = cluster_runtime(tmp_path)
    for event in (roles.JOINED, roles.ELECTED):
        rt.leadership.apply(event)
    rt.feeding_writer = True
    rt.leadership.take_over()  # reading the stream's tail fails; so does releasing the lease (it lapses)
    assert rt.role == roles.FOLLOWER and not rt.feeding_writer
    assert rt.bus.last_error.startswith("unavailable: ConnectionError")
    assert "standing down" in caplog.text


# -- store holes: the merge is handlers/holes.py's (tests/unit/test_seq_state.py); here the shell's part


def test_without_redis_a_worker_still_reports_its_own_holes(tmp_path, caplog):
    rt = cluster_runtime(tmp_path, CLICKHOUSE_URL="clickhouse://127.0.0.1:9/default")  # a store: a seq state
    rt.seq_state.epoch = rt.stream_epoch
    rt.seq_state.holes = [(40, 41)]
    assert rt.store_holes() == [(40, 41)]  # Redis's answer is missing, not empty: the local record stands
    assert "could not read the store's holes from Redis" in caplog.text
