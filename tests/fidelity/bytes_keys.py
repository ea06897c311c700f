"""Regression app: a partition function returning bytes, partition keys declared as bytes and
as str (Wallaroo 0.5.4 on Python 3 made b"kw" and "kw" one key). Input frames are text
``"<key> <n>"``; the state adds up ``n`` per key and emits ``"<key> <total>"``."""

import nfbuilder as wallaroo

KEYS = [b"kw", "ab", b"zz"]


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("Bytes Keys")
    ab.new_pipeline("totals", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to_state_partition(add, Total, "totals", by_key, KEYS)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


class Total:
    def __init__(self):
        self.total = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    key, n = bs.split(b" ")
    return key, int(n)


@wallaroo.partition
def by_key(data):
    return data[0]  # bytes


@wallaroo.state_computation(name="add")
def add(data, state):
    state.total += data[1]
    return (data[0], state.total), True


@wallaroo.encoder
def encode(data):
    return data[0] + b" " + str(data[1]).encode() + b"\n"
