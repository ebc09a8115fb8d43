"""handlers.topics: topics derived from data, patterns parsed, matched, merged, removed."""

import pytest

from handlers.topics import (
    DEFAULT_TOPIC,
    MATCH_ALL,
    MAX_PATTERN_LENGTH,
    MAX_PATTERNS,
    Matcher,
    PatternError,
    add_patterns,
    compile_patterns,
    limit_message,
    parse_patterns,
    remove_patterns,
    topic_of,
)

EV_SYM = ("ev", "sym")


# -- topic_of -------------------------------------------------------------------


@pytest.mark.parametrize(("data", "fields", "topic"), [
    ({"ev": "T", "sym": "AAPL", "p": 191.2}, EV_SYM, "T.AAPL"),
    ({"sym": "AAPL", "ev": "T"}, EV_SYM, "T.AAPL"),
    ({"ev": "T", "sym": "AAPL"}, ("sym", "ev"), "AAPL.T"),
    ({"ev": "status", "status": "connected"}, EV_SYM, "status"),
    ({"sym": "AAPL"}, EV_SYM, "AAPL"),
    ({"p": 191.2}, EV_SYM, DEFAULT_TOPIC),
    ({}, EV_SYM, DEFAULT_TOPIC),
    ({"ev": "T", "sym": "AAPL"}, (), DEFAULT_TOPIC),
    ({"topic": "projection_bpp", "payload": {}}, ("topic",), "projection_bpp"),
    ({"ev": "T", "sym": "BRK.A"}, EV_SYM, "T.BRK.A"),
    ({"ev": "", "sym": "AAPL"}, EV_SYM, ".AAPL"),
    ({"ev": "T", "sym": {"k0": [1, "x"]}}, EV_SYM, 'T.{"k0":[1,"x"]}'),  # JSON text, not a Python repr
    ({"ev": ["a", None]}, EV_SYM, '["a",null]'),
])
def test_topic_joins_the_fields_present_in_order(data, fields, topic):
    assert topic_of(data, fields) == topic


@pytest.mark.parametrize(("value", "part"), [
    (7, "7"), (1.5, "1.5"), (True, "true"), (False, "false"), (None, "null"),
    (2**70, "1180591620717411303424"),
])
def test_non_string_field_values_are_written_as_json_would(value, part):
    assert topic_of({"ev": value, "sym": "X"}, EV_SYM) == f"{part}.X"


@pytest.mark.parametrize("data", [
    [{"ev": "T", "sym": "AAPL"}], "T.AAPL", 42, 1.5, True, None, "", [],
])
def test_data_that_is_not_an_object_has_the_default_topic(data):
    assert topic_of(data, EV_SYM) == DEFAULT_TOPIC


# -- parse_patterns -------------------------------------------------------------


def test_a_comma_separated_string_gives_trimmed_patterns_in_order():
    assert parse_patterns(" T.AAPL , Q.* ,*") == ("T.AAPL", "Q.*", "*")


def test_a_list_gives_trimmed_patterns_in_order():
    assert parse_patterns(["T.*", " Q.AAPL "]) == ("T.*", "Q.AAPL")


def test_duplicates_are_dropped_keeping_the_first():
    assert parse_patterns("T.*,Q.*,T.*, Q.*") == ("T.*", "Q.*")


def test_a_tuple_or_generator_is_accepted_like_a_list():
    assert parse_patterns(p for p in ("A", "B")) == ("A", "B")


def test_exactly_the_maximum_number_and_length_of_patterns_are_accepted():
    many = [f"T.S{i}" for i in range(MAX_PATTERNS)]
    assert parse_patterns(many) == tuple(many)
    longest = "T." + "A" * (MAX_PATTERN_LENGTH - 2)
    assert parse_patterns([longest]) == (longest,)


@pytest.mark.parametrize(("raw", "message"), [
    ("", "empty topic pattern"),
    ("  ", "empty topic pattern"),
    ("T.*,,Q.*", "empty topic pattern"),
    (",", "empty topic pattern"),
    ([], "no topic patterns"),
    ([""], "empty topic pattern"),
    (["T.*", 7], "topic pattern must be a string, got int"),
    ([None], "topic pattern must be a string, got NoneType"),
    ([["T.*"]], "topic pattern must be a string, got list"),
    ("*.AAPL", "'*' may only end a topic pattern: '*.AAPL'"),
    ("T*X", "'*' may only end a topic pattern: 'T*X'"),
    ("**", "'*' may only end a topic pattern: '**'"),
    (["A"] * (MAX_PATTERNS + 1), f"at most {MAX_PATTERNS} topic patterns"),
    (["A" * (MAX_PATTERN_LENGTH + 1)],
     f"topic pattern longer than {MAX_PATTERN_LENGTH} characters"),
])
def test_unusable_patterns_are_refused_with_a_message(raw, message):
    with pytest.raises(PatternError) as caught:
        parse_patterns(raw)
    assert str(caught.value) == message


