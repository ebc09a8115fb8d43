"""/query: read-only SQL on the store, limited in time, rows and memory by ClickHouse itself, in size by the relay."""

from flask import Blueprint, request

from handlers import jsonx
from handlers.sql_check import check_read_only_sql
from handlers.sql_lexer import SqlError
from handlers.sql_params import render_params
from webapp.auth import CLIENT, access, request_scope
from webapp.responses import json_error, json_response
from webapp.routes import NO_STORE, not_json_content, runtime, store_failure
from webapp.store.base import StoreError

bp = Blueprint("query", __name__)

MAX_SQL_CHARS = 100_000


@bp.route("/query", methods=["GET", "POST"])
@access(CLIENT)
def query():
    rt = runtime()
    if request_scope(request, rt.settings) is not None:
        return json_error(403, "this token is limited to some topics (TOKEN_TOPICS): /query is not open to it")
    if request.method == "POST":
        refused = not_json_content()
        if refused is not None:
            return refused
        try:
            # strictly, as /publish reads its body: NaN, Infinity and invalid UTF-8 are not JSON
            body = jsonx.loads(request.get_data(cache=False))
        except jsonx.NotJSON as exc:
            return json_error(400, f'body must be a JSON object: {{"sql": "...", "params": {{...}}}} ({exc})')
        if not isinstance(body, dict):
            return json_error(400, 'body must be a JSON object: {"sql": "...", "params": {...}}')
        sql, params = body.get("sql"), body.get("params", {})
    else:
        sql, params = request.args.get("sql"), {}
    if not isinstance(sql, str) or not sql.strip():
        return json_error(400, "'sql' is required: a SELECT statement")
    if len(sql) > MAX_SQL_CHARS:
        return json_error(400, f"'sql' is longer than {MAX_SQL_CHARS} characters")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:
        # a lone surrogate (\ud800 in the JSON): neither chDB nor the server can take the text
        return json_error(400, f"'sql' is not valid Unicode text: {exc.reason} at character {exc.start}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return json_error(400, "'params' must be a JSON object of placeholder values")
    if rt.store is None:
        return json_error(503, NO_STORE)
    try:
        powers = rt.store.query_powers()
        if powers and not rt.settings.query_allow_unrestricted:
            return json_error(503, "/query is disabled: its ClickHouse session " + "; ".join(powers)
                              + " (see docs/clickhouse.md, or set QUERY_ALLOW_UNRESTRICTED=1)")
        statement = check_read_only_sql(render_params(sql, params) if params else sql, rt.store.table_functions(),
                                        rt.store.db, rt.store.database_names)
        # at most QUERY_CONCURRENCY at once per worker: 110 concurrent sleep(3) filled a ClickHouse server's
        # query slots and stalled the relay's own inserts (spooled, /health degraded; an outside audit)
        if not rt.query_gate.acquire(timeout=rt.settings.query_timeout_s):
            rt.metrics.bound_hits.labels("query_concurrency").inc()
            response = json_error(503, f"{rt.settings.query_concurrency} /query statements (QUERY_CONCURRENCY) "
                                       f"ran for all of QUERY_TIMEOUT_S ({rt.settings.query_timeout_s:g} s) "
                                       "while this one waited: retry later")
            response.headers["Retry-After"] = "1"
            return response
        try:
            result = rt.store.query(statement, rt.settings.query_timeout_s, rt.settings.query_max_rows,
                                    max_bytes=rt.settings.query_max_bytes)
        finally:
            rt.query_gate.release()
    except SqlError as exc:
        rt.metrics.query_errors.labels("refused").inc()
        return json_error(400, str(exc))
    except StoreError as exc:
        return store_failure(exc)
    return json_response({
        "columns": [{"name": name, "type": type_} for name, type_ in result.columns],
        "rows": result.rows,
        "row_count": len(result.rows),
        "elapsed_ms": round(result.elapsed_ms, 3),
        "truncated": result.truncated,
    })
