"""handlers.sql and its parts (sql_lexer, sql_params, sql_check, sql_probes, sql_rows): placeholders filled or
bound without a way out, /query text vetted, result rows made JSON-safe."""

import datetime as dt
import decimal
import ipaddress
import math
import re
import uuid

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from handlers import jsonx
from handlers.sql import (
    ALLOWED_LEADING,
    SqlError,
    Token,
    check_read_only_sql,
    json_safe_rows,
    json_safe_value,
    name_text,
    placeholder_names,
    power_probes,
    render_params,
    sql_literal,
    to_server_params,
    undecided,
    unrestricted_powers,
)
from handlers.sql_lexer import COMMENT, QUOTED, SPACE, STRING, WORD, tokenize

PROPERTY = settings(max_examples=200, deadline=None)

NASTY = list("\\'\"`\x00\n\r\t\x08\x1b\x7f%$;{}:-/*#") + ["\\'", "''", "--", "/*", "*/", "$$", "%(x)s", "%%", "😀", "\u2028"]
texts = st.lists(st.one_of(st.sampled_from(NASTY), st.characters(codec="utf-8")), max_size=30).map("".join)


def clickhouse_unescape(body: str) -> str:
    """A string literal's body as ClickHouse reads it (backslash escapes, doubled quotes)."""
    simple = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "0": "\0", "a": "\a", "v": "\v", "e": "\x1b"}

    def one(match: re.Match[str]) -> str:
        text = match.group()
        if text == "''":
            return "'"
        if text[1] == "x":
            return chr(int(text[2:], 16))
        return simple.get(text[1], text[1])

    return re.sub(r"\\x[0-9a-fA-F]{2}|\\.|''", one, body, flags=re.DOTALL)


def significant(sql: str) -> list[tuple[str, str]]:
    return [(t.kind, t.text) for t in tokenize(sql) if t.kind != SPACE]


# -- render_params: literals ------------------------------------------------------------


@pytest.mark.parametrize(("value", "literal"), [
    (None, "NULL"),
    (True, "1"),
    (False, "0"),
    (0, "0"),
    (42, "42"),
    (2**64 - 1, "18446744073709551615"),
    (10**30, "1000000000000000000000000000000"),
    (-7, "(-7)"),
    (-(2**63), "(-9223372036854775808)"),
    (1.5, "1.5"),
    (0.1, "0.1"),
    (1e300, "1e+300"),
    (-2.5e-5, "(-2.5e-05)"),
    (-0.0, "(-0.0)"),
    ("", "''"),
    ("AAPL", "'AAPL'"),
    ("it's", "'it\\'s'"),
    ("back\\slash", "'back\\\\slash'"),
    ("a\nb\tc\rd", "'a\\nb\\tc\\rd'"),
    ("\x00\x01\x1f\x7f", "'\\x00\\x01\\x1f\\x7f'"),
    ("é😀\u2028 \"`", "'é😀\u2028 \"`'"),
    (dt.date(2024, 2, 29), "'2024-02-29'"),
    (dt.datetime(2024, 2, 29, 23, 59, 58), "'2024-02-29 23:59:58'"),
    (dt.datetime(2024, 2, 29, 23, 59, 58, 1500), "'2024-02-29 23:59:58.001500'"),
    (dt.datetime(2024, 3, 1, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=9))), "'2024-02-29 23:00:00'"),
    ([], "[]"),
    ([1, -2, None], "[1, (-2), NULL]"),
    (("a", "b"), "['a', 'b']"),
    ([[1], []], "[[1], []]"),
])
def test_each_value_becomes_a_literal_that_clickhouse_18_16_and_current_both_read(value, literal):
    assert sql_literal(value) == literal
    assert render_params("SELECT %(v)s", {"v": value}) == "SELECT " + literal


def test_a_negative_number_after_a_minus_does_not_start_a_comment():
    sql = render_params("SELECT 10 -%(n)s, 1 -%(f)s", {"n": -5, "f": -1.5})
    assert sql == "SELECT 10 -(-5), 1 -(-1.5)"
    assert not [t for t in tokenize(sql) if t.kind == COMMENT]


def test_subnormal_floats_become_an_exact_product_of_normal_floats():
    # 18.16 reads no subnormal literal, and reads toFloat64('5e-324') as 0
    for value in (5e-324, -1.5e-310, 2.225073858507201e-308):
        literal = sql_literal(value)
        y, _, scale = literal.strip("()").partition(" * ")
        assert float(y) * float(scale) == value
        assert abs(float(y)) >= 2.2250738585072014e-308 and float(scale) == 2.2250738585072014e-308


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, math.nan]])
def test_non_finite_floats_are_refused(value):
    with pytest.raises(SqlError, match="finite"):
        render_params("SELECT %(v)s", {"v": value})


def test_a_lone_surrogate_is_refused_rather_than_sent():
    with pytest.raises(SqlError, match="surrogate"):
        render_params("SELECT %(v)s", {"v": "a\ud800b"})


