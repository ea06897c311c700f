"""Regression app: the same computation three times in one pipeline (Wallaroo accepts it).
Input frames are integers; the output is each one times 8, a line each."""

import nfbuilder as wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("Twice")
    ab.new_pipeline("twice", wallaroo.TCPSourceConfig(in_host, in_port, number))
    ab.to(double).to(double).to(double)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, line))
    return ab.build()


@wallaroo.computation(name="double")
def double(data):
    return data * 2


@wallaroo.decoder(header_length=4, length_fmt=">I")
def number(bs):
    return int(bs)


@wallaroo.encoder
def line(data):
    return f"{data}\n".encode()
