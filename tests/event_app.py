"""A TCP app whose decoder gives each message its event time (``EventTime``) from the payload
``"<epoch seconds>,<word>"``; ``--kafka`` reads the same from a Kafka topic instead.

    application_setup(["prog", "--in", "h:p", "--out", "h:p"])
"""

import nfbuilder as wallaroo


def application_setup(args):
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("Event Times")
    if "--kafka" in args:
        source = wallaroo.KafkaSourceConfig("in", [("127.0.0.1", "9092")], "Warn", decoder)
    else:
        in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
        source = wallaroo.TCPSourceConfig(in_host, in_port, decoder)
    ab.new_pipeline("timed", source)
    ab.to(upper)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    seconds, word = bs.decode().split(",", 1)
    if seconds == "bad":
        return wallaroo.EventTime(word, "not a time")
    return wallaroo.EventTime(word, float(seconds))


@wallaroo.computation(name="upper")
def upper(word):
    return word.upper()


@wallaroo.encoder
def encoder(x):
    return (x + "\n").encode()
