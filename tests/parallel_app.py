"""An app whose one step runs in two worker processes, for the tests.

``--mode ordered``: a serial ``to`` step (an ordered vertex: batches split among the workers,
answered in order); ``--mode unordered``: ``to_parallel``. Each output is ``word:pid`` (the
worker that computed it); the word ``fail`` fails the step (dead letter).

    application_setup(["prog", "--in", "h:p", "--out", "h:p", "--mode", "ordered"])
"""

import os

import nfbuilder as wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    mode = args[args.index("--mode") + 1]
    ab = wallaroo.ApplicationBuilder(f"Parallel {mode}")
    ab.new_pipeline(mode, wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    if mode == "ordered":
        ab.to(tag)
    else:
        ab.to_parallel(tag)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode()


@wallaroo.computation(name="tag", processes=2)
def tag(word):
    if word == "fail":
        raise ValueError("cannot tag 'fail'")
    total = 0
    for i in range(3000):  # a little CPU, so batches overlap the workers
        total += i
    return f"{word}:{os.getpid()}"


@wallaroo.encoder
def encoder(x):
    return (x + "\n").encode()
