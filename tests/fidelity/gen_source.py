"""Regression app: a Wallaroo 0.5.4 ``GenSourceConfig`` (as Wallaroo's resilience tests feed
their apps): the generator counts 1, 2, ... up to ``--count`` (default 50), then ends; the app
keeps a running total per residue mod 2 and emits ``"<n> <total>"`` lines."""

import nfbuilder as wallaroo


class Counting:
    def __init__(self, last):
        self.last = last

    def initial_value(self):
        return 1

    def apply(self, previous):
        return previous + 1 if previous < self.last else None


def application_setup(args):
    last = int(args[args.index("--count") + 1]) if "--count" in args else 50
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("Generated")
    ab.new_pipeline("numbers", wallaroo.GenSourceConfig(Counting(last)))
    ab.to_state_partition(add, Total, "totals", parity, ["0", "1"])
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


class Total:
    def __init__(self):
        self.total = 0


@wallaroo.partition
def parity(n):
    return str(n % 2)


@wallaroo.state_computation(name="add")
def add(n, state):
    state.total += n
    return (n, state.total), True


@wallaroo.encoder
def encode(pair):
    return f"{pair[0]} {pair[1]}\n".encode()
