"""handlers/entitlements.py: whether a requested pattern lies within a token's TOKEN_TOPICS patterns."""

import pytest

from handlers.entitlements import pattern_within, refusal_message, split_by_scope

SCOPE = ("T.*", "Q.AAPL", "AM.MS*")


@pytest.mark.parametrize("pattern", ["T.AAPL", "T.*", "T.AA*", "Q.AAPL", "AM.MSFT", "AM.MS*", "AM.MSX*"])
def test_patterns_inside_the_scope_are_allowed(pattern):
    assert pattern_within(pattern, SCOPE)


@pytest.mark.parametrize("pattern", ["*", "T*", "Q.*", "Q.AAPL2", "Q.AA*", "AM.*", "AM.M*", "A.X"])
def test_patterns_reaching_beyond_the_scope_are_refused(pattern):
    assert not pattern_within(pattern, SCOPE)


def test_everything_is_within_star_and_nothing_is_limited_without_a_scope():
    assert pattern_within("*", ("*",))
    assert split_by_scope(("*", "X"), None) == (("*", "X"), ())
    assert split_by_scope(("T.A", "*", "Q.B"), SCOPE) == (("T.A",), ("*", "Q.B"))


def test_the_refusal_names_the_patterns_and_stays_short():
    assert refusal_message(["Q.B"]) == "not allowed for this token: Q.B"
    long = refusal_message([f"Q.{n}" for n in range(25)])
    assert long.endswith("Q.9 and 15 more")
