"""Contract §12's mixed audience in interleaved rounds: the 900 live clients alone, then with 100 at
max_hz=2 and 10 slow readers (on_slow=conflate), then 1010 all live, round after round
(docs/benchmarks.md, "A mixed audience").

    .venv/bin/python bench/mixed_rounds.py [--rounds 3] [--labels live900,mixed,live1010] [--monitor] [--probe]
        [--rate 1000] [--pyspy]

--monitor runs the relay with gevent's monitor thread (GEVENT_MAX_BLOCKING_TIME 0.1 s): any
greenlet that holds the event loop longer has its stack printed to the run's gunicorn.log.
--rate: events/s over the 50 topics (1000 is the contract's; at 1000 the worker sits at the
flush-share cap in every audience, so CPU is compared at a rate where it does not, e.g. 100).
--pyspy records the worker with py-spy for each run (bench/pyspy_top.py summarizes `pyspy.txt`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs  # noqa: E402
from latency_probe import summarize  # noqa: E402
from run import MIXED_MIN_S, Bench  # noqa: E402

AUDIENCES = {"live900": (0, 0, 900), "mixed": (100, 10, 900), "live1010": (0, 0, 1010), "rated1000": (1000, 0, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--labels", default="live900,mixed,live1010")
    parser.add_argument("--duration", type=float, default=MIXED_MIN_S)
    parser.add_argument("--monitor", action="store_true")
    parser.add_argument("--probe", action="store_true", help="the relay under bench/latency_probe.conf.py")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s over the 50 topics")
    parser.add_argument("--pyspy", action="store_true", help="py-spy the worker during each run")
    parser.add_argument("--variants", default="", help="relay environments to alternate within a round, "
                        "';'-separated, each K=V,K=V (e.g. 'GC_FREEZE=0;GC_FREEZE=1')")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = procs.BENCH / "results" / f"{stamp}-mixed"
    bench = Bench(argparse.Namespace(out=str(out), quick=False, only="mixed", systems="relayhouse",
                                     duration=args.duration))
    if args.monitor:
        bench.relay_env = {"GEVENT_MONITOR_THREAD_ENABLE": "true", "GEVENT_MAX_BLOCKING_TIME": "0.1"}
    bench.pyspy = args.pyspy
    if args.probe:
        bench.relay_config = str(procs.BENCH / "latency_probe.conf.py")
    variants = [dict(kv.split("=", 1) for kv in v.split(",") if kv) for v in args.variants.split(";")]
    base_env = dict(bench.relay_env)
    for _ in range(args.rounds):
        for label, variant in [(label, v) for label in args.labels.split(",") for v in variants]:
            rated, slow, live = AUDIENCES[label]
            bench.relay_env = {**base_env, **variant}
            if args.probe:
                probe_dir = out / f"probe-{bench.n + 1:03d}"
                probe_dir.mkdir(parents=True, exist_ok=True)
                bench.relay_env["PROBE_DIR"] = str(probe_dir)
            rec = bench.mixed_run(label, live, rated, slow, args.rate, 50, args.duration)
            if args.probe:
                files = sorted(probe_dir.glob("latency-*.json"))
                if files:
                    rec["probe"] = summarize(json.loads(files[0].read_text()))
                    print(label, variant, json.dumps({k: rec["probe"].get(k) for k in ("flush", "publish_to_flush", "gc",
                                                                               "loop_lag", "batch_sizes", "releases")}),
                          flush=True)
    bench.save()
    print(f"results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