def test_a_pattern_error_is_a_value_error():
    assert issubclass(PatternError, ValueError)


# -- compile_patterns and Matcher -----------------------------------------------


def test_a_matcher_records_what_it_was_built_from():
    assert compile_patterns(["T.AAPL", "Q.*", "T.AAPL"]) == Matcher(
        patterns=("T.AAPL", "Q.*"), everything=False,
        exact=frozenset({"T.AAPL"}), prefixes=("Q.",),
    )


TOPICS = ["T.AAPL", "T.AAPLX", "T.MSFT", "Q.AAPL", "T", "TX.AAPL", "default", ""]


@pytest.mark.parametrize(("patterns", "matched"), [
    (["T.AAPL"], ["T.AAPL"]),
    (["T.*"], ["T.AAPL", "T.AAPLX", "T.MSFT"]),
    (["T*"], ["T.AAPL", "T.AAPLX", "T.MSFT", "T", "TX.AAPL"]),
    (["T.AAPL", "Q.*"], ["T.AAPL", "Q.AAPL"]),
    (["*"], TOPICS),
    (["T.AAPL", "*"], TOPICS),
    (["default"], ["default"]),
    ([], []),
])
def test_a_matcher_accepts_exact_topics_prefixes_and_everything(patterns, matched):
    match = compile_patterns(patterns)
    assert [t for t in TOPICS if match(t)] == matched


def test_match_all_matches_every_topic():
    assert MATCH_ALL.everything
    assert all(MATCH_ALL(t) for t in TOPICS)


def test_parsed_patterns_compile_into_the_matcher_they_describe():
    match = compile_patterns(parse_patterns(" T.* , Q.AAPL "))
    assert [t for t in TOPICS if match(t)] == ["T.AAPL", "T.AAPLX", "T.MSFT", "Q.AAPL"]


# -- merge and remove -------------------------------------------------------------


def test_subscribing_adds_new_patterns_after_the_current_ones():
    assert add_patterns(("T.*", "Q.AAPL"), ("Q.AAPL", "AM.*", "AM.*"), 10) == (("T.*", "Q.AAPL", "AM.*"), ())


def test_subscribing_to_nothing_keeps_the_subscription():
    assert add_patterns(("T.*",), (), 10) == (("T.*",), ())


def test_a_subscribe_past_the_cap_keeps_the_first_new_patterns_and_names_the_rest():
    after, refused = add_patterns(("A", "B"), ("B", "C", "D", "E"), 3)
    assert (after, refused) == (("A", "B", "C"), ("D", "E"))
    assert limit_message(3, refused) == "subscription limit of 3 patterns reached: 2 not subscribed (first: 'D')"


def test_a_full_subscription_still_accepts_patterns_it_already_holds():
    assert add_patterns(("A", "B"), ("A",), 2) == (("A", "B"), ())


def test_unsubscribing_removes_exact_patterns_only():
    assert remove_patterns(("T.*", "Q.AAPL", "AM.*"), ("Q.AAPL", "T.AAPL", "*")) == (
        "T.*", "AM.*")


def test_unsubscribing_everything_leaves_an_empty_subscription():
    assert remove_patterns(("T.*", "Q.*"), ("Q.*", "T.*")) == ()


def test_a_lone_surrogate_in_a_topic_field_becomes_the_replacement_character_and_pairs_are_kept():
    assert topic_of({"ev": "T\udfff", "sym": "X"}, ("ev", "sym")) == "T\ufffd.X"
    assert topic_of({"ev": "T\ud83d\ude00"}, ("ev",)) == "T\U0001f600"  # a pair written as two escapes
    assert topic_of({"ev": "Tü", "sym": "\ud800\ud800"}, ("ev", "sym")) == "Tü.\ufffd\ufffd"
    topic_of({"ev": "T\udfff"}, ("ev",)).encode()  # every topic is UTF-8 text
