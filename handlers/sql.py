"""ClickHouse SQL as data: fill or bind %(name)s placeholders, vet /query text, make result rows JSON-safe.

Everything here reads SQL the way ClickHouse's own lexer does — ClickHouse
18.16 (Debian's server) and current releases (chDB) alike — so a value can
never change where a string, a comment or a statement ends:

- `'...'` strings, `"..."` and `` `...` `` names: a backslash escapes the next
  character and a doubled quote stands for itself;
- comments: `--`, `//`, `# ` and `#!` to the end of the line, `/* ... */`.
  A `/*` inside a block comment is refused (SqlError): 18.16 ends the comment
  at the first `*/`, current releases nest, so the two would disagree;
- `$tag$ ... $tag$` heredoc strings (current releases only).

Placeholders follow the driver's pyformat convention: `%(name)s` is a value,
`%%` is a literal `%`, names are `[A-Za-z_][A-Za-z0-9_]*`. Unlike the driver,
a placeholder is recognised only in SQL code: one inside a string literal, a
quoted name or a comment is refused rather than filled, because filling it
there is exactly how a value breaks out (`'%(x)s'`, `/* %(x)s */`). Inside
those, `%%` still reads as `%` and a lone `%` is kept (`LIKE 'AAP%'` works);
in code a lone `%` must be written `%%` (the driver's rule).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class SqlError(ValueError):
    """SQL or parameters the relay will not send (→ HTTP 400); the message is written for the client."""


# -- lexing -------------------------------------------------------------------

SPACE, WORD, NUMBER, DOLLAR, STRING, QUOTED, HEREDOC, COMMENT, PERCENT, PUNCT = (
    "space", "word", "number", "dollar", "string", "quoted", "heredoc", "comment", "percent", "punct",
)
_TEXT_KINDS = frozenset({STRING, QUOTED, HEREDOC, COMMENT})
"""Tokens whose content is text, not SQL: no placeholder is filled inside them."""


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    start: int


# ClickHouse's whitespace is ASCII only; its word characters are [A-Za-z0-9_],
# and a name may continue with `$`.
_SPACE_RE = re.compile(r"[ \t\n\r\f\v]+")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
# As ClickHouse reads a number: the sign after an exponent is part of it (`1e-5`),
# so `1e--5` is not read as the start of a `--` comment.
_NUMBER_RE = re.compile(r"""
    (?: 0[xX][0-9a-fA-F_]+ (?: \.[0-9a-fA-F_]* )? (?: [pP][+-]?[0-9_]* )?
      | [0-9][0-9_]* (?: \.[0-9_]* )? (?: [eE][+-]?[0-9_]* )? )
    [A-Za-z0-9_]*