@pytest.mark.parametrize("value", [{"a": 1}, {1, 2}, b"bytes", decimal.Decimal("1.5"), object()])
def test_values_of_other_types_are_refused_by_name(value):
    with pytest.raises(SqlError, match=f"unsupported parameter type {type(value).__name__}"):
        render_params("SELECT %(v)s", {"v": value})


def test_lists_nest_up_to_a_limit():
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(SqlError, match="nested deeper"):
        render_params("SELECT %(v)s", {"v": deep})


# -- render_params: placeholders -----------------------------------------------------------


def test_a_placeholder_may_be_used_more_than_once():
    assert render_params("SELECT %(t)s, length(%(t)s)", {"t": "x"}) == "SELECT 'x', length('x')"


def test_double_percent_is_a_literal_percent_in_code_strings_and_comments():
    sql = render_params("SELECT 7 %% 3, 'a%%b' -- 50%%\n, %(x)s", {"x": 1})
    assert sql == "SELECT 7 % 3, 'a%b' -- 50%\n, 1"


def test_a_lone_percent_is_refused_in_code_but_kept_in_strings():
    assert render_params("SELECT %(x)s LIKE 'AAP%'", {"x": "AAPL"}) == "SELECT 'AAPL' LIKE 'AAP%'"
    with pytest.raises(SqlError, match="literal % is written %%"):
        render_params("SELECT 7 % 3, %(x)s", {"x": 1})
    with pytest.raises(SqlError, match="not a placeholder"):
        render_params("SELECT %(bad-name)s", {"x": 1})
    with pytest.raises(SqlError, match="not a placeholder"):
        render_params("SELECT %(x)d", {"x": 1})


@pytest.mark.parametrize(("sql", "where"), [
    ("SELECT '%(x)s'", "string literal"),
    ("SELECT 'a' || '%(x)s'", "string literal"),
    ("SELECT 1 AS `%(x)s`", "quoted name"),
    ('SELECT 1 AS "%(x)s"', "quoted name"),
    ("SELECT 1 /* %(x)s */", "comment"),
    ("SELECT 1 -- %(x)s", "comment"),
    ("SELECT 1 # %(x)s", "comment"),
])
def test_a_placeholder_inside_quotes_or_a_comment_is_refused_not_filled(sql, where):
    # filling it there is how a value breaks out: '' + 'x' + '' or /* '*/ ...' */
    with pytest.raises(SqlError, match=where):
        render_params(sql, {"x": "*/ SELECT 1 /*"})


def test_every_placeholder_needs_a_value_and_every_value_a_placeholder():
    with pytest.raises(SqlError, match=r"%\(b\)s has no value"):
        render_params("SELECT %(a)s, %(b)s", {"a": 1})
    with pytest.raises(SqlError, match="'c' is not used"):
        render_params("SELECT %(a)s", {"a": 1, "c": 2})


@pytest.mark.parametrize("params", [["x"], "x", None, 3])
def test_params_must_be_an_object(params):
    with pytest.raises(SqlError, match="JSON object"):
        render_params("SELECT 1", params)


@pytest.mark.parametrize("name", ["a b", "1a", "", "a-b", "é", "x)s"])
def test_param_names_are_letters_digits_and_underscore(name):
    with pytest.raises(SqlError, match="invalid parameter name"):
        render_params("SELECT 1", {name: 1})


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT x%(v)s", "SELECT x '41'"),  # not the hex string x'41'
    ("SELECT %(v)s'b'", "SELECT '41' 'b'"),  # not one string '41''b'
    ("SELECT 'b'%(v)s", "SELECT 'b' '41'"),
    ("SELECT %(n)s.5", "SELECT 5 .5"),  # not 5.5
    ("SELECT %(n)sabc", "SELECT 5 abc"),
    ("SELECT f(%(n)s,%(v)s)", "SELECT f(5,'41')"),
    ("SELECT a=%(n)s", "SELECT a=5"),
])
def test_a_literal_gets_a_space_where_it_would_merge_with_its_neighbour(sql, expected):
    params = {"v": "41", "n": 5}
    assert render_params(sql, {k: v for k, v in params.items() if f"%({k})s" in sql}) == expected


@pytest.mark.parametrize("sql", ["SELECT $$x$$, %(v)s", "SELECT $a, %(v)s", "SELECT %(v)s, $tag$"])
def test_a_dollar_in_code_is_refused_with_params(sql):
    # a heredoc tag left open could find its closing tag inside a value
    with pytest.raises(SqlError, match="heredoc"):
        render_params(sql, {"v": "$tag$"})


@pytest.mark.parametrize(("sql", "message"), [
    ("SELECT 'abc", "unterminated string literal"),
    ("SELECT 'abc\\'", "unterminated string literal"),
    ('SELECT "abc', "unterminated quoted name"),
    ("SELECT `abc", "unterminated quoted name"),
    ("SELECT /* abc", "unterminated /\\* comment"),
    ("SELECT /* a /* b */ c */", "nested /\\* comment"),
])
def test_unterminated_text_and_nested_comments_are_refused(sql, message):
    with pytest.raises(SqlError, match=message):
        render_params(sql, {})
    with pytest.raises(SqlError, match=message):
        check_read_only_sql(sql)


