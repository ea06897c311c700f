"""Top-level Wallaroo objects for the tests: importable by module + name, so pickle round trips
resolve them to the very same objects, and small state classes for the validation tests.

    import wallaroo_objects as w   # tests/ is on sys.path under pytest
    w.double.compute(2)   # 4
"""

from __future__ import annotations

import struct
from typing import Any

import nfbuilder as wallaroo


@wallaroo.computation(name="double")
def double(data: int) -> int:
    return data * 2


@wallaroo.computation(name="add one")
def add_one(data: int) -> int:
    return data + 1


@wallaroo.computation_multi(name="split")
def split(data: str) -> list[str]:
    return data.split()


@wallaroo.state_computation(name="count")
def count(data: Any, state: Counter) -> tuple[int, bool]:
    state.n += 1
    return (state.n, True)


@wallaroo.state_computation(name="count again")
def count_again(data: Any, state: Counter) -> tuple[int, bool]:
    state.n += 1
    return (state.n, False)


@wallaroo.state_computation_multi(name="count multi")
def count_multi(data: Any, state: Counter) -> tuple[list[int], bool]:
    state.n += 1
    return ([state.n, state.n], True)


@wallaroo.partition
def by_parity(data: int) -> int:
    return data % 2


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs: bytes) -> str:
    return bs.decode()


@wallaroo.decoder(header_length=2, length_fmt=">H")
def decode_short(bs: bytes) -> bytes:
    return bs


@wallaroo.encoder
def encode(data: Any) -> bytes:
    return str(data).encode()


@wallaroo.encoder
def kafka_encode(data: Any) -> tuple[bytes, None]:
    return (str(data).encode(), None)


class Counter:
    """A state class built with no arguments."""

    def __init__(self) -> None:
        self.n = 0


class OtherCounter:
    """A second, different state class."""

    def __init__(self) -> None:
        self.n = 0


class NeedsArgs:
    """A state class that cannot be built with ``NeedsArgs()``."""

    def __init__(self, start: int) -> None:
        self.n = start


def frame(payload: bytes) -> bytes:
    """``>I`` length + payload, the framing ``decode`` expects."""
    return struct.pack(">I", len(payload)) + payload


def tcp_source(port: str = "7010", decoder: Any = decode) -> wallaroo.TCPSourceConfig:
    return wallaroo.TCPSourceConfig("127.0.0.1", port, decoder)


def tcp_sink(port: str = "7002", encoder: Any = encode) -> wallaroo.TCPSinkConfig:
    return wallaroo.TCPSinkConfig("127.0.0.1", port, encoder)


def kafka_source(topic: str = "in") -> wallaroo.KafkaSourceConfig:
    return wallaroo.KafkaSourceConfig(topic, [("k1", "9092")], "Warn", decode)


def kafka_sink(topic: str = "out") -> wallaroo.KafkaSinkConfig:
    return wallaroo.KafkaSinkConfig(topic, [("k1", "9092")], "Warn", 10, 100000, kafka_encode)
