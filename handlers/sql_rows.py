"""Result rows from the drivers as JSON values that mean the same to any JSON reader."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from collections.abc import Sequence
from typing import Any

MAX_SAFE_INT = 2**53
_FRACTION_RE = re.compile(r"DateTime64\((\d+)")


def json_safe_rows(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows from clickhouse-driver (`with_column_types=True`) as JSON-ready lists; see json_safe_value.

    A DateTime64(P) column's values keep exactly P fraction digits, as
    ClickHouse prints them.
    """
    digits = [_fraction_digits(type_name) for _, type_name in columns]
    return [[json_safe_value(value, d) for value, d in zip(row, digits, strict=True)] for row in rows]


def _fraction_digits(type_name: str) -> int | None:
    match = _FRACTION_RE.search(type_name)
    return int(match.group(1)) if match else None


def json_safe_value(value: Any, fraction_digits: int | None = None) -> Any:
    """One driver value as a JSON-ready value that means the same to any JSON reader.

    Integers beyond ±2^53 → decimal strings (a double cannot hold them).
    NaN and ±inf → null. Decimal → a number when its shortest float text is the
    same decimal value (1.5, 0.1), else its exact text as a string
    ("12345678901234567890.123"), the integer rule applied to decimals.
    datetime → "YYYY-MM-DD hh:mm:ss" in its own time zone, as ClickHouse shows
    it (fraction: `fraction_digits` digits, else 6 when there are
    microseconds); date → "YYYY-MM-DD"; bytes → UTF-8 text (bad bytes
    replaced); tuples and lists → lists; dicts (Map) → objects with text keys;
    anything else (UUID, IPv4Address, IPv6Address, …) → str(value).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return _decimal_value(value)
    if isinstance(value, dt.datetime):
        return _datetime_json(value, fraction_digits)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [json_safe_value(item, fraction_digits) for item in value]
    if isinstance(value, dict):
        return {_key_text(k, fraction_digits): json_safe_value(v, fraction_digits) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _decimal_value(value: decimal.Decimal) -> float | str | None:
    if not value.is_finite():
        return None
    as_float = float(value)
    if math.isfinite(as_float) and decimal.Decimal(repr(as_float)) == value:
        return as_float
    return format(value, "f")


def _datetime_json(value: dt.datetime, fraction_digits: int | None) -> str:
    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    if fraction_digits is None:
        return text + (f".{value.microsecond:06d}" if value.microsecond else "")
    if fraction_digits <= 0:
        return text
    return text + "." + f"{value.microsecond:06d}".ljust(fraction_digits, "0")[:fraction_digits]


def _key_text(key: Any, fraction_digits: int | None) -> str:
    if isinstance(key, str):
        return key
    safe = json_safe_value(key, fraction_digits)
    return "null" if safe is None else str(safe).lower() if isinstance(safe, bool) else str(safe)