def test_sql_must_be_text():
    with pytest.raises(SqlError, match="string"):
        render_params(b"SELECT 1", {})  # type: ignore[arg-type]


def test_placeholder_names_lists_the_placeholders_in_code():
    assert placeholder_names("SELECT %(a)s, %(b)s, %(a)s, 7 %% 2, '%%' -- note\n") == {"a", "b"}
    assert placeholder_names("SELECT 1") == frozenset()
    with pytest.raises(SqlError, match="string literal"):
        placeholder_names("SELECT '%(a)s'")


@PROPERTY
@given(text=texts)
@example(text="'); DROP TABLE t; --")
@example(text="\\")
@example(text="a\\'b''c")
@example(text="*/ SELECT 1 /*")
def test_any_text_becomes_exactly_one_string_literal_holding_that_text(text):
    sql = render_params("SELECT %(t)s", {"t": text})
    tokens = significant(sql)
    assert [kind for kind, _ in tokens] == ["word", STRING]
    assert clickhouse_unescape(tokens[1][1][1:-1]) == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=12,
)


@PROPERTY
@given(value=json_values)
def test_any_json_value_renders_without_a_comment_or_a_second_statement(value):
    sql = render_params("SELECT %(v)s -%(v)s /%(v)s", {"v": value})
    assert not [t for t in tokenize(sql) if t.kind == COMMENT]
    assert check_read_only_sql(sql) == sql


# -- to_server_params -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "type_name", "text"), [
    (True, "Bool", "true"),
    (7, "Int64", "7"),
    (-(2**63), "Int64", "-9223372036854775808"),
    (2**63, "UInt64", "9223372036854775808"),
    (2**64, "Int128", "18446744073709551616"),
    (-(2**100), "Int128", str(-(2**100))),
    (2**128 - 1, "UInt128", str(2**128 - 1)),
    (-(2**200), "Int256", str(-(2**200))),
    (2**256 - 1, "UInt256", str(2**256 - 1)),
    (1.5, "Float64", "1.5"),
    (5e-324, "Float64", "5e-324"),
    ("a'b\\c\n\t\\N", "String", "a\\'b\\\\c\\n\\t\\\\N"),
    (None, "Nullable(Nothing)", "\\N"),
    (dt.date(2024, 2, 29), "Date", "2024-02-29"),
    (dt.datetime(2024, 2, 29, 1, 2, 3), "DateTime", "2024-02-29 01:02:03"),
    (dt.datetime(2024, 2, 29, 1, 2, 3, 4), "DateTime64(6)", "2024-02-29 01:02:03.000004"),
    (dt.datetime(2024, 2, 29, 1, 2, 3, tzinfo=dt.timezone.utc), "DateTime('UTC')", "2024-02-29 01:02:03"),
    (dt.datetime(2024, 2, 29, 10, 2, 3, 5, tzinfo=dt.timezone(dt.timedelta(hours=9))), "DateTime64(6, 'UTC')",
     "2024-02-29 01:02:03.000005"),
    ([], "Array(Nothing)", "[]"),
    ([None], "Array(Nullable(Nothing))", "[NULL]"),
    (["a", "it's"], "Array(String)", "['a','it\\'s']"),
    (["a", None], "Array(Nullable(String))", "['a',NULL]"),
    ([1, -2], "Array(Int64)", "[1,-2]"),
    ([1, 2**64 - 1], "Array(UInt64)", "[1,18446744073709551615]"),
    ([-1, 2**64 - 1], "Array(Int128)", "[-1,18446744073709551615]"),
    ([1, 2.5], "Array(Float64)", "[1,2.5]"),
    ([True, False], "Array(Bool)", "[true,false]"),
    ([[1], [], [None, 2]], "Array(Array(Nullable(Int64)))", "[[1],[],[NULL,2]]"),
    ((dt.date(2024, 1, 1),), "Array(Date)", "['2024-01-01']"),
])
def test_placeholders_become_typed_query_parameters_with_text_values(value, type_name, text):
    sql, values = to_server_params("SELECT %(v)s", {"v": value})
    assert sql == "SELECT {v:" + type_name + "}"
    assert values == {"v": text}


def test_server_params_follow_the_same_placeholder_rules():
    sql, values = to_server_params("SELECT %(a)s, %(a)s, 7 %% 3, '%%' -- %%\n", {"a": "x"})
    assert sql == "SELECT {a:String}, {a:String}, 7 % 3, '%' -- %\n"
    assert values == {"a": "x"}
    for bad_sql, params in [("SELECT '%(a)s'", {"a": 1}), ("SELECT 1", {"a": 1}), ("SELECT %(a)s", {}),
                            ("SELECT 7 % 3", {}), ("SELECT %(a)s", [])]:
        with pytest.raises(SqlError):
            to_server_params(bad_sql, params)


def test_heredocs_are_allowed_when_values_are_bound_not_rendered():
    sql, values = to_server_params("SELECT $$it's$$, %(a)s", {"a": 1})
    assert sql == "SELECT $$it's$$, {a:Int64}"


