"""gunicorn settings for tests: the project's gunicorn.conf.py, plus a way to stall a worker's event loop.

The worker also holds an inheritable pipe (as a C library may open one), which the HEALTH_BIND process
must not keep. A file `block-loop-<seconds>` appearing in DATA_DIR makes the worker's gevent loop block for that long
(the original time.sleep, called on the loop: nothing else in the worker runs meanwhile, as in a stuck
worker). The file is removed when the block starts.
"""

import os
import runpy
from pathlib import Path

_project = runpy.run_path(str(Path(__file__).resolve().parents[2] / "gunicorn.conf.py"))
globals().update({name: value for name, value in _project.items() if not name.startswith("__")})
_project_post_worker_init = _project["post_worker_init"]
MARKER_PREFIX = "block-loop-"


def post_worker_init(worker):  # noqa: F811  (wraps the project's)
    # a descriptor without close-on-exec, as some C libraries open them: the health process must not keep it
    worker.test_leaked_pipe = os.pipe()
    for fd in worker.test_leaked_pipe:
        os.set_inheritable(fd, True)
    _project_post_worker_init(worker)
    import gevent
    from gevent import monkey

    blocking_sleep = monkey.get_original("time", "sleep")
    data_dir = Path(os.environ["DATA_DIR"])

    def watch():
        while True:
            for marker in data_dir.glob(MARKER_PREFIX + "*"):
                seconds = float(marker.name[len(MARKER_PREFIX):])
                marker.unlink()
                worker.log.warning("test: blocking the event loop for %.1f s", seconds)
                blocking_sleep(seconds)
            gevent.sleep(0.05)

    gevent.spawn(watch)
