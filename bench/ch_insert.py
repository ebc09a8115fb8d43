"""The ceiling for the store writer: a bare clickhouse-driver insert of 100k event rows, no relay involved.

Same table as the relay's (webapp/store/base.py), rows shaped like the bench's
events, inserted columnar with types_check=False exactly as the relay does:
once as one 100k-row INSERT, once as 20 INSERTs of 5,000 rows (the relay's
STORE_BATCH_ROWS). Prints one JSON line.

    python bench/ch_insert.py --port 9000
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clickhouse_driver import Client  # noqa: E402

from handlers.events import make_event  # noqa: E402
from webapp.store.base import EVENT_COLUMNS, event_columns, schema_statements  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    db = "bench_bare"
    client = Client(host="127.0.0.1", port=args.port, database="default")
    client.execute(f"DROP DATABASE IF EXISTS {db}")
    for statement in schema_statements(db):
        client.execute(statement)
    now_ms = int(time.time() * 1000)
    events = [make_event(i + 1, now_ms, f"T.S{i % 20:02d}",
                         {"ev": "T", "sym": f"S{i % 20:02d}", "n": i, "t": 123456.789, "w": now_ms + 0.5,
                          "p": 100 + (i % 997) / 100, "s": i % 500 + 1, "x": "x" * 12})
              for i in range(args.rows)]
    sql = f"INSERT INTO {db}.events ({', '.join(EVENT_COLUMNS)}) VALUES"
    out = {"rows": args.rows}

    t0 = time.perf_counter()
    columns = event_columns(events)
    client.execute(sql, columns, columnar=True, types_check=False)
    one = time.perf_counter() - t0
    out["one_insert_s"] = round(one, 3)
    out["one_insert_rows_per_s"] = round(args.rows / one)

    client.execute(f"TRUNCATE TABLE {db}.events")
    t0 = time.perf_counter()
    for i in range(0, args.rows, 5000):
        client.execute(sql, event_columns(events[i:i + 5000]), columnar=True, types_check=False)
    batched = time.perf_counter() - t0
    out["batches_of_5000_s"] = round(batched, 3)
    out["batches_of_5000_rows_per_s"] = round(args.rows / batched)
    out["count_check"] = client.execute(f"SELECT count() FROM {db}.events")[0][0]
    client.execute(f"DROP DATABASE {db}")
    client.disconnect()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