@pytest.mark.parametrize(("value", "message"), [
    ([1, "a"], "mixes types"),
    ([dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)], "time zone"),
    ([[1], None], "null next to lists"),
    (2**256, "256-bit"),
    (-(2**255) - 1, "256-bit"),
    (math.nan, "finite"),
    ([1.0, math.inf], "finite"),
    ({"a": 1}, "unsupported parameter type dict"),
    ([b"x"], "unsupported parameter type bytes"),
    ("\ud800", "surrogate"),
])
def test_values_clickhouse_cannot_type_are_refused(value, message):
    with pytest.raises(SqlError, match=message):
        to_server_params("SELECT %(v)s", {"v": value})


# -- check_read_only_sql ------------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "clean"), [
    ("SELECT 1", "SELECT 1"),
    ("  select 1 ;  ", "select 1"),
    ("SELECT 1; -- bye", "SELECT 1"),
    ("-- hello\nSELECT /* the answer */ 42 -- ; DROP TABLE t\n", "SELECT   42"),
    ("SELECT/**/1", "SELECT 1"),
    ("#!/usr/bin/env clickhouse\nSELECT 1", "SELECT 1"),
    ("SELECT 1 // SETTINGS\n", "SELECT 1"),
    ("SELECT 'a;b', `c;d`, \"e;f\", 'it''s; FORMAT', 'x\\'; SETTINGS'", None),
    ("SELECT $$ ; FORMAT JSON $$", None),
    ("(SELECT 1) UNION ALL (SELECT 2)", None),
    ("WITH 1 AS x SELECT x", None),
    ("SELECT number FROM system.numbers LIMIT 3", None),
    ("SELECT format('{} {}', 'a', 'b'), formatDateTime(now(), '%Y')", None),
    ("SELECT 1 AS `settings`, 2 AS `format`", None),
    ("SELECT count() FROM relay.events WHERE topic LIKE 'T.%'", None),
])
def test_a_single_read_statement_comes_back_without_comments_or_its_semicolon(sql, clean):
    assert check_read_only_sql(sql) == (sql if clean is None else clean)


@pytest.mark.parametrize("sql", ["select something", "with 1 AS x select x", "show tables", "describe events",
                                 "desc table events", "exists events", "explain select 1"])
def test_every_allowed_leading_keyword_passes_in_any_case(sql):
    assert {sql.split()[0].upper()} <= set(ALLOWED_LEADING)
    assert check_read_only_sql(sql, database="relay") == sql


@pytest.mark.parametrize("sql", [
    "SHOW PROCESSLIST", "show processlist", "SHOW TABLES FROM system", "SHOW TABLES IN system",
    "SHOW TABLES FROM `system`", 'SHOW TABLES FROM "information_schema"', "SHOW TABLES FROM INFORMATION_SCHEMA",
    "SHOW TABLES FROM other_db", "SHOW TABLES FROM relay_other", "SHOW TABLES FROM",
    "SHOW COLUMNS FROM processes FROM system", "SHOW GRANTS", "SHOW DATABASES", "SHOW SETTING max_memory_usage",
    "SHOW SETTINGS LIKE 'max%'", "SHOW CHANGED SETTINGS", "SHOW MERGES", "SHOW ENGINES", "SHOW FUNCTIONS",
    "SHOW USERS", "SHOW ROLES", "SHOW QUOTA", "SHOW QUOTAS", "SHOW ACCESS", "SHOW DICTIONARIES",
    "SHOW CLUSTERS", "SHOW CLUSTER default", "SHOW TEMPORARY TABLES", "SHOW FULL TABLES", "SHOW CREATE USER",
    "SHOW CREATE USER default", "SHOW CREATE ROLE r", "SHOW CREATE QUOTA", "SHOW CREATE DATABASE system",
    "SHOW CREATE events", "SHOW CREATE TABLE system.processes", "SHOW CREATE TABLE other.events",
    "SHOW CREATE TABLE events extra", "SHOW INDEXES FROM events", "SHOW FILESYSTEM CACHES", "SHOW PRIVILEGES",
    "SHOW TABLES LIKE 'x' FROM system", "SHOW TABLES LIMIT 1 OFFSET 2", "SHOW", "(SHOW TABLES)",
    "DESCRIBE system.processes", "DESC TABLE system.processes", "DESCRIBE `system`.`processes`",
    "DESCRIBE TABLE information_schema.tables", "DESCRIBE other.events", "DESCRIBE (SELECT * FROM system.processes)",
    "DESCRIBE TABLE file('/etc/passwd', 'LineAsString')", "DESCRIBE events FORMAT JSON", "DESCRIBE a b",
    "EXISTS TABLE system.one", "EXISTS system.processes", "EXISTS DATABASE system", "EXISTS DICTIONARY d",
    "EXISTS TEMPORARY TABLE t", "EXISTS VIEW v", "(DESCRIBE events)",
    "EXPLAIN SHOW PROCESSLIST", "EXPLAIN AST SHOW PROCESSLIST", "EXPLAIN SYNTAX DESCRIBE system.processes",
    "EXPLAIN SELECT * FROM system.processes", "EXPLAIN TABLE OVERRIDE mysql('h', 'd', 't', 'u', 'p')",
    "EXPLAIN ESTIMATE SELECT * FROM system.parts",
])
def test_show_describe_exists_and_explain_outside_the_relays_own_tables_are_refused(sql):
    with pytest.raises(SqlError):
        check_read_only_sql(sql, database="relay")


