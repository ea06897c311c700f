"""Inputs and validator for ``apps/market_spread.py``.

As Wallaroo's generator (seeded here): over 20 symbols, 10 "good" ones get quotes with a spread
under 0.05 and 10 "bad" ones a spread of 1.0; ``n`` (default 1000) quotes for each group go to
source 1 (market data), then ``n`` orders on good symbols and ``n`` on bad ones go to source 0.
Send the market data FIRST (``SEND_ORDER``) and let it be applied before the orders: the expected
output assumes every quote was applied before any order.

Expected output: one record per order on a bad symbol, carrying the symbol's last bid/offer. The
validator compares the SET of records minus the 8-byte timestamp both ways (as Wallaroo's), so
at-least-once duplicates are accepted.

    msgs = inputs(seed=0)                     # [orders, market data]
    validate(parse_output(sink_bytes), msgs)
"""

from __future__ import annotations

import random
import struct
from typing import NamedTuple

from apps.data import frame, show, split_frames, tcp_app_args

SOURCES = 2
SEND_ORDER = [1, 0]
GOOD_SYMBOLS = ("ACME", "BOLT", "CODA", "DAWN", "ECHO", "FERN", "GEM", "HAWK", "IRIS", "JADE")
BAD_SYMBOLS = ("KITE", "LARK", "MINT", "NOVA", "OAK", "PLUM", "QUAY", "REED", "SAGE", "TIDE")
ORDER_FMT = ">BBI6s4sdd21s"
NBBO_FMT = ">B4s21sdd"
RESULT_FMT = ">HI6s4sddddQ"
_TIME = b"20180518-12:00:00.000"  # 21 bytes, as the FIX-ish field


class Rejection(NamedTuple):
    """One output record (a rejected order)."""

    side: int
    account: int
    order_id: str
    symbol: str
    qty: float
    price: float
    bid: float
    offer: float
    timestamp: int


def inputs(n: int | None = None, seed: int = 0) -> list[list[bytes]]:
    """``[orders, market_data]``: ``2n`` framed orders and ``2n`` framed quotes (default n=1000)."""
    rng = random.Random(seed)
    count = 1000 if n is None else n
    quotes = []
    for group, spread in ((GOOD_SYMBOLS, None), (BAD_SYMBOLS, 1.0)):
        for i in range(count):
            symbol = group[i % len(group)]  # every symbol gets quotes
            bid = round(rng.uniform(50, 150), 2)
            offer = bid + (spread if spread is not None else rng.choice((0.01, 0.02, 0.03)))
            quotes.append(struct.pack(NBBO_FMT, 2, symbol.rjust(4).encode(), _TIME, bid, offer))
    rng.shuffle(quotes)
    orders = []
    for i in range(2 * count):
        group = GOOD_SYMBOLS if i < count else BAD_SYMBOLS
        orders.append(
            struct.pack(
                ORDER_FMT, 1, rng.choice((1, 2)), rng.randrange(2**32), f"O{i:05d}".encode(),
                rng.choice(group).rjust(4).encode(), float(rng.randint(1, 1000)),
                round(rng.uniform(50, 150), 2), _TIME,
            )
        )
    rng.shuffle(orders)
    return [[frame(o) for o in orders], [frame(q) for q in quotes]]


def expected(inputs: list[list[bytes]]) -> set[tuple]:
    """The rejection records minus their timestamp, as tuples ``Rejection(...)[:8]``."""
    quotes: dict[str, tuple[float, float, bool]] = {}
    for payload in split_frames(b"".join(inputs[1])):
        _, symbol, _, bid, offer = struct.unpack(NBBO_FMT, payload)
        spread, mid = offer - bid, (bid + offer) / 2.0
        quotes[symbol.decode()] = (bid, offer, spread >= 0.05 or spread / mid >= 0.05)
    out = set()
    for payload in split_frames(b"".join(inputs[0])):
        _, side, account, order_id, symbol, qty, price, _ = struct.unpack(ORDER_FMT, payload)
        bid, offer, reject = quotes.get(symbol.decode(), (0.0, 0.0, True))
        if reject:
            out.add((side, account, order_id.decode(), symbol.decode(), qty, price, bid, offer))
    return out


def parse_output(data: bytes) -> list[Rejection]:
    """One ``Rejection`` per ``>I``-framed 56-byte ``>HI6s4sddddQ`` record."""
    size = struct.calcsize(RESULT_FMT)
    out = []
    for i, payload in enumerate(split_frames(data)):
        assert len(payload) == size, (
            f"market_spread: output record {i} has a {len(payload)}-byte payload; expected "
            f"{size} bytes ({RESULT_FMT}: side, account, order id, symbol, qty, price, bid, "
            "offer, timestamp)"
        )
        side, account, order_id, symbol, *rest = struct.unpack(RESULT_FMT, payload)
        out.append(Rejection(side, account, order_id.decode("ascii", errors="replace"),
                             symbol.decode("ascii", errors="replace"), *rest))
    return out


def validate(records: list, inputs: list[list[bytes]]) -> None:
    """The set of rejected orders (ignoring timestamps) equals the expected set, both ways."""
    want = expected(inputs)
    got = {tuple(r)[:8] for r in records}
    missing = want - got
    unexpected = got - want
    assert not missing and not unexpected, (
        f"market_spread: received {len(got)} distinct rejections ({len(records)} records), "
        f"expected {len(want)}; {len(missing)} expected rejection(s) missing {show(missing, 3)}; "
        f"{len(unexpected)} unexpected rejection(s) {show(unexpected, 3)} (fields: side, "
        "account, order id, symbol, qty, price, bid, offer)"
    )


def app_args(in_addrs: list[tuple[str, int]], out_addrs: list[tuple[str, int]]) -> list[str]:
    """``["prog", "--in", "<orders addr>,<market data addr>", "--out", "<sink addr>"]``."""
    return tcp_app_args(in_addrs, out_addrs, SOURCES)
