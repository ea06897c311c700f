"""Market spread: reject orders for symbols whose market is too wide (Wallaroo's
``market_spread`` example, 0.4.3). Two pipelines share one partitioned state.

- ``Market Data`` (second ``--in`` address): framed 42-byte NBBO quotes ``>B4s21sdd`` (type 2,
  symbol, time, bid, offer) -> ``update market data`` on state ``"symbol-data"`` -> ``done()``
  (no sink: it only updates the state). A symbol's trades are rejected while
  ``offer - bid >= 0.05`` or ``(offer - bid) / mid >= 0.05``.
- ``Orders`` (first ``--in`` address): framed 53-byte orders ``>BBI6s4sdd21s`` (type 1, side,
  account, order id, symbol, quantity, price, time) -> ``check order`` on the same state ->
  TCP sink writing one framed ``>HI6s4sddddQ`` record per REJECTED order (side, account, order
  id, symbol, quantity, price, the symbol's last bid and offer, a timestamp).

The state is partitioned by symbol (``to_state_partition_u64``; the key is the 4-character,
space-padded symbol read as a little-endian integer; keys are the symbols in ``SYMBOLS``). Send
the market data first, then the orders::

    nfbuilder run apps/market_spread.py -- --in 127.0.0.1:7010,127.0.0.1:7011 --out 127.0.0.1:7002

``apps/data/market_spread.py`` generates both streams.
"""

import pickle
import struct
import time

import nfbuilder as wallaroo

#: The tradable symbols (our own list); each gets a state partition.
SYMBOLS = [
    "AAB", "ABLE", "ACME", "ADZ", "AGRO", "ALBA", "ALTO", "AMBR", "ANVL", "APEX", "ARC",
    "ARGO", "ASTR", "ATOM", "AURA", "AVN", "AXL", "AZUR", "BALM", "BARK", "BASN", "BEAM",
    "BERG", "BIRC", "BLIP", "BOLT", "BRIX", "BRK", "BUOY", "CALX", "CANO", "CAPE", "CEDR",
    "CHIP", "CIRC", "CLAY", "COBL", "CODA", "COG", "CORL", "CRUX", "CYAN", "DALE", "DAWN",
    "DELT", "DIAL", "DOCK", "DUNE", "ECHO", "EDGE", "ELM", "EMBR", "ENVY", "EPIC", "FABL",
    "FERN", "FIG", "FJRD", "FLUX", "FOAM", "FORT", "GALE", "GEM", "GLOW", "GRIT", "HALO",
    "HAWK", "HELM", "HIVE", "HUE", "ICON", "INKY", "IRIS", "IVY", "JADE", "JOLT", "KILN",
    "KITE", "KNOT", "LARK", "LOFT", "LUNA", "LYNX", "MAPL", "MESA", "MINT", "MOSS", "NEON",
    "NOVA", "OAK", "OPAL", "ORCA", "PALM", "PIKE", "PLUM", "QUAY", "QUIL", "RAFT", "REED",
    "RIDG", "ROOK", "SAGE", "SILO", "SLAT", "SPUR", "TALC", "TIDE", "TOPZ", "TUSK", "UMBR",
    "VALE", "VOLT", "WREN", "YAWL", "ZEST", "ZINC",
]


def application_setup(args: list[str]) -> list[tuple]:
    """Wallaroo entry point: ``application_setup(["prog", "--in", "h:p,h:p", "--out", "h:p"])``
    (first ``--in`` address: orders; second: market data)."""
    input_addrs = wallaroo.tcp_parse_input_addrs(args)
    order_host, order_port = input_addrs[0]
    nbbo_host, nbbo_port = input_addrs[1]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    symbol_partitions = [str_to_partition(symbol.rjust(4)) for symbol in SYMBOLS]

    ab = wallaroo.ApplicationBuilder("market-spread")
    ab.new_pipeline("Orders", wallaroo.TCPSourceConfig(order_host, order_port, order_decoder))
    ab.to_state_partition_u64(
        check_order, SymbolData, "symbol-data", symbol_partition_function, symbol_partitions
    )
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, order_result_encoder))
    ab.new_pipeline(
        "Market Data", wallaroo.TCPSourceConfig(nbbo_host, nbbo_port, market_data_decoder)
    )
    ab.to_state_partition_u64(
        update_market_data, SymbolData, "symbol-data", symbol_partition_function,
        symbol_partitions,
    )
    ab.done()
    return ab.build()