@pytest.mark.parametrize("sql", ["SHOW PROCESSLIST", "SHOW DATABASES", "SHOW GRANTS", "SHOW SETTING max_threads"])
def test_a_refused_show_says_why_and_what_is_allowed(sql):
    with pytest.raises(SqlError, match=r"is not allowed: /query reads the relay's own tables.*SHOW TABLES"):
        check_read_only_sql(sql, database="relay")


@pytest.mark.parametrize("sql", ["SHOW TABLES FROM system", "DESCRIBE system.processes", "EXISTS TABLE system.one"])
def test_a_refused_database_is_named(sql):
    with pytest.raises(SqlError, match=r"system is not.*relay's own"):
        check_read_only_sql(sql, database="relay")


@pytest.mark.parametrize("sql", [
    "SHOW TABLES", "show tables", "SHOW TABLES FROM relay", "SHOW TABLES IN relay", "SHOW TABLES FROM `relay`",
    "SHOW TABLES LIKE 'ev%'", "SHOW TABLES FROM relay NOT LIKE 'x%' LIMIT 5", "SHOW TABLES ILIKE 'E%'",
    "SHOW TABLES LIMIT 3", "SHOW CREATE TABLE events", "SHOW CREATE TABLE relay.events",
    "SHOW CREATE TABLE `relay`.`relay_meta`", "SHOW TABLES;",
    "DESCRIBE events", "DESC events", "DESCRIBE TABLE events", "DESC TABLE relay.events", "DESCRIBE `events`",
    "DESCRIBE TABLE processes", "DESCRIBE (SELECT seq, topic FROM relay.events)", "DESCRIBE TABLE numbers(3)",
    "EXISTS events", "EXISTS TABLE events", "EXISTS TABLE relay.relay_meta",
    "EXPLAIN SELECT 1", "EXPLAIN AST SELECT 1", "EXPLAIN SYNTAX SELECT count() FROM relay.events",
    "EXPLAIN QUERY TREE SELECT 1", "EXPLAIN PLAN header = 1, actions=1 SELECT 1", "EXPLAIN PIPELINE (SELECT 1)",
    "EXPLAIN WITH 1 AS x SELECT x",
])
def test_the_relays_own_tables_can_be_listed_and_described(sql):
    assert check_read_only_sql(sql, database="relay") == sql.rstrip(";")


def test_without_the_relays_database_named_no_show_or_describe_may_qualify_a_table():
    assert check_read_only_sql("SHOW TABLES") == "SHOW TABLES"
    for sql in ["SHOW TABLES FROM relay", "DESCRIBE relay.events", "SHOW CREATE TABLE relay.events"]:
        with pytest.raises(SqlError):
            check_read_only_sql(sql)


@pytest.mark.parametrize("sql", [
    "INSERT INTO t VALUES (1)", "DROP TABLE t", "ALTER TABLE t DELETE WHERE 1", "CREATE TABLE t (x UInt8) ENGINE = Memory",
    "SET readonly = 0", "SYSTEM SHUTDOWN", "KILL QUERY WHERE 1", "OPTIMIZE TABLE t", "TRUNCATE TABLE t",
    "RENAME TABLE a TO b", "ATTACH TABLE t", "DETACH TABLE t", "GRANT ALL ON *.* TO x", "USE system",
    "DELETE FROM t WHERE 1", "UPDATE t SET x = 1", "/* SELECT */ DROP TABLE t", "1", "'SELECT'", "`SELECT` 1",
])
def test_anything_but_a_read_statement_is_refused(sql):
    with pytest.raises(SqlError, match="only read queries"):
        check_read_only_sql(sql)


@pytest.mark.parametrize("sql", [
    "SELECT 1; SELECT 2", "SELECT 1;;", "SELECT 1; DROP TABLE t", "SELECT 1 ; -- x\n DROP TABLE t",
    "SELECT 'a'; 'b'", "SELECT 1 %(' ;')s ; SELECT 2",
])
def test_a_second_statement_is_refused(sql):
    with pytest.raises(SqlError, match="one statement"):
        check_read_only_sql(sql)


