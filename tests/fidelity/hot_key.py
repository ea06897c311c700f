"""Regression app: one hot key. Every message (an integer) goes to one to_stateful state that
counts the messages and sums their values, and emits ``"<count> <sum>"``: a message applied
twice or lost shows in the final count and sum."""

import nfbuilder as wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("Hot Key")
    ab.new_pipeline("hot", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to_stateful(add, Tally, "tally")
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


class Tally:
    def __init__(self):
        self.count = 0
        self.total = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return int(bs)


@wallaroo.state_computation(name="add")
def add(n, state):
    state.count += 1
    state.total += n
    return (state.count, state.total), True


@wallaroo.encoder
def encode(pair):
    return f"{pair[0]} {pair[1]}\n".encode()
