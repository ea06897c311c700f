"""Source and sink configurations and the StateBuilder, with Wallaroo's tuple forms.

``to_tuple()`` gives exactly what Wallaroo's ``build()`` put into its action list::

    TCPSourceConfig("127.0.0.1", "7010", decode).to_tuple()
    # ('tcp', '127.0.0.1', '7010', decode)
"""

from __future__ import annotations

from typing import Any


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


class StateBuilder:
    """Names a state and knows how to build a fresh one (``state_cls()``)."""

    def __init__(self, name: str, state_cls: Any) -> None:
        self.name = name
        self.state_cls = state_cls

    def ____wallaroo_build____(self) -> Any:
        return self.state_cls()

    def __repr__(self) -> str:
        return f"StateBuilder({self.name!r}, {getattr(self.state_cls, '__name__', self.state_cls)})"
