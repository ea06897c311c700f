"""Reverse Word: reverse every UTF-8 string it receives (Wallaroo's ``reverse`` example).

One pipeline: TCP source (4-byte big-endian length + UTF-8 text) -> ``reverse`` -> TCP sink that
writes each reversed word followed by a newline.

Run it locally and feed it with the generator in ``apps/data/reverse.py``::

    nfbuilder run apps/reverse.py -- --in 127.0.0.1:7010 --out 127.0.0.1:7002

(a receiver such as ``nc -l 7002`` must listen on the ``--out`` address).
"""

import nfbuilder as wallaroo


def application_setup(args: list[str]) -> list[tuple]:
    """Wallaroo entry point: ``application_setup(["prog", "--in", "h:p", "--out", "h:p"])``."""
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("Reverse Word")
    ab.new_pipeline("reverse", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to(reverse)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs: bytes) -> str:
    return bs.decode("utf-8")


@wallaroo.computation(name="reverse")
def reverse(data: str) -> str:
    return data[::-1]


@wallaroo.encoder
def encoder(data: str) -> bytes:
    # The TCP sink writes bytes as they are: the newline is the record separator.
    return (data + "\n").encode("utf-8")
