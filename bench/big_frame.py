"""The largest upstream frame the default UPSTREAM_MAX_FRAME_BYTES (4 MiB) admits: 2,097,151 one-digit
elements. How long its parse and status split take in one piece, before the ingest numbers it in
INGEST_CHUNK parts with a turn of the loop between them (a clustered leader must renew its lease,
LEADER_LEASE_MS >= 1500, within that time).

    .venv/bin/python bench/big_frame.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handlers.frames import parse_frame  # noqa: E402
from handlers.polygon import split_statuses  # noqa: E402

MAX_BYTES = 4 * 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = (MAX_BYTES - 1) // 2
    frame = ("[" + ",".join(["1"] * n) + "]").encode()
    parses, splits = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        parsed = parse_frame(frame, binary=False, max_bytes=MAX_BYTES)
        parsed_at = time.perf_counter()
        market, _ = split_statuses(parsed.elements)
        splits.append(time.perf_counter() - parsed_at)
        parses.append(parsed_at - start)
        assert len(market) == n
    print(f"{n} elements, {len(frame)} bytes: parse {min(parses):.3f}-{max(parses):.3f} s, "
          f"split_statuses {min(splits):.3f}-{max(splits):.3f} s ({args.rounds} rounds)")


if __name__ == "__main__":
    main()