@pytest.mark.parametrize(("sql", "message"), [
    ("SELECT 1 SETTINGS max_execution_time = 3600", "SETTINGS"),
    ("select 1 settings readonly = 0", "SETTINGS"),
    ("SELECT * FROM (SELECT 1 SETTINGS max_threads = 64)", "SETTINGS"),
    ("SELECT 1 FORMAT JSON", "FORMAT"),
    ("SELECT 1 format TabSeparated", "FORMAT"),
    ("SELECT 1 INTO OUTFILE '/tmp/x'", "OUTFILE"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file"),
    ("SELECT file('/etc/passwd')", "file"),
    ("SELECT * FROM url('http://169.254.169.254/', 'LineAsString')", "url"),
    ("SELECT * FROM URL ('http://x/', 'CSV')", "URL"),
    ("SELECT * FROM remote('other:9000', system.one)", "remote"),
    ("SELECT * FROM s3('https://b/k.csv')", "s3"),
    ("SELECT * FROM Python(df)", "Python"),
    ("SELECT * FROM executable('x.sh', 'CSV', 'x UInt8')", "executable"),
    ("SELECT * FROM mysql('h:3306', 'db', 't', 'u', 'p')", "mysql"),
    ("SELECT 1 /* c */ SETTINGS/* c */max_threads=1", "SETTINGS"),
    ("SELECT 1e--5 SETTINGS max_threads=1", "SETTINGS"),  # 1e- is one number to ClickHouse: no comment here
])
def test_clauses_and_functions_that_escape_the_relays_limits_are_refused(sql, message):
    with pytest.raises(SqlError, match=message):
        check_read_only_sql(sql)


@pytest.mark.parametrize("sql", ["", "   ", ";", " -- only a comment\n", "/* */ ;"])
def test_an_empty_query_is_refused(sql):
    with pytest.raises(SqlError, match="empty"):
        check_read_only_sql(sql)


sql_soup = st.lists(st.sampled_from([
    "SELECT", "select", "WITH", "1", "1e", "-", "--", "/*", "*/", "/", "*", "'", "''", "\\", '"', "`", ";", " ", "\n",
    "#", "# ", "$", "$$", "$a$", "SETTINGS", "FORMAT", "format(", "(", ")", ".", "%", "%%", "%(x)s", "file(", "x",
]), max_size=25).map("".join)


@PROPERTY
@given(sql=sql_soup)
def test_any_text_is_vetted_or_refused_with_a_sql_error(sql):
    try:
        clean = check_read_only_sql(sql)
    except SqlError:
        return
    words = [t.text.upper() for t in tokenize(clean) if t.kind == "word"]
    assert "SETTINGS" not in words and ";" not in [t.text for t in tokenize(clean) if t.kind == "punct"]
    assert not [t for t in tokenize(clean) if t.kind == COMMENT]
    assert check_read_only_sql(clean) == clean


# -- json_safe_value / json_safe_rows ---------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (None, None),
    (True, True),
    ("text", "text"),
    (0, 0),
    (2**53, 2**53),
    (-(2**53), -(2**53)),
    (2**53 + 1, "9007199254740993"),
    (-(2**53) - 1, "-9007199254740993"),
    (2**64 - 1, "18446744073709551615"),
    (1.5, 1.5),
    (math.nan, None),
    (math.inf, None),
    (-math.inf, None),
    (decimal.Decimal("1.5"), 1.5),
    (decimal.Decimal("0.100"), 0.1),
    (decimal.Decimal("-7"), -7.0),
    (decimal.Decimal("12345678901234567890.123"), "12345678901234567890.123"),
    (decimal.Decimal("0.12345678901234567890"), "0.12345678901234567890"),
    (decimal.Decimal("1E+30"), 1e30),
    (decimal.Decimal("NaN"), None),
    (dt.date(2024, 2, 29), "2024-02-29"),
    (dt.datetime(2024, 2, 29, 23, 59, 58), "2024-02-29 23:59:58"),
    (dt.datetime(2024, 2, 29, 23, 59, 58, 120000), "2024-02-29 23:59:58.120000"),
    (dt.datetime(2024, 3, 1, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=9))), "2024-03-01 08:00:00"),
    (dt.datetime(5, 1, 2, 3, 4, 5), "0005-01-02 03:04:05"),
    (uuid.UUID("61f0c404-5cb3-11e7-907b-a6006ad3dba0"), "61f0c404-5cb3-11e7-907b-a6006ad3dba0"),
    (ipaddress.IPv4Address("1.2.3.4"), "1.2.3.4"),
    (ipaddress.IPv6Address("::1"), "::1"),
    (b"ok\xff", "ok\ufffd"),
    ((1, "a", (math.nan,)), [1, "a", [None]]),
    ([2**64, [math.inf]], ["18446744073709551616", [None]]),
    ({1: math.nan, "k": 2**60}, {"1": None, "k": "1152921504606846976"}),
])
def test_driver_values_become_json_values_that_mean_the_same(value, expected):
    assert json_safe_value(value) == expected


@pytest.mark.parametrize(("digits", "text"), [(0, "2024-02-29 23:59:58"), (3, "2024-02-29 23:59:58.120"),
                                              (6, "2024-02-29 23:59:58.120000"), (9, "2024-02-29 23:59:58.120000000")])
def test_datetime64_values_keep_their_columns_precision(digits, text):
    value = dt.datetime(2024, 2, 29, 23, 59, 58, 120000)
    assert json_safe_rows([("t", f"DateTime64({digits}, 'UTC')")], [(value,)]) == [[text]]
    assert json_safe_rows([("t", f"Array(Nullable(DateTime64({digits})))")], [([value, None],)]) == [[[text, None]]]


