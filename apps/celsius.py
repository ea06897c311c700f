"""Celsius to Fahrenheit: convert float32 temperatures (Wallaroo's ``celsius`` example, 0.4.3).

One pipeline: TCP source (4-byte big-endian length + a big-endian float32) -> ``multiply by 1.8``
-> ``add 32`` -> TCP sink writing each result framed the same way (``>I`` length 4 + ``>f``).

    nfbuilder run apps/celsius.py -- --in 127.0.0.1:7010 --out 127.0.0.1:7002

Feed it with ``apps/data/celsius.py`` (100 framed floats by default).
"""

import struct

import nfbuilder as wallaroo


def application_setup(args: list[str]) -> list[tuple]:
    """Wallaroo entry point: ``application_setup(["prog", "--in", "h:p", "--out", "h:p"])``."""
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("Celsius to Fahrenheit")
    ab.new_pipeline("Celsius Conversion", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to(multiply)
    ab.to(add)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs: bytes) -> float:
    return struct.unpack(">f", bs)[0]


@wallaroo.computation(name="multiply by 1.8")
def multiply(data: float) -> float:
    return data * 1.8


@wallaroo.computation(name="add 32")
def add(data: float) -> float:
    return data + 32


@wallaroo.encoder
def encoder(data: float) -> bytes:
    # Framed output (length 4, then the float32), as the 0.4 example wrote it.
    return struct.pack(">If", 4, data)
