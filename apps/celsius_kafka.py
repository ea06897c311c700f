"""Celsius to Fahrenheit over Kafka (Wallaroo's ``celsius-kafka`` example, 0.4.3).

One pipeline: Kafka source (each record value starts with a big-endian float32) ->
``multiply by 1.8`` -> ``add 32`` -> Kafka sink (value = the big-endian float32, no key).
Topics and brokers come from Wallaroo's Kafka flags::

    nfbuilder run apps/celsius_kafka.py -- \\
        --kafka_source_topic test-in --kafka_source_brokers 127.0.0.1:9092 \\
        --kafka_sink_topic test-out --kafka_sink_brokers 127.0.0.1:9092 \\
        --kafka_sink_max_message_size 100000 --kafka_sink_max_produce_buffer_ms 10

Produce 4-byte records to ``test-in`` (``apps/data/celsius_kafka.py`` makes them) and read
``test-out``.
"""

import struct

import nfbuilder as wallaroo


def application_setup(args: list[str]) -> list[tuple]:
    """Wallaroo entry point: ``application_setup(["prog", "--kafka_source_topic", "in", ...])``."""
    source = wallaroo.KafkaSourceConfig(*wallaroo.kafka_parse_source_options(args), decoder)
    sink = wallaroo.KafkaSinkConfig(*wallaroo.kafka_parse_sink_options(args), encoder)

    ab = wallaroo.ApplicationBuilder("Celsius to Fahrenheit with Kafka")
    ab.new_pipeline("convert temperature readings", source)
    ab.to(multiply)
    ab.to(add)
    ab.to_sink(sink)
    return ab.build()


# Kafka records are not framed: the header arguments are required by the decorator and unused.
@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs: bytes) -> float:
    if len(bs) < 4:
        return 0.0
    return struct.unpack(">f", bs[:4])[0]


@wallaroo.computation(name="multiply by 1.8")
def multiply(data: float) -> float:
    return data * 1.8


@wallaroo.computation(name="add 32")
def add(data: float) -> float:
    return data + 32


@wallaroo.encoder
def encoder(data: float) -> tuple[bytes, None]:
    # Wallaroo 0.4 Kafka encoders return (value, key); no key here.
    return (struct.pack(">f", data), None)
