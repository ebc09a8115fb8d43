"""What a /query session can do that it must not: the probes to run, and what their error codes mean."""

from __future__ import annotations

from collections.abc import Mapping

from handlers.sql_lexer import NAME_RE, SqlError

READONLY, ACCESS_DENIED, SETTING_CONSTRAINT_VIOLATION = 164, 497, 452
REFUSAL_CODES = frozenset({READONLY, ACCESS_DENIED, SETTING_CONSTRAINT_VIOLATION})
"""Error codes by which an engine refuses a query for lack of rights, not for a fault in it."""


def power_probes(db: str) -> dict[str, str]:
    """Queries a restricted /query session must be refused; the key says what a success would show.

    Each is harmless when it runs: the file does not exist, nothing listens on
    port 1, the INSERT copies no row, the setting only applies to `SELECT 1`.
    """
    if not NAME_RE.match(db):
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
