"""The CPU-bound benchmark app: TCP source -> ``to_parallel(burn)`` -> ``to(forward)`` -> sink.

``burn`` spends about ``--work`` iterations of pure Python per message (default 20,000: about
1 ms here) and runs in ``--processes`` worker processes (default 1: in the server process
itself). Only its map vertex is measured (bench/parallel.py); values between vertices are raw
bytes (identity ``serialize``/``deserialize``), so the figure is the step and the framework.

    python -m nfbuilder serve --unordered --app bench.cpu_app --vertex burn -- \
        --in 127.0.0.1:7000 --out 127.0.0.1:7001 --processes 2
"""

from __future__ import annotations

import nfbuilder as wallaroo

WORK = 20_000


def application_setup(args: list[str]) -> list[tuple[object, ...]]:
    global WORK
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    processes = int(args[args.index("--processes") + 1]) if "--processes" in args else 1
    if "--work" in args:
        WORK = int(args[args.index("--work") + 1])
    step = wallaroo.computation(name="burn", processes=processes)(_burn)
    ab = wallaroo.ApplicationBuilder("bench cpu")
    ab.new_pipeline("cpu", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to_parallel(step)
    ab.to(forward)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()  # type: ignore[no-any-return]


def _burn(data: bytes) -> bytes:
    total = 0
    for i in range(WORK):
        total += i * i % 7
    return data if total >= 0 else b""


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs: bytes) -> bytes:
    return bs


@wallaroo.computation(name="forward")
def forward(data: bytes) -> bytes:
    return data


@wallaroo.encoder
def encode(data: bytes) -> bytes:
    return data


def serialize(obj: bytes) -> bytes:
    return obj


def deserialize(data: bytes) -> bytes:
    return data
