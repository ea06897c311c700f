"""The benchmark app: TCP source -> ``to_parallel(identity)`` -> ``to(forward)`` -> TCP sink,
in the Wallaroo API.

``identity`` is unordered (``to_parallel``), so its vertex serves unary map mode, as
pynumaflow's ``MapAsyncServer`` does (an ordered ``to`` step's vertex serves batch mode).

Only its ``identity`` map vertex is measured (bench/map_vertex.py); ``forward`` is there because
the sink's encoder runs with the last step, and the measured vertex must not encode. The app
defines identity ``serialize``/``deserialize`` hooks so that a message value between vertices is
the raw bytes:
the map server then does exactly what the pynumaflow identity handler does, and the benchmark
compares framework overhead rather than pickle.

    python -m nfbuilder serve --app bench.identity_app --vertex <map vertex> -- \
        --in 127.0.0.1:7000 --out 127.0.0.1:7001
"""

from __future__ import annotations

import struct

import nfbuilder as wallaroo


def application_setup(args: list[str]) -> list[tuple[object, ...]]:
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("bench identity")
    ab.new_pipeline("identity", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to_parallel(identity)
    ab.to(forward)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()  # type: ignore[no-any-return]


def serialize(obj: bytes) -> bytes:
    return obj


def deserialize(data: bytes) -> bytes:
    return data


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(data: bytes) -> bytes:
    return data


@wallaroo.computation(name="identity")
def identity(data: bytes) -> bytes:
    return data


@wallaroo.computation(name="forward")
def forward(data: bytes) -> bytes:
    return data


@wallaroo.encoder
def encode(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data