""", re.VERBOSE)
_DOLLAR_WORD_RE = re.compile(r"\$[A-Za-z0-9_$]*")
_QUOTED_RE = {
    q: re.compile(q + r"(?:[^" + q + r"\\]++|\\.|" + q + q + r")*+" + q, re.DOTALL) for q in ("'", '"', "`")
}
# Only a well-formed placeholder is one token: anything else after `%` is SQL,
# lexed as ClickHouse lexes it (a quote there opens a string).
_PERCENT_RE = re.compile(r"%(?:%|\(([A-Za-z_][A-Za-z0-9_]*)\)s)?")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_QUOTE_NAMES = {"'": "string literal", '"': 'quoted name ("...")', "`": "quoted name (`...`)"}


def _tokens(sql: str) -> Iterator[Token]:
    """Split SQL into tokens; unterminated strings and comments, and nested block comments, raise SqlError."""
    if not isinstance(sql, str):
        raise SqlError("the SQL must be a string")
    pos, end = 0, len(sql)
    while pos < end:
        ch = sql[pos]
        nxt = sql[pos + 1] if pos + 1 < end else ""
        if ch in " \t\n\r\f\v":
            kind, stop = SPACE, _SPACE_RE.match(sql, pos).end()
        elif ch in _QUOTED_RE:
            match = _QUOTED_RE[ch].match(sql, pos)
            if match is None:
                raise SqlError(f"unterminated {_QUOTE_NAMES[ch]} at offset {pos}")
            kind, stop = (STRING if ch == "'" else QUOTED), match.end()
        elif (ch == "-" and nxt == "-") or (ch == "/" and nxt == "/") or (ch == "#" and nxt in (" ", "!")):
            newline = sql.find("\n", pos)
            kind, stop = COMMENT, (end if newline < 0 else newline)
        elif ch == "/" and nxt == "*":
            close = sql.find("*/", pos + 2)
            if close < 0:
                raise SqlError(f"unterminated /* comment at offset {pos}")
            inner = sql.find("/*", pos + 2, close)
            if inner >= 0:
                raise SqlError(f"nested /* comment at offset {inner}: ClickHouse versions read these differently")
            kind, stop = COMMENT, close + 2
        elif ch == "$":
            kind, stop = _dollar_token(sql, pos)
        elif ch == "%":
            kind, stop = PERCENT, _PERCENT_RE.match(sql, pos).end()
        elif ch.isascii() and (ch.isalpha() or ch == "_"):
            kind, stop = WORD, _WORD_RE.match(sql, pos).end()
        elif ch.isascii() and ch.isdigit():
            kind, stop = NUMBER, _NUMBER_RE.match(sql, pos).end()
        else:
            kind, stop = PUNCT, pos + 1
        yield Token(kind, sql[pos:stop], pos)
        pos = stop


def _dollar_token(sql: str, pos: int) -> tuple[str, int]:
    """A token starting with `$`: a heredoc `$tag$...$tag$` (the tag is anything up to the next `$`,
    as ClickHouse reads it), else a `$name`, else a lone `$`."""
    tag_end = sql.find("$", pos + 1)
    if tag_end >= 0:
        tag = sql[pos:tag_end + 1]
        close = sql.find(tag, tag_end + 1)
        if close >= 0:
            return HEREDOC, close + len(tag)
    return DOLLAR, _DOLLAR_WORD_RE.match(sql, pos).end()


# -- placeholders ---------------------------------------------------------------


def _check_params(params: Any) -> Mapping[str, Any]:
    if not isinstance(params, Mapping):
        raise SqlError(f"'params' must be a JSON object of name -> value, got {type(params).__name__}")
    bad = [name for name in params if not isinstance(name, str) or not _NAME_RE.match(name)]
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
    for token in _tokens(sql):
        if token.kind == PERCENT:
            name = _placeholder_name(token)
            if name is not None:
                names.add(name)
        elif token.kind in _TEXT_KINDS:
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
        elif token.kind in _TEXT_KINDS:
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
    tokens = list(_tokens(sql))
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

    return _substitute(list(_tokens(sql)), params, fill), values


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


# -- read-only /query text ----------------------------------------------------------

ALLOWED_LEADING = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN")

# Table functions (and same-named functions) that reach past the store: the
# host's files, the network, other servers, programs. The engine is the first
# line (the /query session runs with readonly=1, which refuses every table
# function on 18.16 and every one that reaches outside on current releases);
# this list is the second, and the one that stops the ordinary function
# file(), which chDB runs even in readonly mode. check_read_only_sql adds
# every name the engine itself lists in system.table_functions.
EXTERNAL_FUNCTIONS = frozenset(name.lower() for name in (
    "file", "fileCluster", "url", "urlCluster", "s3", "s3Cluster", "gcs", "oss", "cosn", "hdfs", "hdfsCluster",
    "azureBlobStorage", "azureBlobStorageCluster", "remote", "remoteSecure", "cluster", "clusterAllReplicas",
    "mysql", "postgresql", "mongodb", "redis", "sqlite", "odbc", "jdbc", "executable", "executablePool",
    "input", "deltaLake", "deltaLakeCluster", "deltaLakeS3", "deltaLakeAzure", "deltaLakeLocal", "iceberg",
    "icebergS3", "icebergAzure", "icebergHDFS", "icebergLocal", "icebergCluster", "icebergS3Cluster",
    "icebergAzureCluster", "icebergHDFSCluster", "hudi", "hudiCluster", "paimon", "paimonS3", "paimonAzure",
    "paimonHDFS", "paimonLocal", "arrowFlight", "arrowflight", "ytsaurus", "python", "prometheusQuery",
    "prometheusQueryRange", "kafka", "nats", "rabbitmq", "filesystem", "dictionary", "merge", "loop",
    "catboostEvaluate", "bigquery", "mergeTreeIndex", "mergeTreeParts", "mergeTreeAnalyzeIndexes",
    "fuzzJSON", "fuzzQuery", "generateRandom",
))

ALLOWED_TABLE_FUNCTIONS = frozenset(name.lower() for name in (
    "numbers", "numbers_mt", "zeros", "zeros_mt", "values", "SQLStandardValues", "generate_series", "generateSeries",
    "view", "null", "format",
))
"""The table functions /query may call: they make rows from their arguments alone (within the row limits).
`format` is also the ordinary string function."""

SYSTEM_DATABASES = frozenset({"system", "information_schema"})
ALLOWED_SYSTEM_TABLES = frozenset({"one", "numbers", "numbers_mt", "zeros", "zeros_mt"})
"""The only tables of the engine's own databases /query may read: the rest describe the server, its
users and other callers' queries, not the relay's events."""

MAX_NESTING = 100


def name_text(token: Token) -> str | None:
    """The name a word or quoted-name token stands for, as ClickHouse reads it; None when it is not a
    name, or is a quoted name holding a backslash escape (`fil\\x65`), which is refused rather than decoded:
    the relay would have to decode exactly as every engine version does to see what it names."""
    if token.kind == WORD:
        return token.text
    if token.kind != QUOTED:
        return None
    quote, inner = token.text[0], token.text[1:-1]
    if "\\" in inner:
        return None
    return inner.replace(quote + quote, quote)


def _is_name(token: Token) -> bool:
    return token.kind in (WORD, QUOTED)


def check_read_only_sql(sql: str, table_functions: frozenset[str] | set[str] = frozenset()) -> str:
    """Vet /query text and return it as one clean statement, or raise SqlError (→ 400).

    A second line of defence behind the engine's readonly=1 session: comments
    are dropped, one trailing `;` is removed, and these are refused: an empty
    query, a second statement, a first word other than ALLOWED_LEADING
    (after any opening parentheses), a SETTINGS or FORMAT clause or INTO
    OUTFILE (the relay sets the limits and the output format itself), a call
    of any table function outside ALLOWED_TABLE_FUNCTIONS — the names in
    EXTERNAL_FUNCTIONS and in `table_functions` (the engine's own list) — and
    a table of `system` or `information_schema` outside ALLOWED_SYSTEM_TABLES.

    Names are read as ClickHouse reads them: bare, "double-quoted" or
    `back-quoted`, in any letter case, at any depth of nesting, with comments
    between a name and its `(`. Keywords are matched in code only — never
    inside strings or comments — and a word right after `.` is a qualified
    name (`t.settings`), not a clause; `format(...)` the function is allowed.
    """
    tokens = list(_tokens(sql))
    significant = [t for t in tokens if t.kind not in (SPACE, COMMENT)]
    semicolons = [i for i, t in enumerate(significant) if t.kind == PUNCT and t.text == ";"]
    if semicolons and semicolons[0] != len(significant) - 1:
        raise SqlError("only one statement is allowed (found text after ';')")
    if semicolons:
        significant = significant[:-1]
    if not significant:
        raise SqlError("the query is empty")

    depth = deepest = 0
    for token in significant:
        if token.kind == PUNCT and token.text in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif token.kind == PUNCT and token.text in ")]}":
            depth -= 1
    if deepest > MAX_NESTING:
        # ClickHouse 18.16's parser recurses without a limit: a few thousand
        # nested brackets overflow its stack and take the whole server down
        raise SqlError(f"brackets nested deeper than {MAX_NESTING} levels are not allowed")

    first = next((t for t in significant if t.text != "("), None)
    if first is None or first.kind != WORD or first.text.upper() not in ALLOWED_LEADING:
        got = first.text[:40] if first is not None else "("
        raise SqlError(f"only read queries are allowed: the query must start with {', '.join(ALLOWED_LEADING)} "
                       f"(it starts with {got!r})")

    blocked = (EXTERNAL_FUNCTIONS | {name.lower() for name in table_functions}) - ALLOWED_TABLE_FUNCTIONS
    for i, token in enumerate(significant):
        if not _is_name(token):
            continue
        after_dot = i > 0 and significant[i - 1].text == "."
        called = i + 1 < len(significant) and significant[i + 1].text == "("
        name = name_text(token)
        qualifier = i + 1 < len(significant) and significant[i + 1].text == "."
        if name is None and not (called or qualifier or after_dot):
            continue  # an escaped alias or column name names no function and no table
        if name is None:
            raise SqlError(f"the quoted name {token.text[:40]} holds a backslash escape: "
                           "/query takes quoted names without escapes")
        lowered = name.lower()
        if called and lowered in blocked:
            raise SqlError(f"{name}() is not allowed: /query reads the relay's store only")
        if (lowered in SYSTEM_DATABASES and not after_dot and qualifier and i + 2 < len(significant)
                and _is_name(significant[i + 2])):
            table = (name_text(significant[i + 2]) or "").lower()
            if table not in ALLOWED_SYSTEM_TABLES or lowered != "system":
                raise SqlError(f"{name}.{table or '?'} is not readable through /query: it reads the relay's tables "
                               f"and system.{', system.'.join(sorted(ALLOWED_SYSTEM_TABLES))}")
        if token.kind != WORD or after_dot:
            continue
        word = token.text.upper()
        if word == "SETTINGS":
            raise SqlError("SETTINGS clauses are not allowed: the relay sets the query limits itself "
                           "(write `settings` in backquotes for a column of that name)")
        if word == "FORMAT" and not called:
            raise SqlError("FORMAT clauses are not allowed: the relay returns JSON itself "
                           "(write `format` in backquotes for a column of that name)")
        if word == "OUTFILE":
            raise SqlError("INTO OUTFILE is not allowed")

    last = significant[-1]
    body = [t for t in tokens if t.start <= last.start]
    # a comment becomes one space: it may be the only separator between two words
    return "".join(" " if t.kind == COMMENT else t.text for t in body).strip()


# -- what a /query session can do -----------------------------------------------------

READONLY, ACCESS_DENIED, SETTING_CONSTRAINT_VIOLATION = 164, 497, 452
REFUSAL_CODES = frozenset({READONLY, ACCESS_DENIED, SETTING_CONSTRAINT_VIOLATION})
"""Error codes by which an engine refuses a query for lack of rights, not for a fault in it."""


def power_probes(db: str) -> dict[str, str]:
    """Queries a restricted /query session must be refused; the key says what a success would show.

    Each is harmless when it runs: the file does not exist, nothing listens on
    port 1, the INSERT copies no row, the setting only applies to `SELECT 1`.
    """
    if not _NAME_RE.match(db):
        raise SqlError(f"bad database name {db[:64]!r}")
    return {
        "reads host files (file())": "SELECT * FROM file('relayhouse-power-probe.csv', 'CSV', 'x String')",
        "fetches URLs (url())": "SELECT * FROM url('http://127.0.0.1:1/relayhouse-power-probe', 'CSV', 'x String')",
        "writes tables (INSERT)": f"INSERT INTO {db}.relay_meta SELECT * FROM {db}.relay_meta WHERE 0",
        "lifts its own limits (SETTINGS)": "SELECT 1 SETTINGS max_execution_time = 86400",
    }


UNKNOWN_TABLE, UNKNOWN_DATABASE = 60, 81


def undecided(outcomes: Mapping[str, int | None]) -> bool:
    """True when a probe failed only because the relay's tables are not there yet (start-up): ask again later."""
    return any(code in (UNKNOWN_TABLE, UNKNOWN_DATABASE) for code in outcomes.values())


def unrestricted_powers(outcomes: Mapping[str, int | None]) -> list[str]:
    """The powers whose probe was not refused for lack of rights: ran (None) or failed for another reason
    (the engine tried: a missing file, a refused connection)."""
    return [power for power, code in outcomes.items() if code not in REFUSAL_CODES]


# -- result rows -> JSON ----------------------------------------------------------------

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
