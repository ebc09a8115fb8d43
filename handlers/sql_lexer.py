"""ClickHouse SQL read the way ClickHouse's own lexer reads it: tokens, and the names they stand for.

ClickHouse 18.16 (Debian's server) and current releases (chDB) alike, so a
value can never change where a string, a comment or a statement ends:

- `'...'` strings, `"..."` and `` `...` `` names: a backslash escapes the next
  character and a doubled quote stands for itself;
- comments: `--`, `//`, `# ` and `#!` to the end of the line, `/* ... */`.
  A `/*` inside a block comment is refused (SqlError): 18.16 ends the comment
  at the first `*/`, current releases nest, so the two would disagree;
- `$tag$ ... $tag$` heredoc strings (current releases only);
- `%%` and `%(name)s` (the driver's pyformat placeholders) are one token each;
- a character outside ASCII is refused (SqlError) anywhere but inside a
  string, a quoted name or a comment: current releases read Unicode spaces as
  spaces and typographic quotes as quotes, 18.16 refuses them.

Everything else about SQL in handlers/ (sql_params, sql_check) reads tokens
from here and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


class SqlError(ValueError):
    """SQL or parameters the relay will not send (→ HTTP 400); the message is written for the client."""


SPACE, WORD, NUMBER, DOLLAR, STRING, QUOTED, HEREDOC, COMMENT, PERCENT, PUNCT = (
    "space", "word", "number", "dollar", "string", "quoted", "heredoc", "comment", "percent", "punct",
)
TEXT_KINDS = frozenset({STRING, QUOTED, HEREDOC, COMMENT})
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
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_QUOTE_NAMES = {"'": "string literal", '"': 'quoted name ("...")', "`": "quoted name (`...`)"}


def tokenize(sql: str) -> Iterator[Token]:
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
        elif not ch.isascii():
            # Current releases read Unicode spaces (U+00A0, U+3000, U+FEFF, ...) as spaces and typographic
            # quotes as quotes: `file\u00a0(`, `“file”(` and `‘'’, file(...)` were calls the check did not see
            # (an outside audit read /proc/self/environ through /query on chDB). 18.16 refuses them all.
            raise SqlError(f"the character {ch!r} (U+{ord(ch):04X}) at offset {pos} is outside a string, quoted "
                           "name or comment: /query takes ASCII SQL there")
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


def is_name(token: Token) -> bool:
    return token.kind in (WORD, QUOTED)

