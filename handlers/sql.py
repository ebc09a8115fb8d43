"""ClickHouse SQL as data, one import for callers: the parts below, each with one job.

- handlers/sql_lexer.py: SQL read the way ClickHouse's lexer reads it (tokens, names);
- handlers/sql_params.py: fill or bind `%(name)s` placeholders (render_params, to_server_params);
- handlers/sql_check.py: vet /query text, with its allow and deny lists (check_read_only_sql);
- handlers/sql_probes.py: what a /query session must be refused (power_probes) and the verdict;
- handlers/sql_rows.py: result rows made JSON-safe (json_safe_rows).

Only the lexer reads SQL text; the others read its tokens.
"""

from handlers.sql_check import (
    ALLOWED_LEADING,
    ALLOWED_SYSTEM_TABLES,
    ALLOWED_TABLE_FUNCTIONS,
    EXTERNAL_FUNCTIONS,
    MAX_NESTING,
    SYSTEM_DATABASES,
    check_read_only_sql,
)
from handlers.sql_lexer import SqlError, Token, name_text, tokenize
from handlers.sql_params import MAX_PARAM_DEPTH, placeholder_names, render_params, sql_literal, to_server_params
from handlers.sql_probes import REFUSAL_CODES, power_probes, undecided, unrestricted_powers
from handlers.sql_rows import MAX_SAFE_INT, json_safe_rows, json_safe_value

__all__ = [
    "ALLOWED_LEADING", "ALLOWED_SYSTEM_TABLES", "ALLOWED_TABLE_FUNCTIONS", "EXTERNAL_FUNCTIONS", "MAX_NESTING",
    "MAX_PARAM_DEPTH", "MAX_SAFE_INT", "REFUSAL_CODES", "SYSTEM_DATABASES", "SqlError", "Token",
    "check_read_only_sql", "json_safe_rows", "json_safe_value", "name_text", "placeholder_names", "power_probes",
    "render_params", "sql_literal", "to_server_params", "tokenize", "undecided", "unrestricted_powers",
]