def test_rows_become_lists_column_by_column():
    columns = [("n", "UInt64"), ("d", "Decimal(38, 3)"), ("f", "Float64"), ("when", "DateTime"), ("tags", "Array(String)")]
    rows = [(2**64 - 1, decimal.Decimal("1.250"), math.nan, dt.datetime(2024, 1, 1), ("a", "b")),
            (1, decimal.Decimal("12345678901234567890.123"), 2.5, dt.datetime(2024, 1, 2, 3, 4, 5), ())]
    assert json_safe_rows(columns, rows) == [
        ["18446744073709551615", 1.25, None, "2024-01-01 00:00:00", ["a", "b"]],
        [1, "12345678901234567890.123", 2.5, "2024-01-02 03:04:05", []],
    ]
    assert json_safe_rows(columns, []) == []


def test_a_row_that_does_not_match_its_columns_is_a_bug_not_a_silent_cut():
    with pytest.raises(ValueError):
        json_safe_rows([("a", "UInt8")], [(1, 2)])


driver_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.decimals() | texts | st.binary()
    | st.datetimes() | st.dates() | st.uuids(),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner) | st.dictionaries(st.integers() | texts, inner, max_size=2),
    max_leaves=10,
)


@PROPERTY
@given(value=driver_values)
def test_any_driver_value_survives_a_json_round_trip_unchanged(value):
    safe = json_safe_value(value)
    assert jsonx.loads(jsonx.dumps(safe)) == safe


# -- table functions, quoted names and the engine's own tables ----------------------------------------


@pytest.mark.parametrize("sql", [
    "SELECT * FROM `file`('/etc/passwd', 'LineAsString') LIMIT 2",
    'SELECT * FROM "url"(\'http://127.0.0.1:8000/health\', \'LineAsString\')',
    "SELECT * FROM FiLe('/etc/passwd', 'LineAsString')",
    "SELECT * FROM `FILE` /* gap */ ('/etc/passwd', 'LineAsString')",
    "SELECT * FROM file -- gap\n ('/etc/passwd', 'LineAsString')",
    "SELECT * FROM (SELECT * FROM `file`('/etc/passwd', 'LineAsString'))",
    "WITH t AS (SELECT * FROM \"file\"('/etc/passwd', 'LineAsString')) SELECT * FROM t",
    "SELECT 1 FROM system.one WHERE 1 IN (SELECT count() FROM `url`('http://x/', 'CSV', 'a String'))",
    "SELECT * FROM system.one AS a JOIN `remote`('h:9000', system.one) AS b USING dummy",
    "SELECT `file`('/etc/passwd')",
    "SELECT arrayMap(x -> file(x), ['/etc/passwd'])",
])
def test_forbidden_functions_are_refused_in_every_spelling_and_nesting(sql):
    with pytest.raises(SqlError, match=r"(?i)file|url|remote"):
        check_read_only_sql(sql)


def test_a_doubled_quote_inside_a_quoted_name_stands_for_one_quote():
    assert name_text(Token(QUOTED, "`fi``le`", 0)) == "fi`le"
    assert name_text(Token(QUOTED, '"a""b"', 0)) == 'a"b'
    assert name_text(Token(WORD, "File", 0)) == "File"
    assert name_text(Token(STRING, "'file'", 0)) is None


@pytest.mark.parametrize("sql", ["SELECT * FROM `fil\\x65`('/etc/passwd')", 'SELECT * FROM "ur\\l"(1)'])
def test_a_quoted_name_with_a_backslash_escape_is_refused_not_decoded(sql):
    with pytest.raises(SqlError, match="backslash"):
        check_read_only_sql(sql)


def test_the_engines_own_list_of_table_functions_is_refused_except_the_allowed_ones():
    engine = frozenset({"brandNewLake", "numbers", "zeros", "values", "generateSeries"})
    with pytest.raises(SqlError, match="(?i)brandNewLake"):
        check_read_only_sql("SELECT * FROM `BRANDNEWLAKE`('x')", engine)
    for allowed in ("numbers(10)", "zeros(3)", "values('x UInt8', 1)", "generateSeries(1, 5)"):
        assert check_read_only_sql(f"SELECT * FROM {allowed}", engine) == f"SELECT * FROM {allowed}"


@pytest.mark.parametrize("sql", [
    "SELECT * FROM system.query_log", "SELECT * FROM `system`.`users`", 'SELECT * FROM "system"."processes"',
    "SELECT * FROM SYSTEM.settings", "SELECT * FROM information_schema.tables", "SELECT * FROM system.one, system.zookeeper",
])
def test_the_engines_own_tables_are_refused_but_one_numbers_and_zeros(sql):
    with pytest.raises(SqlError, match="not readable"):
        check_read_only_sql(sql)


@pytest.mark.parametrize("sql", ["SELECT * FROM system.one", "SELECT number FROM system.numbers LIMIT 3",
                                 "SELECT count() FROM `system`.`zeros` LIMIT 3", "SELECT e.system FROM t AS e"])
def test_system_one_numbers_and_zeros_stay_readable(sql):
    assert check_read_only_sql(sql) == sql


_FORBIDDEN = ["file", "url", "remote", "remoteSecure", "s3", "mysql", "postgresql", "executable", "input", "hdfs",
              "cluster", "clusterAllReplicas", "jdbc", "odbc", "mongodb", "redis", "python", "dictionary"]


