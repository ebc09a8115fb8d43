"""Vet /query text: one read-only statement, no table function or system table that reaches past the store."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from handlers.sql_lexer import (
    COMMENT,
    NUMBER,
    PUNCT,
    SPACE,
    STRING,
    WORD,
    SqlError,
    is_name,
    name_text,
    tokenize,
)

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

# Functions that read a table or dictionary named in a string argument (`dictGet('other.d', ...)`,
# `joinGet('other.t', ...)`), which no check of the names in the text can see, or tell whether another
# database holds a table: /query has no use for them, the relay keeps no dictionary and no Join table.
STRING_NAMED_TABLE_PREFIXES = ("dictget", "joinget")
STRING_NAMED_TABLE_FUNCTIONS = frozenset({"dicthas", "dictisin", "hascolumnintable"})
# Functions that describe the host rather than the store: the relay's DATA_DIR (getServerSetting('path')),
# the host's name, kernel and disks (an outside audit read them through /query on chDB)
HOST_FUNCTIONS = frozenset(name.lower() for name in (
    "getServerSetting", "getMacro", "hostName", "fqdn", "displayName", "serverUUID", "getOSKernelVersion",
    "filesystemAvailable", "filesystemCapacity", "filesystemUnreserved", "filesystemFree", "tcpPort",
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

DESCRIBING = frozenset({"SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"})
"""Leading words that do not start a SELECT: each takes only the forms below (an allow-list), since the
same words also list the server's processes, users, grants, settings and other databases."""
SHOW_FORMS = ("SHOW TABLES [FROM|IN <the relay's database>] [[NOT] [I]LIKE '...'] [LIMIT n]",
              "SHOW CREATE TABLE [<the relay's database>.]<table>")
EXPLAIN_KINDS = frozenset({"AST", "SYNTAX", "QUERY", "TREE", "PLAN", "PIPELINE", "ESTIMATE"})


def check_read_only_sql(sql: str, table_functions: frozenset[str] | set[str] = frozenset(),
                        database: str | None = None,
                        databases: Callable[[], Iterable[str]] | None = None) -> str:
    """Vet /query text and return it as one clean statement, or raise SqlError (→ 400).

    A second line of defence behind the engine's readonly=1 session: comments
    are dropped, one trailing `;` is removed, and these are refused: an empty
    query, a second statement, a first word other than ALLOWED_LEADING
    (after any opening parentheses), a SETTINGS or FORMAT clause or INTO
    OUTFILE (the relay sets the limits and the output format itself), a call
    of any table function outside ALLOWED_TABLE_FUNCTIONS — the names in
    EXTERNAL_FUNCTIONS and in `table_functions` (the engine's own list) — and
    a table of `system` or `information_schema` outside ALLOWED_SYSTEM_TABLES, a name qualified by a
    database other than `database` (the relay's own: `other.t`, `other.t.column`; `databases()` gives the
    engine's database names, asked only when the text qualifies a name by something else, which may be
    a table or an alias), a function that reads a table or dictionary named in a string (`dictGet`,
    `joinGet`), and a SHOW, DESCRIBE, EXISTS or EXPLAIN outside the forms check_describing allows.

    Names are read as ClickHouse reads them: bare, "double-quoted" or
    `back-quoted`, in any letter case, at any depth of nesting, with comments
    between a name and its `(`. Keywords are matched in code only — never
    inside strings or comments — and a word right after `.` is a qualified
    name (`t.settings`), not a clause; `format(...)` the function is allowed.
    """
    tokens = list(tokenize(sql))
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

    if first.text.upper() in DESCRIBING:
        if first is not significant[0]:
            raise SqlError(f"{first.text.upper()} cannot stand in brackets")
        check_describing(significant, database)

    blocked = (EXTERNAL_FUNCTIONS | STRING_NAMED_TABLE_FUNCTIONS | HOST_FUNCTIONS
               | {name.lower() for name in table_functions}) - ALLOWED_TABLE_FUNCTIONS
    qualifiers: set[str] = set()  # names that qualify another: a database, a table or an alias
    for i, token in enumerate(significant):
        if not is_name(token):
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
        if called and (lowered in blocked or lowered.startswith(STRING_NAMED_TABLE_PREFIXES)):
            raise SqlError(f"{name}() is not allowed: /query reads the relay's store only")
        if (qualifier and not after_dot and i + 2 < len(significant) and is_name(significant[i + 2])
                and lowered not in SYSTEM_DATABASES):  # those have their own rule, below
            qualifiers.add(name)
        if (lowered in SYSTEM_DATABASES and not after_dot and qualifier and i + 2 < len(significant)
                and is_name(significant[i + 2])):
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

    qualifiers -= {database} if database is not None else set()
    if qualifiers and databases is not None:
        others = qualifiers.intersection(databases())
        if others:
            named = sorted(others)[0]
            raise SqlError(f"{named[:40]} is not the relay's database: /query reads the relay's own tables "
                           f"({database or 'unqualified'}) and nothing else")

    last = significant[-1]
    body = [t for t in tokens if t.start <= last.start]
    # a comment becomes one space: it may be the only separator between two words
    return "".join(" " if t.kind == COMMENT else t.text for t in body).strip()


