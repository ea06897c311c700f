"""Enrich Orders: an ``async def`` step that awaits a lookup for every message.

One pipeline: TCP source (4-byte big-endian length + ``customer,amount`` text) -> ``parse`` ->
``enrich`` (``to_parallel``, async: awaits the customer's record from a directory service) ->
TCP sink writing ``customer,name,tier,amount`` lines.

The directory is an in-process async service standing in for a remote one (a database, an
HTTP API): each lookup takes ``--lookup-ms`` milliseconds (default 200) of waiting, not of
CPU. On an unordered vertex up to ``concurrency`` messages wait at once, so 100 orders take
about one lookup's time rather than a hundred; a lookup that hangs past ``timeout`` is a step
error, and the order becomes a dead letter.

    nfbuilder run apps/async_enrich.py -- --in 127.0.0.1:7010 --out 127.0.0.1:7002
"""

import asyncio

import nfbuilder as wallaroo

#: how long a lookup waits, in seconds (``--lookup-ms``)
LOOKUP_S = 0.2


def application_setup(args: list[str]) -> list[tuple]:
    """Wallaroo entry point: ``application_setup(["prog", "--in", "h:p", "--out", "h:p"])``."""
    global LOOKUP_S
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    if "--lookup-ms" in args:
        LOOKUP_S = int(args[args.index("--lookup-ms") + 1]) / 1000

    ab = wallaroo.ApplicationBuilder("Enrich Orders")
    ab.new_pipeline("orders", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to(parse)
    ab.to_parallel(enrich)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


class Directory:
    """The customer directory: ``await DIRECTORY.lookup("c7")`` -> ``("Customer 7", "gold")``.

    Made on first use, in the step's event loop (an asyncio object belongs to one loop)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # an async resource shared by every waiting message
        self.lookups = 0

    async def lookup(self, customer: str) -> tuple[str, str]:
        async with self.lock:
            self.lookups += 1
        await asyncio.sleep(LOOKUP_S)  # the round trip to the service
        number = int(customer.lstrip("c") or 0)
        return f"Customer {number}", ("gold", "silver", "bronze")[number % 3]


_directory: Directory | None = None


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs: bytes) -> str:
    return bs.decode("utf-8")


@wallaroo.computation(name="parse")
def parse(line: str) -> tuple[str, int] | None:
    customer, _, amount = line.partition(",")
    if not customer or not amount.strip().isdigit():
        return None  # not an order: filtered
    return customer.strip(), int(amount)


@wallaroo.computation(name="enrich", timeout=5.0, concurrency=64)
async def enrich(order: tuple[str, int]) -> tuple[str, str, str, int]:
    global _directory
    if _directory is None:
        _directory = Directory()
    customer, amount = order
    name, tier = await _directory.lookup(customer)
    return customer, name, tier, amount


@wallaroo.encoder
def encoder(row: tuple[str, str, str, int]) -> bytes:
    return (",".join(str(x) for x in row) + "\n").encode("utf-8")
