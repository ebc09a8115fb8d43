"""handlers/subscriptions.py: refcounts, the union, what goes upstream and when — plain data, the clock passed in."""

import pytest

from handlers.subscriptions import (
    ATTRIBUTE_MS,
    ClientTable,
    Step,
    UpstreamPlan,
    action_messages,
    blamed_patterns,
    capped_counts,
    feed_action,
    feed_select,
    is_upstream_form,
    merge_counts,
)


def sub(params: str) -> dict:
    return {"action": "subscribe", "params": params}


def unsub(params: str) -> dict:
    return {"action": "unsubscribe", "params": params}


@pytest.mark.parametrize("pattern", ["T.AAPL", "Q.*", "AM.MSFT", "XT.X:BTC-USD", "T.BRK.A", "O.O:SPY241220P00720000"])
def test_upstream_form_is_ev_dot_symbol_or_ev_dot_star(pattern):
    assert is_upstream_form(pattern)


@pytest.mark.parametrize("pattern", ["*", "T.AA*", "T*", "T.", ".AAPL", "T.A,Q.B", "T.A B", "default", "9.X", "",
                                     "T.\x1b[31mRED", "Q.\x1b]0;pwned\x07X", "T.A\x00", "T.A\x7f"])  # no control characters
def test_other_patterns_are_not_upstream_form(pattern):
    assert not is_upstream_form(pattern)


# -- ClientTable ----------------------------------------------------------------------------


def test_the_first_owner_and_the_last_one_are_reported_and_repeats_are_not():
    table = ClientTable()
    assert table.change("a", (), ("T.AAPL", "Q.*", "*")) == (("Q.*", "T.AAPL"), ())
    assert table.change("b", (), ("T.AAPL", "T.MSFT")) == (("T.MSFT",), ())
    assert table.counts() == {"T.AAPL": 2, "Q.*": 1, "T.MSFT": 1}
    assert table.change("a", ("T.AAPL", "Q.*", "*"), ("T.AAPL",)) == ((), ("Q.*",))
    assert table.change("a", ("T.AAPL",), ()) == ((), ())  # b still holds it
    assert table.change("b", ("T.AAPL", "T.MSFT"), ()) == ((), ("T.AAPL", "T.MSFT"))
    assert table.counts() == {} and len(table) == 0


def test_removing_what_an_owner_never_held_changes_nothing():
    table = ClientTable()
    table.change("a", (), ("T.AAPL",))
    assert table.change("b", ("T.AAPL",), ()) == ((), ())
    assert table.owners("T.AAPL") == ("a",)


def test_merge_counts_sums_workers_and_drops_what_is_not_upstream_form():
    assert merge_counts([{"T.AAPL": 2, "Q.*": 1}, {"T.AAPL": 1, "*": 4, "T.X": 0}]) == {"T.AAPL": 3, "Q.*": 1}


# -- UpstreamPlan ---------------------------------------------------------------------------


def connected_plan(**kwargs) -> UpstreamPlan:
    plan = UpstreamPlan(**{"delay_ms": 1000, **kwargs})
    plan.connected(0)
    return plan


def test_changes_within_the_batch_window_go_out_as_one_message():
    plan = connected_plan()
    plan.want({"T.AAPL": 1}, 100)
    assert plan.due(120) == Step()  # still gathering
    plan.want({"T.AAPL": 1, "Q.MSFT": 1}, 130)
    assert plan.wake_at() == 150
    assert plan.due(150) == Step((sub("Q.MSFT,T.AAPL"),))
    assert plan.subscribed() == ["Q.MSFT", "T.AAPL"]
    assert plan.due(500) == Step()


def test_a_repeat_sends_nothing():
    plan = connected_plan()
    plan.want({"T.AAPL": 1}, 0)
    assert plan.due(50).messages == (sub("T.AAPL"),)
    plan.want({"T.AAPL": 3}, 60)
    assert plan.due(200) == Step()


def test_the_unsubscribe_waits_for_the_delay_and_a_return_within_it_sends_nothing():
    plan = connected_plan()
    plan.want({"T.AAPL": 1}, 0)
    plan.due(50)
    plan.want({}, 100)
    assert plan.due(1099) == Step()
    plan.want({"T.AAPL": 1}, 1000)  # back within the delay
    assert plan.due(5000) == Step()
    assert plan.subscribed() == ["T.AAPL"]
    plan.want({}, 6000)
    assert plan.wake_at() == 7050
    assert plan.due(6999) == Step()
    assert plan.due(7050) == Step((unsub("T.AAPL"),))
    assert plan.subscribed() == []


def test_unsubscribes_falling_due_within_the_batch_window_go_out_together():
    plan = connected_plan()
    plan.want({"T.A": 1, "T.B": 1}, 0)
    plan.due(50)
    plan.want({"T.B": 1}, 100)
    plan.want({}, 130)
    assert plan.due(1100) == Step()
    assert plan.due(1150) == Step((unsub("T.A,T.B"),))


def test_a_symbol_covered_by_its_wildcard_is_not_sent_on_its_own():
    plan = connected_plan()
    plan.want({"T.*": 1, "T.AAPL": 2, "Q.MSFT": 1}, 0)
    assert plan.due(50).messages == (sub("T.*,Q.MSFT"),)
    # the wildcard leaves: after the delay its symbols go on their own, then it goes
    plan.want({"T.AAPL": 2, "Q.MSFT": 1}, 100)
    assert plan.due(1000) == Step()
    assert plan.due(1150).messages == (sub("T.AAPL"), unsub("T.*"))
    assert plan.subscribed() == ["Q.MSFT", "T.AAPL"]


