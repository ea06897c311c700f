"""Regression app: Wallaroo 0.5's Kafka configuration from the command line. The source is a
``DefaultKafkaSourceCLIParser`` named ``numbers_in`` (flags ``--numbers_in_topic`` ...), the sink
a ``CustomKafkaSinkCLIParser`` reading ``--kafka_sink_*``; each record value is upper-cased."""

import nfbuilder as wallaroo


def application_setup(args):
    ab = wallaroo.ApplicationBuilder("Kafka Parsers")
    ab.new_pipeline("letters", wallaroo.DefaultKafkaSourceCLIParser(decode, name="numbers_in"))
    ab.to(upper)
    ab.to_sink(wallaroo.CustomKafkaSinkCLIParser(args, encode))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode()


@wallaroo.computation(name="upper")
def upper(text):
    return text.upper()


@wallaroo.encoder
def encode(text):
    return (text.encode(), None, None)  # 0.5: (value, key, partition)
