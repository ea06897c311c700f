"""Regression app: ``to_state_partition`` (not ``_u64``) with a partition function returning an
int; Wallaroo 0.5.4 keyed the state with ``chr(result)``, so the declared keys are those
characters. Input frames
are numbers; the state counts the numbers per residue mod 3 and emits ``"<residue> <count>"``."""

import nfbuilder as wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("Int Keys")
    ab.new_pipeline("residues", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to_state_partition(count, Count, "counts", residue, ["u", "v", "w"])
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


class Count:
    def __init__(self):
        self.n = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return int(bs)


@wallaroo.partition
def residue(data):
    return 117 + data % 3  # 'u', 'v', 'w' once chr() is applied


@wallaroo.state_computation(name="count")
def count(data, state):
    state.n += 1
    return (data % 3, state.n), True


@wallaroo.encoder
def encode(data):
    return f"{data[0]} {data[1]}\n".encode()
