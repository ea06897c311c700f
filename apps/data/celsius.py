"""Inputs and validator for ``apps/celsius.py``.

As Wallaroo's test: 100 framed big-endian float32 values drawn uniformly from 0..10000; the output
must be exactly ``float32(x * 1.8 + 32)`` (computed in double precision), in input order.

    msgs = inputs(seed=0)
    validate(parse_output(sink_bytes), msgs)
"""

from __future__ import annotations

import random
import struct

from apps.data import frame, split_frames, tcp_app_args

SOURCES = 1
SEND_ORDER = [0]


def inputs(n: int | None = None, seed: int = 0) -> list[list[bytes]]:
    """``n`` (default 100) floats, each framed as ``>I`` 4 + ``>f``."""
    rng = random.Random(seed)
    count = 100 if n is None else n
    return [[frame(struct.pack(">f", rng.uniform(0, 10000))) for _ in range(count)]]


def convert(celsius: float) -> float:
    """The app's arithmetic, rounded to float32 as the encoder does."""
    return float(struct.unpack(">f", struct.pack(">f", celsius * 1.8 + 32))[0])


def expected(inputs: list[list[bytes]]) -> list[float]:
    """The converted values, in input order (each exactly representable as a float32)."""
    return [convert(struct.unpack(">f", p[:4])[0]) for p in split_frames(b"".join(inputs[0]))]


def parse_output(data: bytes) -> list[float]:
    """One float per ``>I``-framed record; a payload that is not 4 bytes is an error."""
    out = []
    for i, payload in enumerate(split_frames(data)):
        assert len(payload) == 4, (
            f"celsius: output record {i} has a {len(payload)}-byte payload {payload!r}; "
            "expected 4 bytes (a big-endian float32)"
        )
        out.append(struct.unpack(">f", payload)[0])
    return out


def validate(records: list, inputs: list[list[bytes]]) -> None:
    """Exactly the expected float32 values, in order (Wallaroo compared the files byte for byte)."""
    want = expected(inputs)
    sources = [struct.unpack(">f", p[:4])[0] for p in split_frames(b"".join(inputs[0]))]
    for i, (got, exp) in enumerate(zip(records, want, strict=False)):  # length checked below
        assert got == exp, (
            f"celsius: record {i} is {got!r}, expected {exp!r} (= float32({sources[i]!r} * 1.8 "
            "+ 32)); outputs must be the converted inputs in input order"
        )
    assert len(records) == len(want), (
        f"celsius: received {len(records)} records, expected {len(want)}"
        + (
            f"; missing from record {len(records)} on, starting with {want[len(records)]!r}"
            if len(records) < len(want)
            else f"; extra records from {len(want)} on, starting with {records[len(want)]!r}"
        )
    )


def app_args(in_addrs: list[tuple[str, int]], out_addrs: list[tuple[str, int]]) -> list[str]:
    """``["prog", "--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]``."""
    return tcp_app_args(in_addrs, out_addrs, SOURCES)
