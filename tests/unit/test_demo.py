"""handlers.demo: a seeded, clock-free market of Polygon-style trades and quotes."""

import random
from collections import defaultdict

import pytest

from handlers import jsonx
from handlers.demo import DEFAULT_SYMBOLS, DemoMarket
from handlers.events import make_event
from handlers.topics import topic_of

T0 = 1_764_124_800_000
TRADE_FIELDS = ["ev", "sym", "i", "x", "p", "s", "c", "t", "q", "z"]
QUOTE_FIELDS = ["ev", "sym", "bx", "bp", "bs", "ax", "ap", "as", "c", "t", "q", "z"]


def run(market: DemoMarket, ticks: int, n: int, step_ms: int = 100) -> list[dict]:
    out: list[dict] = []
    for i in range(ticks):
        out += market.tick(T0 + i * step_ms, n)
    return out


@pytest.fixture(scope="module")
def long_run() -> list[dict]:
    """10k ticks of the default market: the events the slower checks share."""
    return run(DemoMarket(seed=7), ticks=10_000, n=3)


def test_the_same_seed_gives_the_same_events():
    assert run(DemoMarket(seed=42), 50, 20) == run(DemoMarket(seed=42), 50, 20)


def test_different_seeds_give_different_events():
    assert run(DemoMarket(seed=1), 5, 20) != run(DemoMarket(seed=2), 5, 20)


def test_the_global_random_state_plays_no_part():
    random.seed(1)
    first = run(DemoMarket(seed=3), 10, 10)
    random.seed(2)
    random.random()
    assert run(DemoMarket(seed=3), 10, 10) == first


@pytest.mark.parametrize("n", [0, 1, 7, 500])
def test_a_tick_returns_exactly_n_events(n):
    assert len(DemoMarket().tick(T0, n)) == n


def test_a_negative_n_is_refused():
    with pytest.raises(ValueError):
        DemoMarket().tick(T0, -1)


def test_a_market_needs_a_symbol():
    with pytest.raises(ValueError):
        DemoMarket(symbols=())


def test_the_default_symbols_are_about_twenty_distinct_tickers():
    assert 15 <= len(DEFAULT_SYMBOLS) <= 30
    assert len(set(DEFAULT_SYMBOLS)) == len(DEFAULT_SYMBOLS)
    assert all(s.isupper() and s.isalpha() for s in DEFAULT_SYMBOLS)
    assert {"AAPL", "MSFT", "NVDA"} <= set(DEFAULT_SYMBOLS)


def test_trades_and_quotes_carry_polygons_field_names_in_order():
    events = DemoMarket(seed=5).tick(T0, 2_000)
    assert {tuple(e) for e in events} == {tuple(TRADE_FIELDS), tuple(QUOTE_FIELDS)}
    for e in events:
        assert list(e) == (TRADE_FIELDS if e["ev"] == "T" else QUOTE_FIELDS)


def test_field_types_are_polygons():
    for e in DemoMarket(seed=5).tick(T0, 2_000):
        assert isinstance(e["sym"], str)
        assert type(e["t"]) is int and type(e["q"]) is int and type(e["z"]) is int
        if e["ev"] == "T":
            assert isinstance(e["i"], str) and e["i"].isdigit()
            assert type(e["x"]) is int and type(e["s"]) is int
            assert isinstance(e["p"], float)
            assert isinstance(e["c"], list) and all(type(c) is int for c in e["c"])
        else:
            assert type(e["bx"]) is int and type(e["ax"]) is int
            assert type(e["bs"]) is int and type(e["as"]) is int
            assert isinstance(e["bp"], float) and isinstance(e["ap"], float)
            assert type(e["c"]) is int


def test_quotes_outnumber_trades_but_both_occur():
    kinds = [e["ev"] for e in DemoMarket(seed=5).tick(T0, 2_000)]
    assert 0 < kinds.count("T") < kinds.count("Q")