@PROPERTY
@given(name=st.sampled_from(_FORBIDDEN), casing=st.lists(st.booleans(), min_size=20, max_size=20),
       quote=st.sampled_from(["", "`", '"']), gap=st.sampled_from(["", " ", "\n", "/* c */", "-- c\n", "\t"]),
       wrappers=st.lists(st.sampled_from([
           "SELECT * FROM ({})", "WITH t AS ({}) SELECT * FROM t", "SELECT 1 FROM system.one WHERE 1 IN ({})",
           "SELECT * FROM system.one AS a JOIN ({}) AS b USING dummy", "SELECT ({}) AS x"]), max_size=8))
def test_no_spelling_or_nesting_of_a_forbidden_function_passes(name, casing, quote, gap, wrappers):
    spelled = "".join(c.upper() if up else c.lower() for c, up in zip(name, casing, strict=False))
    sql = f"SELECT * FROM {quote}{spelled}{quote}{gap}('x', 'CSV')"
    for wrapper in wrappers:
        sql = wrapper.format(sql)
    with pytest.raises(SqlError):
        check_read_only_sql(sql)


def test_power_probes_name_what_a_success_would_show_and_only_rights_refusals_count_as_restricted():
    probes = power_probes("relay_db")
    assert set(probes) == {"reads host files (file())", "fetches URLs (url())", "writes tables (INSERT)",
                           "lifts its own limits (SETTINGS)"}
    assert "relay_db.relay_meta" in probes["writes tables (INSERT)"]
    outcomes = {"reads host files (file())": 164, "fetches URLs (url())": 1000, "writes tables (INSERT)": 497,
                "lifts its own limits (SETTINGS)": None}
    assert unrestricted_powers(outcomes) == ["fetches URLs (url())", "lifts its own limits (SETTINGS)"]
    assert unrestricted_powers(dict.fromkeys(probes, 164)) == []
    assert undecided({"writes tables (INSERT)": 60}) and not undecided(dict.fromkeys(probes, 164))
    with pytest.raises(SqlError):
        power_probes("x; DROP")


def test_an_escaped_quoted_alias_is_still_fine_where_it_names_no_function_or_table():
    assert check_read_only_sql('SELECT 1 AS "a\\"b"') == 'SELECT 1 AS "a\\"b"'
    with pytest.raises(SqlError, match="backslash"):
        check_read_only_sql('SELECT * FROM `sys\\tem`.query_log')


@pytest.mark.parametrize("sql", [
    "SELECT file\u00a0('/etc/passwd')", "SELECT file\u3000('/etc/passwd')", "SELECT file\ufeff('/etc/passwd')",
    "SELECT \u201cfile\u201d('/etc/hostname')", "SELECT \u2018'\u2019 AS a, file('/etc/hostname') AS b, \u2018'\u2019 AS c",
    "SELECT * FROM system\u00a0.processes", "SELECT caf\u00e9 FROM t", "SELECT \uff11",
])
def test_a_character_outside_ascii_outside_strings_quoted_names_and_comments_is_refused(sql):
    with pytest.raises(SqlError, match="outside a string"):
        check_read_only_sql(sql)


def test_characters_outside_ascii_inside_strings_quoted_names_and_comments_are_text():
    sql = "SELECT '\u2018caf\u00e9\u2019' AS \"n\u00e4me\" /* \u00a0 */ -- \u3000"
    assert check_read_only_sql(sql).startswith("SELECT '\u2018caf\u00e9\u2019' AS \"n\u00e4me\"")


def test_a_name_qualified_by_another_database_is_refused_and_the_engine_is_asked_only_then():
    asked = []

    def databases():
        asked.append(1)
        return {"relayhouse", "default", "other"}

    for sql in ["SELECT * FROM other.t", "SELECT * FROM `other`.t", 'SELECT "other".t.c FROM x',
                "SELECT 1 WHERE 1 IN (SELECT * FROM other . t)"]:
        with pytest.raises(SqlError, match="not the relay's database"):
            check_read_only_sql(sql, database="relayhouse", databases=databases)
    assert len(asked) == 4
    asked.clear()
    for sql in ["SELECT e.seq FROM relayhouse.events AS e", "SELECT count() FROM events"]:
        check_read_only_sql(sql, database="relayhouse", databases=databases)
    assert len(asked) == 1  # e.seq: `e` might have been a database; `relayhouse.` and bare names never ask


@pytest.mark.parametrize("call", ["dictGet('o.d', 'v', 1)", "dictGetString('o.d', 'v', 1)", "DICTHAS('o.d', 1)",
                                  "joinGet('o.j', 'v', 1)", "joinGetOrNull('o.j', 'v', 1)",
                                  "hasColumnInTable('o', 't', 'c')", "getServerSetting('path')", "hostName()",
                                  "FQDN()", "getOSKernelVersion()", "filesystemAvailable()"])
def test_functions_that_read_a_table_named_in_a_string_are_refused(call):
    with pytest.raises(SqlError, match="is not allowed"):
        check_read_only_sql(f"SELECT {call}")