def check_describing(significant: list, database: str | None) -> None:
    """Refuse (SqlError) a SHOW, DESCRIBE/DESC, EXISTS or EXPLAIN statement outside the forms that read
    the relay's own tables: `significant` are its tokens without spaces and comments.

    - SHOW_FORMS, and no other SHOW (PROCESSLIST, DATABASES, GRANTS, SETTINGS, USERS, ...: the server's);
    - DESCRIBE|DESC [TABLE] [<database>.]<table>, or a table function call, or a (subquery);
    - EXISTS [TABLE] [<database>.]<table>;
    - EXPLAIN [AST|SYNTAX|QUERY TREE|PLAN|PIPELINE|ESTIMATE] [option = value, ...] of a SELECT.
    A database other than `database` (system, information_schema, another) is refused everywhere here;
    the rest of the statement is vetted like any other (table functions, system tables).
    """
    word = significant[0].text.upper()
    rest = significant[1:]
    if word == "SHOW":
        _check_show(rest, database)
    elif word in ("DESCRIBE", "DESC"):
        rest = rest[1:] if _is_word(rest, 0, "TABLE") else rest
        if rest and rest[0].text == "(":
            return  # a subquery: vetted as any SELECT is
        if len(rest) >= 2 and is_name(rest[0]) and rest[1].text == "(":
            return  # a table function: vetted with the others
        _check_table(rest, database, f"{word} [TABLE] [{database or '<database>'}.]<table>")
    elif word == "EXISTS":
        rest = rest[1:] if _is_word(rest, 0, "TABLE") else rest
        _check_table(rest, database, f"EXISTS [TABLE] [{database or '<database>'}.]<table>")
    else:
        _check_explain(rest)


def _is_word(tokens: list, i: int, *words: str) -> bool:
    return i < len(tokens) and tokens[i].kind == WORD and tokens[i].text.upper() in words


def _check_table(tokens: list, database: str | None, form: str) -> None:
    """`tokens` must be exactly `<table>` or `<database>.<table>`."""
    if len(tokens) == 1 and is_name(tokens[0]):
        return
    if len(tokens) == 3 and is_name(tokens[0]) and tokens[1].text == "." and is_name(tokens[2]):
        named = name_text(tokens[0])
        if database is not None and named == database:
            return
        raise SqlError(f"{(named or tokens[0].text)[:40]} is not the relay's database: /query reads the "
                       f"relay's own tables ({database or 'qualify none'}) and nothing else")
    raise SqlError(f"only {form} is allowed here")


def _check_show(tokens: list, database: str | None) -> None:
    if _is_word(tokens, 0, "CREATE") and _is_word(tokens, 1, "TABLE"):
        _check_table(tokens[2:], database, "SHOW CREATE TABLE [<database>.]<table>")
        return
    if not _is_word(tokens, 0, "TABLES"):
        what = " ".join(t.text.upper() for t in tokens[:2]) or "(nothing)"
        raise SqlError(f"SHOW {what[:40]} is not allowed: /query reads the relay's own tables, and of SHOW "
                       f"takes only {' and '.join(SHOW_FORMS)}")
    i = 1
    if _is_word(tokens, i, "FROM", "IN"):
        if not (i + 1 < len(tokens) and is_name(tokens[i + 1])):
            raise SqlError("SHOW TABLES FROM takes a database name")
        named = name_text(tokens[i + 1])
        if database is None or named != database:
            raise SqlError(f"SHOW TABLES FROM {(named or tokens[i + 1].text)[:40]} is not allowed: /query "
                           f"reads the relay's own database ({database or 'unnamed here'}) and nothing else")
        i += 2
    if _is_word(tokens, i, "NOT"):
        i += 1
    if _is_word(tokens, i, "LIKE", "ILIKE"):
        if not (i + 1 < len(tokens) and tokens[i + 1].kind == STRING):
            raise SqlError("SHOW TABLES LIKE takes a string")
        i += 2
    if _is_word(tokens, i, "LIMIT"):
        if not (i + 1 < len(tokens) and tokens[i + 1].kind == NUMBER):
            raise SqlError("SHOW TABLES LIMIT takes a number")
        i += 2
    if i != len(tokens):
        raise SqlError(f"only {SHOW_FORMS[0]} is allowed (found {tokens[i].text[:40]!r})")


def _check_explain(tokens: list) -> None:
    i = 0
    while i < len(tokens):
        if _is_word(tokens, i, *EXPLAIN_KINDS):
            i += 1
        elif is_name(tokens[i]) and i + 2 < len(tokens) and tokens[i + 1].text == "=":
            i += 3  # an option: name = value
            if i < len(tokens) and tokens[i].text == ",":
                i += 1
        else:
            break
    if not (_is_word(tokens, i, "SELECT", "WITH") or (i < len(tokens) and tokens[i].text == "(")):
        raise SqlError("EXPLAIN takes only a SELECT (or WITH ... SELECT) here")