# The 0.4 example spelled out pickle-based hooks; nfbuilder uses them for messages and state.
def serialize(o: object) -> bytes:
    return pickle.dumps(o)


def deserialize(bs: bytes) -> object:
    return pickle.loads(bs)


def str_to_partition(symbol: str) -> int:
    """The partition key of a 4-character symbol: its bytes read as a little-endian integer."""
    return int.from_bytes(symbol.encode("ascii"), "little")


class MarketSpreadError(Exception):
    """A message of the wrong type arrived on a source."""


class SymbolData:
    """The state of one symbol: its last quote and whether its trades are rejected."""

    def __init__(self, last_bid: float = 0.0, last_offer: float = 0.0,
                 should_reject_trades: bool = True) -> None:
        self.last_bid = last_bid
        self.last_offer = last_offer
        self.should_reject_trades = should_reject_trades


class Order:
    """A decoded order message."""

    def __init__(self, side: int, account: int, order_id: str, symbol: str, qty: float,
                 price: float, transact_time: str) -> None:
        self.side = side
        self.account = account
        self.order_id = order_id
        self.symbol = symbol
        self.qty = qty
        self.price = price
        self.transact_time = transact_time


class MarketDataMessage:
    """A decoded NBBO quote."""

    def __init__(self, symbol: str, transact_time: str, bid: float, offer: float) -> None:
        self.symbol = symbol
        self.transact_time = transact_time
        self.bid = bid
        self.offer = offer
        self.mid = (bid + offer) / 2.0


class OrderResult:
    """A rejected order with the quote it was rejected against."""

    def __init__(self, order: Order, bid: float, offer: float, timestamp: int) -> None:
        self.order = order
        self.bid = bid
        self.offer = offer
        self.timestamp = timestamp


@wallaroo.partition
def symbol_partition_function(data: Order | MarketDataMessage) -> int:
    return str_to_partition(data.symbol)


@wallaroo.state_computation(name="check order")
def check_order(data: Order, state: SymbolData) -> tuple[OrderResult | None, bool]:
    if state.should_reject_trades:
        ts = int(time.time() * 100000)
        return (OrderResult(data, state.last_bid, state.last_offer, ts), False)
    return (None, False)


@wallaroo.state_computation(name="update market data")
def update_market_data(data: MarketDataMessage, state: SymbolData) -> tuple[None, bool]:
    spread = data.offer - data.bid
    state.should_reject_trades = spread >= 0.05 or spread / data.mid >= 0.05
    state.last_bid = data.bid
    state.last_offer = data.offer
    return (None, True)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def order_decoder(bs: bytes) -> Order:
    if bs[:1] != b"\x01" or len(bs) != 53:
        raise MarketSpreadError(
            f"Wrong Fix message on the orders source: type {bs[0] if bs else None}, "
            f"{len(bs)} bytes; orders must be type 1, 53 bytes (>BBI6s4sdd21s)")
    (_, side, account, order_id, symbol, qty, price,
     transact_time) = struct.unpack(">BBI6s4sdd21s", bs)
    return Order(side, account, order_id.decode("ascii"), symbol.decode("ascii"), qty, price,
                 transact_time.decode("ascii"))


@wallaroo.decoder(header_length=4, length_fmt=">I")
def market_data_decoder(bs: bytes) -> MarketDataMessage:
    if bs[:1] != b"\x02" or len(bs) != 42:
        raise MarketSpreadError(
            f"Wrong Fix message on the market data source: type {bs[0] if bs else None}, "
            f"{len(bs)} bytes; NBBO quotes must be type 2, 42 bytes (>B4s21sdd)")
    _, symbol, transact_time, bid, offer = struct.unpack(">B4s21sdd", bs)
    return MarketDataMessage(symbol.decode("ascii"), transact_time.decode("ascii"), bid, offer)


@wallaroo.encoder
def order_result_encoder(data: OrderResult) -> bytes:
    order = data.order
    payload = struct.pack(">HI6s4sddddQ", order.side, order.account,
                          order.order_id.encode("ascii"), order.symbol.encode("ascii"),
                          order.qty, order.price, data.bid, data.offer, data.timestamp)
    return struct.pack(">I", len(payload)) + payload
