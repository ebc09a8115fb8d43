"""Demo feed data: seeded, clock-free Polygon-style stock trades and quotes.

`DemoMarket(symbols, seed).tick(now_ms, n)` returns the next `n` upstream
elements, in the field names of Polygon's stocks socket (`T` trades, `Q`
quotes). Prices follow a small mean-reverting random walk in whole cents, so
they stay positive and near their start. The same seed and the same calls
give the same events: the shell supplies the clock and the pacing.
"""

import math
import random

# Plausible late-2025 prices (USD); tape 1 = NYSE-listed, 3 = Nasdaq-listed.
_LISTINGS: dict[str, tuple[float, int]] = {
    "AAPL": (276.0, 3), "MSFT": (485.0, 3), "NVDA": (180.0, 3), "AMZN": (229.0, 3),
    "GOOGL": (320.0, 3), "META": (613.0, 3), "TSLA": (420.0, 3), "AVGO": (380.0, 3),
    "JPM": (305.0, 1), "V": (330.0, 1), "UNH": (325.0, 1), "XOM": (117.0, 1),
    "JNJ": (205.0, 1), "WMT": (105.0, 1), "MA": (545.0, 1), "PG": (148.0, 1),
    "HD": (350.0, 1), "COST": (900.0, 3), "NFLX": (105.0, 3), "AMD": (210.0, 3),
}
DEFAULT_SYMBOLS: tuple[str, ...] = tuple(_LISTINGS)

# Relative message rates: the busy names get most of the flow.
_ACTIVITY = {"NVDA": 10, "TSLA": 8, "AAPL": 7, "AMD": 5, "AMZN": 5, "MSFT": 5,
             "META": 4, "GOOGL": 4, "AVGO": 3}

# Polygon exchange ids: 12 Nasdaq, 10 NYSE, 11 Arca, 8 EDGX, 19 BZX, 21 MEMX,
# 15 IEX, 7 EDGA, 18 BYX, 2 BX, 17 PSX, 20 Pearl; 4 is the FINRA TRF (off
# exchange), which prints trades but never quotes.
_QUOTE_EXCHANGES = (12, 10, 11, 8, 19, 21, 15, 7, 18, 2, 17, 20)
_QUOTE_WEIGHTS = (18, 12, 12, 10, 10, 8, 6, 5, 5, 5, 4, 4)
_TRADE_EXCHANGES = (4, *_QUOTE_EXCHANGES)
_TRADE_WEIGHTS = (35, *_QUOTE_WEIGHTS)

# Polygon trade conditions: 0 regular sale, 37 odd lot, 14 intermarket sweep,
# 41 trade-through exempt. Quote condition 0 is a regular two-sided quote.
_REGULAR, _ODD_LOT, _SWEEP = (0,), (37,), (14, 41)

_TRADE_SHARE = 0.3        # quotes outnumber trades, as on a real feed
_ODD_LOT_SHARE = 0.2
_SWEEP_SHARE = 0.05
_SIGMA = 0.0004           # log-price step per event of a symbol
_REVERSION = 0.002        # pull back toward the start price, per step
_SPREAD_BPS = (0.2, 3.0)  # quoted spread, in basis points of the price
_SPREAD_MS = 250          # one tick's events are spread over this window


class DemoMarket:
    """A seeded market of `symbols`; each `tick` advances it by `n` events."""

    def __init__(self, symbols: tuple[str, ...] = DEFAULT_SYMBOLS, seed: int = 0):
        if not symbols:
            raise ValueError("DemoMarket needs at least one symbol")
        self.symbols = tuple(symbols)
        self._rng = random.Random(seed)
        self._weights = [_ACTIVITY.get(s, 1) for s in self.symbols]
        self._anchor: dict[str, float] = {}
        self._log_mid: dict[str, float] = {}
        self._tape: dict[str, int] = {}
        self._seq: dict[str, int] = {}
        for sym in self.symbols:
            price, tape = _LISTINGS.get(sym, (0.0, 3))
            if not price:
                price = round(self._rng.uniform(10.0, 500.0), 2)
            self._anchor[sym] = self._log_mid[sym] = math.log(price)
            self._tape[sym] = tape
            self._seq[sym] = self._rng.randrange(1_000_000, 50_000_000)
        self._trade_id = self._rng.randrange(1, 100_000)
        self._last_t = 0

    def tick(self, now_ms: int, n: int) -> list[dict]:
        """The next `n` trades and quotes, timestamped within the last moments up to `now_ms`."""
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        rng = self._rng
        lo = min(now_ms, max(self._last_t, now_ms - _SPREAD_MS))
        times = sorted(rng.randint(lo, now_ms) for _ in range(n))
        self._last_t = max(self._last_t, now_ms)
        syms = rng.choices(self.symbols, self._weights, k=n)
        return [self._event(sym, t) for sym, t in zip(syms, times, strict=True)]

    def _event(self, sym: str, t: int) -> dict:
        bid_c, ask_c = self._step(sym)
        self._seq[sym] += self._rng.randint(1, 40)
        if self._rng.random() < _TRADE_SHARE:
            return self._trade(sym, t, bid_c, ask_c)
        return self._quote(sym, t, bid_c, ask_c)

    def _step(self, sym: str) -> tuple[int, int]:
        """Move the symbol's price; return its bid and ask in cents (bid < ask)."""
        rng = self._rng
        x = self._log_mid[sym]
        x += _REVERSION * (self._anchor[sym] - x) + rng.gauss(0.0, _SIGMA)
        self._log_mid[sym] = x
        mid_c = math.exp(x) * 100
        spread_c = max(1, round(mid_c * rng.uniform(*_SPREAD_BPS) / 10_000))
        bid_c = max(1, round(mid_c - spread_c / 2))
        return bid_c, bid_c + spread_c

    def _trade(self, sym: str, t: int, bid_c: int, ask_c: int) -> dict:
        rng = self._rng
        x = rng.choices(_TRADE_EXCHANGES, _TRADE_WEIGHTS)[0]
        if x == 4 and rng.random() < 0.3:
            price = round((bid_c + ask_c) / 200, 4)  # off-exchange midpoint print
        else:
            price = rng.randint(bid_c, ask_c) / 100
        if rng.random() < _ODD_LOT_SHARE:
            size, conditions = rng.randint(1, 99), _ODD_LOT
        else:
            size = 100 * rng.choice((1, 1, 1, 1, 2, 2, 3, 4, 5, 10))
            conditions = _SWEEP if rng.random() < _SWEEP_SHARE else _REGULAR
        self._trade_id += rng.randint(1, 9)
        return {"ev": "T", "sym": sym, "i": str(self._trade_id), "x": x, "p": price,
                "s": size, "c": list(conditions), "t": t, "q": self._seq[sym],
                "z": self._tape[sym]}

    def _quote(self, sym: str, t: int, bid_c: int, ask_c: int) -> dict:
        rng = self._rng
        bx, ax = rng.choices(_QUOTE_EXCHANGES, _QUOTE_WEIGHTS, k=2)
        return {"ev": "Q", "sym": sym, "bx": bx, "bp": bid_c / 100,
                "bs": 100 * rng.randint(1, 30), "ax": ax, "ap": ask_c / 100,
                "as": 100 * rng.randint(1, 30), "c": 0, "t": t, "q": self._seq[sym],
                "z": self._tape[sym]}
