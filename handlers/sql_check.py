"""Vet /query text: one read-only statement, no table function or system table that reaches past the store."""

from __future__ import annotations

from handlers.sql_lexer import COMMENT, PUNCT, SPACE, WORD, SqlError, is_name, name_text, tokenize

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

    blocked = (EXTERNAL_FUNCTIONS | {name.lower() for name in table_functions}) - ALLOWED_TABLE_FUNCTIONS
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
        if called and lowered in blocked:
            raise SqlError(f"{name}() is not allowed: /query reads the relay's store only")
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

    last = significant[-1]
    body = [t for t in tokens if t.start <= last.start]
    # a comment becomes one space: it may be the only separator between two words
    return "".join(" " if t.kind == COMMENT else t.text for t in body).strip()
