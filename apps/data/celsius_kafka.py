"""Inputs and validator for ``apps/celsius_kafka.py``.

Wallaroo had no automated test for this app; we check it as ``celsius``: 100 big-endian float32
record values (unframed, one per Kafka record) in, exactly ``float32(x * 1.8 + 32)`` out, in order
(one topic partition keeps order).

    msgs = inputs(seed=0)                        # [[value, value, ...]]
    argv = kafka_args("127.0.0.1:9092", "test-in", "test-out")
    validate(parse_output(values), msgs)         # values: record values, or their concatenation
"""

from __future__ import annotations

import random
import struct

from apps.data import addr_arg
from apps.data.celsius import convert

SOURCES = 1
SEND_ORDER = [0]


def inputs(n: int | None = None, seed: int = 0) -> list[list[bytes]]:
    """``n`` (default 100) raw ``>f`` record values, uniform in 0..10000 (no framing)."""
    rng = random.Random(seed)
    count = 100 if n is None else n
    return [[struct.pack(">f", rng.uniform(0, 10000)) for _ in range(count)]]


def _decode(value: bytes) -> float:
    # The app's decoder: the first 4 bytes as >f, 0.0 for a shorter record.
    return float(struct.unpack(">f", value[:4])[0]) if len(value) >= 4 else 0.0


def expected(inputs: list[list[bytes]]) -> list[float]:
    """The converted values, in input order."""
    return [convert(_decode(v)) for v in inputs[0]]


def parse_output(data: bytes | list[bytes]) -> list[float]:
    """The output topic's record values (a list) or their concatenation (every value is 4 bytes)
    -> the floats."""
    if isinstance(data, (bytes, bytearray)):
        assert len(data) % 4 == 0, (
            f"celsius_kafka: {len(data)} bytes of concatenated output is not a multiple of 4; "
            "every output record value is one 4-byte float32"
        )
        values = [bytes(data[i : i + 4]) for i in range(0, len(data), 4)]
    else:
        values = list(data)
    out = []
    for i, value in enumerate(values):
        assert len(value) == 4, (
            f"celsius_kafka: output record {i} is {len(value)} bytes ({value!r}); expected a "
            "4-byte big-endian float32"
        )
        out.append(struct.unpack(">f", value)[0])
    return out


def validate(records: list, inputs: list[list[bytes]]) -> None:
    """Exactly the expected float32 values, in order."""
    want = expected(inputs)
    for i, (got, exp) in enumerate(zip(records, want, strict=False)):  # length checked below
        assert got == exp, (
            f"celsius_kafka: record {i} is {got!r}, expected {exp!r} (= float32("
            f"{_decode(inputs[0][i])!r} * 1.8 + 32)); outputs must be the converted inputs in order"
        )
    assert len(records) == len(want), (
        f"celsius_kafka: received {len(records)} records, expected {len(want)}"
        + (
            f"; missing from record {len(records)} on, starting with {want[len(records)]!r}"
            if len(records) < len(want)
            else f"; extra records from {len(want)} on, starting with {records[len(want)]!r}"
        )
    )


def kafka_args(brokers: str, in_topic: str, out_topic: str) -> list[str]:
    """argv as Wallaroo ran the app: ``kafka_args("127.0.0.1:9092", "test-in", "test-out")``."""
    return [
        "prog",
        "--kafka_source_topic", in_topic,
        "--kafka_source_brokers", brokers,
        "--kafka_sink_topic", out_topic,
        "--kafka_sink_brokers", brokers,
        "--kafka_sink_max_message_size", "100000",
        "--kafka_sink_max_produce_buffer_ms", "10",
    ]  # fmt: skip


def app_args(in_addrs: list[tuple[str, int]], out_addrs: list[tuple[str, int]]) -> list[str]:
    """Same interface as the TCP apps: ``in_addrs``/``out_addrs`` are the source/sink Kafka
    brokers; topics are ``test-in`` and ``test-out`` (use ``kafka_args`` to choose them)."""
    args = kafka_args(addr_arg(in_addrs), "test-in", "test-out")
    args[args.index("--kafka_sink_brokers") + 1] = addr_arg(out_addrs)
    return args