def test_a_wildcard_arriving_keeps_what_is_already_subscribed_under_it():
    plan = connected_plan()
    plan.want({"T.AAPL": 1}, 0)
    plan.due(50)
    plan.want({"T.AAPL": 1, "T.*": 1, "T.MSFT": 1}, 100)
    assert plan.due(150).messages == (sub("T.*"),)  # no unsubscribe of T.AAPL: no moment without its data
    assert plan.subscribed() == ["T.*", "T.AAPL"]


def test_after_a_reconnect_the_whole_union_goes_at_once_and_what_was_leaving_is_dropped():
    plan = UpstreamPlan(fixed=("Q.*",), delay_ms=1000)
    plan.want({"T.AAPL": 1, "T.MSFT": 1, "*": 5}, 0)
    plan.connected(0)
    plan.want({"T.AAPL": 1}, 100)  # T.MSFT is leaving
    plan.disconnected()
    assert plan.subscribed() == []
    assert plan.connected(200) == Step((sub("Q.*,T.AAPL"),))
    assert plan.due(5000) == Step()


def test_upstream_topics_stay_whatever_the_clients_do():
    plan = UpstreamPlan(fixed=("T.SPY",), delay_ms=0)
    plan.want({}, 0)
    assert plan.connected(0).messages == (sub("T.SPY"),)
    plan.want({"T.SPY": 1}, 10)
    plan.want({}, 20)
    assert plan.due(10_000) == Step()
    assert plan.subscribed() == ["T.SPY"]


def test_past_the_limit_patterns_are_not_sent_and_are_reported_once():
    plan = connected_plan(max_patterns=2)
    plan.want({"T.A": 1, "T.B": 1, "T.C": 1}, 0)
    step = plan.due(50)
    assert step.messages == (sub("T.A,T.B"),) and step.over_limit == ("T.C",)
    plan.want({"T.A": 1, "T.B": 1, "T.C": 1, "T.D": 1}, 60)
    assert plan.due(110).over_limit == ("T.D",)
    plan.want({"T.B": 1, "T.C": 1, "T.D": 1}, 200)  # T.A leaves: room after the delay
    assert plan.due(1250).messages == (sub("T.C"), unsub("T.A"))


def test_a_refused_pattern_is_not_asked_for_again_while_wanted_and_a_refused_wildcard_frees_its_symbols():
    plan = connected_plan()
    plan.want({"T.*": 1, "T.AAPL": 1, "Q.X": 1}, 0)
    plan.due(50)
    plan.refused(["T.*"], "not entitled")
    assert plan.due(60).messages == (sub("T.AAPL"),)
    plan.refused(["Q.X"], "no such symbol")
    plan.want({"T.*": 1, "T.AAPL": 1, "Q.X": 1, "Q.Y": 1}, 100)
    assert plan.due(150).messages == (sub("Q.Y"),)
    plan.want({"T.*": 1, "T.AAPL": 1, "Q.Y": 1}, 200)  # Q.X gone, then back: asked again
    plan.want({"T.*": 1, "T.AAPL": 1, "Q.Y": 1, "Q.X": 1}, 300)
    assert plan.due(350).messages == (sub("Q.X"),)


def test_long_unions_are_split_into_messages_under_the_size_bound():
    patterns = [f"T.SYM{n:05d}" for n in range(3000)]
    messages = action_messages("subscribe", patterns, max_chars=1000)
    assert all(len(m["params"]) <= 1000 for m in messages)
    assert ",".join(m["params"] for m in messages).split(",") == patterns


def test_an_error_status_is_laid_on_the_patterns_it_names_or_on_the_last_subscribe_of_one_pattern():
    last = (("T.AAPL", "Q.ZZZZ"), 1000)
    assert blamed_patterns("subscription refused: Q.ZZZZ.", ["T.MSFT"], last, 1010) == ["Q.ZZZZ"]
    assert blamed_patterns("not authorized for 'T.MSFT'", ["T.MSFT"], last, 1010) == ["T.MSFT"]
    # naming none after a subscribe of several (the union after a reconnect): blamed on none of them
    assert blamed_patterns("your plan does not include this", [], last, 1010) == []
    one = (("T.ANON",), 1000)
    assert blamed_patterns("your plan does not include this", [], one, 1010) == ["T.ANON"]
    assert blamed_patterns("your plan does not include this", [], one, 1000 + ATTRIBUTE_MS + 1) == []


# -- the feed's side ---------------------------------------------------------------------------


def test_a_feed_peer_gets_only_the_market_data_of_its_subscriptions():
    patterns, replies = feed_action(sub("T.AAPL, Q.*"), frozenset())
    assert patterns == {"T.AAPL", "Q.*"}
    assert [r["message"] for r in replies] == ["subscribed to: T.AAPL", "subscribed to: Q.*"]
    patterns, _ = feed_action(unsub("Q.*"), patterns)
    elements = [{"ev": "T", "sym": "AAPL"}, {"ev": "T", "sym": "MSFT"}, {"ev": "Q", "sym": "AAPL"},
                {"ev": "status", "status": "x", "sym": "?"}, {"other": 1}, 7]
    assert feed_select(elements, patterns) == [{"ev": "T", "sym": "AAPL"}, {"ev": "status", "status": "x", "sym": "?"},
                                               {"other": 1}, 7]
    assert feed_action({"action": "auth", "params": "k"}, patterns) is None


def test_a_worker_reports_at_most_the_limit_keeping_the_most_held_patterns():
    assert capped_counts({"T.A": 1, "T.B": 3}, 5) == ({"T.A": 1, "T.B": 3}, ())
    assert capped_counts({"T.A": 1, "T.B": 3, "T.C": 1, "T.D": 2}, 2) == ({"T.B": 3, "T.D": 2}, ("T.A", "T.C"))
