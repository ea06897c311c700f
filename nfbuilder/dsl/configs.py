"""Source and sink configurations and the StateBuilder, with Wallaroo's tuple forms.

``to_tuple()`` gives exactly what Wallaroo's ``build()`` put into its action list::

    TCPSourceConfig("127.0.0.1", "7010", decode).to_tuple()
    # ('tcp', '127.0.0.1', '7010', decode)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nfbuilder.dsl.args import (
    KAFKA_INTERNAL,
    kafka_parse_sink_options,
    kafka_parse_source_options,
)


class TCPSourceConfig:
    """Listen on ``host:port`` for Wallaroo-framed messages and decode them with ``decoder``."""

    def __init__(self, host: str, port: str, decoder: Any) -> None:
        self.host, self.port, self.decoder = host, port, decoder

    def to_tuple(self) -> tuple[Any, ...]:
        return ("tcp", self.host, self.port, self.decoder)


class TCPSinkConfig:
    """Connect to ``host:port`` and write ``encoder(output)`` bytes as they are."""

    def __init__(self, host: str, port: str, encoder: Any) -> None:
        self.host, self.port, self.encoder = host, port, encoder

    def to_tuple(self) -> tuple[Any, ...]:
        return ("tcp", self.host, self.port, self.encoder)


class KafkaSourceConfig:
    """Consume ``topic`` from ``brokers`` (a list of ``(host, port)``), decoding each record."""

    def __init__(self, topic: str, brokers: Any, log_level: str, decoder: Any) -> None:
        self.topic, self.brokers, self.log_level, self.decoder = topic, brokers, log_level, decoder

    def to_tuple(self) -> tuple[Any, ...]:
        return ("kafka", self.topic, self.brokers, self.log_level, self.decoder)


class KafkaSinkConfig:
    """Produce ``encoder(output)`` = ``(value, key)`` records to ``topic``."""

    def __init__(
        self,
        topic: str,
        brokers: Any,
        log_level: str,
        max_produce_buffer_ms: int,
        max_message_size: int,
        encoder: Any,
    ) -> None:
        self.topic, self.brokers, self.log_level = topic, brokers, log_level
        self.max_produce_buffer_ms, self.max_message_size = max_produce_buffer_ms, max_message_size
        self.encoder = encoder

    def to_tuple(self) -> tuple[Any, ...]:
        return (
            "kafka",
            self.topic,
            self.brokers,
            self.log_level,
            self.max_produce_buffer_ms,
            self.max_message_size,
            self.encoder,
        )


class CustomKafkaSourceCLIParser:
    """Wallaroo 0.5: a Kafka source configured from ``args`` (``--kafka_source_topic``,
    ``--kafka_source_brokers``, ``--kafka_source_log_level``); the same config as
    ``KafkaSourceConfig(*kafka_parse_source_options(args), decoder)``."""

    def __init__(self, args: Sequence[str], decoder: Any) -> None:
        self.topic, self.brokers, self.log_level = kafka_parse_source_options(args)
        self.decoder = decoder

    def to_tuple(self) -> tuple[Any, ...]:
        return ("kafka", self.topic, self.brokers, self.log_level, self.decoder)


class CustomKafkaSinkCLIParser:
    """Wallaroo 0.5: a Kafka sink configured from ``args`` (``--kafka_sink_topic``, ...)."""

    def __init__(self, args: Sequence[str], encoder: Any) -> None:
        (self.topic, self.brokers, self.log_level, self.max_produce_buffer_ms,
         self.max_message_size) = kafka_parse_sink_options(args)
        self.encoder = encoder

    def to_tuple(self) -> tuple[Any, ...]:
        return ("kafka", self.topic, self.brokers, self.log_level, self.max_produce_buffer_ms,
                self.max_message_size, self.encoder)


class DefaultKafkaSourceCLIParser:
    """Wallaroo 0.5: a Kafka source whose settings come from the application's command line,
    under ``name``: ``--<name>_topic``, ``--<name>_brokers``, ``--<name>_log_level``."""

    def __init__(self, decoder: Any, name: str = "kafka_source") -> None:
        self.decoder, self.name = decoder, name

    def to_tuple(self) -> tuple[Any, ...]:
        return (KAFKA_INTERNAL, self.name, self.decoder)


class DefaultKafkaSinkCLIParser:
    """Wallaroo 0.5: a Kafka sink whose settings come from the command line, under ``name``
    (``--<name>_topic``, ``_brokers``, ``_log_level``, ``_max_produce_buffer_ms``,
    ``_max_message_size``)."""

    def __init__(self, encoder: Any, name: str = "kafka_sink") -> None:
        self.encoder, self.name = encoder, name

    def to_tuple(self) -> tuple[Any, ...]:
        return (KAFKA_INTERNAL, self.name, self.encoder)


class GenSourceConfig:
    """Wallaroo 0.5.4: a source fed by a generator object with ``initial_value()`` (the first
    message) and ``apply(previous)`` (the next one); a ``None`` ends the stream."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def to_tuple(self) -> tuple[Any, ...]:
        return ("gen", self.generator)


class UserSourceConfig:
    """A source written by the user: ``source`` reads records and is told which are done,
    in the shape of Numaflow's user-defined sources::

        class Lines:
            def read(self, n, timeout_s):   # up to n Records (or (offset, value) pairs),
                ...                         # waiting at most timeout_s for the first
            def ack(self, offsets): ...     # these are fully processed (may repeat)
            def nack(self, offsets): ...    # read these again (optional: no re-reads)
            def pending(self): ...          # records not read yet; None when unknown (optional)
            def partitions(self): ...       # the partitions read (optional: [replica])

        UserSourceConfig(Lines("in.txt"), decoder=None)

    Methods may be ``async def``. With a ``decoder`` each record's value is bytes, decoded as
    a TCP frame's payload is; without one the value is the message itself (picklable)."""

    def __init__(self, source: Any, decoder: Any = None) -> None:
        self.source, self.decoder = source, decoder

    def to_tuple(self) -> tuple[Any, ...]:
        return ("user", self.source, self.decoder)


class StateBuilder:
    """Names a state and knows how to build a fresh one (``state_cls()``)."""

    def __init__(self, name: str, state_cls: Any) -> None:
        self.name = name
        self.state_cls = state_cls

    def ____wallaroo_build____(self) -> Any:
        return self.state_cls()

    def __repr__(self) -> str:
        return f"StateBuilder({self.name!r}, {getattr(self.state_cls, '__name__', self.state_cls)})"
