"""Fill or bind the %(name)s placeholders of SQL with values that can never break out of their place.

Placeholders follow the driver's pyformat convention: `%(name)s` is a value,
`%%` is a literal `%`, names are `[A-Za-z_][A-Za-z0-9_]*`. Unlike the driver,
a placeholder is recognised only in SQL code (handlers/sql_lexer.py says where
code ends): one inside a string literal, a quoted name or a comment is refused
rather than filled, because filling it there is exactly how a value breaks out
(`'%(x)s'`, `/* %(x)s */`). Inside those, `%%` still reads as `%` and a lone
`%` is kept (`LIKE 'AAP%'` works); in code a lone `%` must be written `%%`
(the driver's rule).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from handlers.sql_lexer import COMMENT, DOLLAR, HEREDOC, NAME_RE, PERCENT, QUOTED, TEXT_KINDS, SqlError, Token, tokenize


def _check_params(params: Any) -> Mapping[str, Any]:
    if not isinstance(params, Mapping):
        raise SqlError(f"'params' must be a JSON object of name -> value, got {type(params).__name__}")
    bad = [name for name in params if not isinstance(name, str) or not NAME_RE.match(name)]
    if bad:
        raise SqlError(f"invalid parameter name {str(bad[0])[:40]!r}: names are letters, digits and _, not starting with a digit")
    return params


def _placeholder_name(token: Token) -> str | None:
    """The name in a `%(name)s` token; None for `%%`; SqlError for a lone `%`."""
    if token.text == "%%":
        return None
    if token.text == "%":
        raise SqlError(f"a % at offset {token.start} is not a placeholder: placeholders are %(name)s "
                       "(name: letters, digits and _), and a literal % is written %%")
    return token.text[2:-2]


_TEXT_PERCENT_RE = re.compile(r"%%|%\([A-Za-z_][A-Za-z0-9_]*\)s")


def _text_without_placeholders(token: Token) -> str:
    """A string, name or comment token with `%%` read as `%`; a placeholder inside it is refused."""
    def replace(match: re.Match[str]) -> str:
        if match.group() == "%%":
            return "%"
        where = f"placeholder {match.group()} at offset {token.start + match.start()}"
        if token.kind == COMMENT:
            raise SqlError(f"{where} is inside a comment: remove it, or write %% for a literal %")
        raise SqlError(f"{where} is inside a {'quoted name' if token.kind == QUOTED else 'string literal'}, "
                       "where it would not be a value: put it outside the quotes, e.g. LIKE concat(%(x)s, '%%')")
    return _TEXT_PERCENT_RE.sub(replace, token.text)


def placeholder_names(sql: str) -> frozenset[str]:
    """The names of the `%(name)s` placeholders in SQL code, e.g. to pass a query only the params it uses
    or to check ENRICH_SQL at start-up; malformed SQL or placeholders raise SqlError as render_params would."""
    names = set()
    for token in tokenize(sql):
        if token.kind == PERCENT:
            name = _placeholder_name(token)
            if name is not None:
                names.add(name)
        elif token.kind in TEXT_KINDS:
            _text_without_placeholders(token)
    return frozenset(names)


def _substitute(tokens: list[Token], params: Mapping[str, Any],
                fill: Callable[[str, Token, list[str]], None]) -> str:
    """Shared walk of render_params and to_server_params: `fill(name, token, out)` appends what replaces a placeholder."""
    out: list[str] = []
    used: set[str] = set()
    for token in tokens:
        if token.kind == PERCENT:
            name = _placeholder_name(token)
            if name is None:
                out.append("%")
                continue
            if name not in params:
                raise SqlError(f"placeholder %({name})s has no value in 'params'")
            used.add(name)
            fill(name, token, out)
        elif token.kind in TEXT_KINDS:
            out.append(_text_without_placeholders(token))
        else:
            out.append(token.text)
    unused = sorted(set(params) - used)
    if unused:
        raise SqlError(f"parameter {unused[0]!r} is not used by the SQL (placeholders are %(name)s)")
    return "".join(out)


# Where a literal meets one of these it gets a space, so it cannot merge into
# its neighbour: `x'..'` (a hex string), `'a''b'` (one string), `5.5`, `5abc`.
_GLUE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$.'\"`")
MAX_PARAM_DEPTH = 32
"""Deepest list nesting a parameter may have."""


def render_params(sql: str, params: Mapping[str, Any]) -> str:
    """Fill each `%(name)s` in code with `params[name]` as a ClickHouse literal; `%%` gives `%`.

    Literals (the same text for ClickHouse 18.16 and current releases):
    None → NULL; bool → 1/0 (18.16 has no true/false); int → digits, negative
    ones in parentheses (`x -%(n)s` must not become a `--` comment); ClickHouse
    reads integers outside [-2^63, 2^64) as Float64; float → shortest repr,
    finite only (a subnormal as an exact product of two normal floats, since
    18.16 reads no subnormal literal); str → '…' with backslash, quote and control characters escaped,
    all other text as UTF-8 (lone surrogates refused); datetime →
    'YYYY-MM-DD hh:mm:ss[.ffffff]' (aware ones converted to UTC first); date →
    'YYYY-MM-DD'; list/tuple → [a, b]. Anything else, a placeholder without a
    value, a value without a placeholder, a bad name, `$` in code (heredocs
    could end inside a value) → SqlError.
    """
    params = _check_params(params)
    tokens = list(tokenize(sql))
    for token in tokens:
        if token.kind in (DOLLAR, HEREDOC):
            # an unclosed `$tag` could find its closing tag inside a value
            raise SqlError(f"'$' at offset {token.start}: heredoc strings and names starting with $ "
                           "are not supported in SQL with params")

    def fill(name: str, token: Token, out: list[str]) -> None:
        before = out[-1][-1:] if out else ""
        after = sql[token.start + len(token.text):token.start + len(token.text) + 1]
        out.append((" " if before and before in _GLUE else "") + sql_literal(params[name])
                   + (" " if after and after in _GLUE else ""))

    return _substitute(tokens, params, fill)


def sql_literal(value: Any, depth: int = 0) -> str:
    """One value as a ClickHouse literal (see render_params)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return f"({value})" if value < 0 else str(value)
    if isinstance(value, float):
        text = _float_text(value)
        if value != 0 and abs(value) < _MIN_NORMAL:
            # 18.16 reads neither a subnormal literal nor toFloat64('5e-324') (it gives 0);
            # y * 2^-1022 with y = value * 2^1022 is exact on both
            text = f"{value * 2.0**1022!r} * {_MIN_NORMAL!r}"
            return f"({text})"
        return f"({text})" if math.copysign(1.0, value) < 0 else text
    if isinstance(value, str):
        return "'" + _escape(value) + "'"
    if isinstance(value, dt.datetime):
        return "'" + _datetime_text(value) + "'"
    if isinstance(value, dt.date):
        return "'" + value.isoformat() + "'"
    if isinstance(value, (list, tuple)):
        if depth >= MAX_PARAM_DEPTH:
            raise SqlError(f"a parameter is nested deeper than {MAX_PARAM_DEPTH} lists")
        return "[" + ", ".join(sql_literal(item, depth + 1) for item in value) + "]"
    raise SqlError(f"unsupported parameter type {type(value).__name__}: use null, a boolean, a number, "
                   "a string or a list of them")