def test_only_the_markets_symbols_appear_and_busy_names_trade_more():
    events = DemoMarket(seed=5).tick(T0, 5_000)
    per_symbol = defaultdict(int)
    for e in events:
        per_symbol[e["sym"]] += 1
    assert set(per_symbol) <= set(DEFAULT_SYMBOLS)
    assert per_symbol["NVDA"] > per_symbol["PG"]


def test_unknown_symbols_get_a_plausible_price():
    events = DemoMarket(symbols=("ZZZZ", "QQQQ"), seed=9).tick(T0, 200)
    assert {e["sym"] for e in events} == {"ZZZZ", "QQQQ"}
    assert all(5 < (e.get("p") or e["bp"]) < 1_000 for e in events)


def test_every_quote_has_its_bid_below_its_ask(long_run):
    quotes = [e for e in long_run if e["ev"] == "Q"]
    assert quotes and all(0 < q["bp"] < q["ap"] for q in quotes)


def test_prices_stay_positive_and_near_their_start_over_10k_ticks(long_run):
    first: dict[str, float] = {}
    for e in long_run:
        price = e["p"] if e["ev"] == "T" else e["bp"]
        assert price > 0
        start = first.setdefault(e["sym"], price)
        assert 0.75 * start < price < 1.25 * start


def test_prices_are_in_cents_except_off_exchange_midpoints(long_run):
    for e in long_run:
        if e["ev"] == "Q":
            assert round(e["bp"], 2) == e["bp"] and round(e["ap"], 2) == e["ap"]
        elif e["x"] != 4:
            assert round(e["p"], 2) == e["p"]
        else:
            assert round(e["p"], 4) == e["p"]


def test_sizes_are_mostly_round_lots(long_run):
    trades = [e for e in long_run if e["ev"] == "T"]
    round_lots = [t for t in trades if t["s"] % 100 == 0]
    assert len(round_lots) >= 0.7 * len(trades)
    assert all(t["s"] > 0 for t in trades)
    assert all(t["c"] == [37] for t in trades if t["s"] % 100)
    quotes = [e for e in long_run if e["ev"] == "Q"]
    assert all(q["bs"] % 100 == 0 and q["as"] % 100 == 0 and q["bs"] > 0 for q in quotes)


def test_quotes_come_from_exchanges_and_trades_also_from_the_trf(long_run):
    assert all(4 not in (e["bx"], e["ax"]) for e in long_run if e["ev"] == "Q")
    assert any(e["x"] == 4 for e in long_run if e["ev"] == "T")


def test_timestamps_lie_within_the_tick_and_never_go_back():
    market = DemoMarket(seed=11)
    last = 0
    for i in range(200):
        now = T0 + i * 1_000
        events = market.tick(now, 10)
        times = [e["t"] for e in events]
        assert times == sorted(times)
        assert all(now - 250 <= t <= now and t >= last for t in times)
        last = times[-1]


def test_timestamps_do_not_reach_back_before_the_previous_tick():
    market = DemoMarket(seed=11)
    market.tick(T0, 5)
    assert all(T0 <= e["t"] <= T0 + 10 for e in market.tick(T0 + 10, 50))


def test_sequence_numbers_rise_per_symbol_and_trade_ids_rise(long_run):
    last_q: dict[str, int] = {}
    for e in long_run:
        assert e["q"] > last_q.get(e["sym"], 0)
        last_q[e["sym"]] = e["q"]
    ids = [int(e["i"]) for e in long_run if e["ev"] == "T"]
    assert ids == sorted(set(ids))


def test_each_symbol_keeps_one_tape(long_run):
    tapes = defaultdict(set)
    for e in long_run:
        tapes[e["sym"]].add(e["z"])
    assert all(len(t) == 1 and t <= {1, 3} for t in tapes.values())
    assert tapes["AAPL"] == {3} and tapes["JPM"] == {1}


def test_demo_events_relay_like_any_upstream_element():
    for seq, data in enumerate(DemoMarket(seed=13).tick(T0, 100), start=1):
        event = make_event(seq, T0, topic_of(data, ("ev", "sym")), data)
        assert event.topic == f"{data['ev']}.{data['sym']}"
        assert jsonx.loads(event.json)["data"] == data
