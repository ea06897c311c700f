"""Regression app: the app's own ``serialize`` knows only what crosses workers (str). In Wallaroo
the sink's encoder ran with the last step, so the tuples the last step makes were never
serialized. Input frames are words; the output is ``"<word>:<length>"`` lines."""

import nfbuilder as wallaroo


def application_setup(args):
    return _build(args, crossing=False)


def crossing_setup(args):
    """The same with one more step after ``measure``: its tuples must cross a hop, and this
    ``serialize`` cannot send them (a clear error names the step and the type)."""
    return _build(args, crossing=True)


def _build(args, crossing):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("Narrow Serialize")
    ab.new_pipeline("words", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to(measure)
    if crossing:
        ab.to(upper_first)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


def serialize(obj):
    return obj.encode() if isinstance(obj, str) else None


def deserialize(data):
    return data.decode()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode()


@wallaroo.computation(name="measure")
def measure(word):
    return (word, len(word))


@wallaroo.computation(name="upper first")
def upper_first(pair):
    return (pair[0].capitalize(), pair[1])


@wallaroo.encoder
def encode(pair):
    return f"{pair[0]}:{pair[1]}\n".encode()