_MIN_NORMAL = 2.2250738585072014e-308
_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_ESCAPE_RE = re.compile(r"[\\'\x00-\x1f\x7f]")


def _escape(text: str) -> str:
    """Body of a ClickHouse string literal (and of an escaped-format parameter value)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SqlError("a string parameter holds a lone surrogate (\\ud800-\\udfff), which is not text") from None
    return _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def _float_text(value: float) -> str:
    if not math.isfinite(value):
        raise SqlError(f"a parameter is {value}: only finite numbers can be sent")
    return repr(value)


def _datetime_text(value: dt.datetime) -> str:
    if value.tzinfo is not None and value.utcoffset() is not None:
        value = value.astimezone(dt.timezone.utc)
    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    return text + (f".{value.microsecond:06d}" if value.microsecond else "")


# -- server-side parameters (chDB and ClickHouse >= 19) -------------------------


def to_server_params(sql: str, params: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """Turn each `%(name)s` into a `{name:Type}` query parameter and return (sql, values as text).

    The engine parses every value itself, so no value is ever part of the SQL.
    For chDB (`session.query(sql, fmt, params=values)`) and servers since 19.x;
    ClickHouse 18.16 has no query parameters — use render_params there.
    Types: bool → Bool; int → Int64, else the smallest of UInt64, Int128,
    UInt128, Int256, UInt256 that holds it; float → Float64 (finite); str →
    String; None → Nullable(Nothing); date → Date; datetime → DateTime, or
    DateTime64(6) with microseconds, in UTC ('UTC' type) when aware; list/tuple
    → Array(T) of the elements' common type (ints and floats → Float64, None →
    Nullable(T), empty → Array(Nothing)). Mixed lists → SqlError. The values
    are in ClickHouse's escaped text format, which is what chDB passes on.
    """
    params = _check_params(params)
    values: dict[str, str] = {}

    def fill(name: str, token: Token, out: list[str]) -> None:
        type_name = _param_type([params[name]])
        values[name] = _param_text(params[name], quoted=False)
        out.append("{" + name + ":" + type_name + "}")

    return _substitute(list(tokenize(sql)), params, fill), values


_INT_TYPES = (
    ("Int64", -(2**63), 2**63 - 1), ("UInt64", 0, 2**64 - 1), ("Int128", -(2**127), 2**127 - 1),
    ("UInt128", 0, 2**128 - 1), ("Int256", -(2**255), 2**255 - 1), ("UInt256", 0, 2**256 - 1),
)


def _param_type(values: Sequence[Any], depth: int = 0) -> str:
    """The ClickHouse type that holds every value of `values` (siblings in one array, or one value)."""
    present = [v for v in values if v is not None]
    nullable = len(present) < len(values)
    if not present:
        return "Nullable(Nothing)" if nullable else "Nothing"
    kinds = {_kind(v) for v in present}
    if kinds == {"bool"}:
        base = "Bool"
    elif kinds == {"int"}:
        lo, hi = min(present), max(present)
        base = next((name for name, low, high in _INT_TYPES if low <= lo and hi <= high), "")
        if not base:
            raise SqlError("an integer parameter is outside the 256-bit range")
    elif kinds <= {"int", "float"}:
        for v in present:
            if isinstance(v, float):
                _float_text(v)
        base = "Float64"
    elif kinds == {"str"}:
        base = "String"
    elif kinds == {"date"}:
        base = "Date"
    elif kinds == {"datetime"}:
        aware = {v.tzinfo is not None and v.utcoffset() is not None for v in present}
        if len(aware) > 1:
            raise SqlError("a list parameter mixes datetimes with and without a time zone")
        zone = ", 'UTC'" if aware == {True} else ""
        if any(v.microsecond for v in present):
            base = f"DateTime64(6{zone})"
        else:
            base = f"DateTime({zone[2:]})" if zone else "DateTime"
    elif kinds == {"list"}:
        if depth >= MAX_PARAM_DEPTH:
            raise SqlError(f"a parameter is nested deeper than {MAX_PARAM_DEPTH} lists")
        if nullable:
            raise SqlError("a list parameter holds null next to lists (ClickHouse has no nullable arrays)")
        return "Array(" + _param_type([item for v in present for item in v], depth + 1) + ")"
    elif kinds - _KINDS:
        odd = next(v for v in present if _kind(v) not in _KINDS)
        raise SqlError(f"unsupported parameter type {type(odd).__name__}: use null, a boolean, a number, "
                       "a string or a list of them")
    else:
        raise SqlError("a list parameter mixes types: " + ", ".join(sorted(kinds)))
    return f"Nullable({base})" if nullable else base


_KINDS = frozenset({"bool", "int", "float", "str", "date", "datetime", "list"})


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dt.datetime):
        return "datetime"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def _param_text(value: Any, quoted: bool) -> str:
    """A value in ClickHouse's escaped text format; inside arrays (`quoted`), strings and dates are quoted."""
    if value is None:
        return "NULL" if quoted else "\\N"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param_text(item, quoted=True) for item in value) + "]"
    if isinstance(value, str):
        text = _escape(value)
    elif isinstance(value, dt.datetime):
        text = _datetime_text(value)
    else:
        text = value.isoformat()
    return "'" + text + "'" if quoted else text
