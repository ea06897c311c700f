"""Inputs and validator for ``apps/reverse.py``.

Wallaroo's test sent ``1234,5678,1212,1111`` and expected ``4321,8765,2121,1111`` exactly, in
order, one per line. ``inputs(n)`` sends those four words plus ``n`` random ones (some with
non-ASCII letters, to exercise UTF-8).

    msgs = inputs(n=10, seed=3)
    validate(parse_output(sink_bytes), msgs)
"""

from __future__ import annotations

import random

from apps.data import frame, split_frames, split_lines, tcp_app_args

SOURCES = 1
SEND_ORDER = [0]
FIXED_WORDS = ("1234", "5678", "1212", "1111")
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éßøλж"


def inputs(n: int | None = None, seed: int = 0) -> list[list[bytes]]:
    """The four fixed words then ``n`` (default 0) random words, framed ``>I``."""
    rng = random.Random(seed)
    words = list(FIXED_WORDS)
    for _ in range(n or 0):
        words.append("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 12))))
    return [[frame(w.encode("utf-8")) for w in words]]


def expected(inputs: list[list[bytes]]) -> list[str]:
    """The reversed words, in input order."""
    return [p.decode("utf-8")[::-1] for p in split_frames(b"".join(inputs[0]))]


def parse_output(data: bytes) -> list[str]:
    """One UTF-8 string per newline-terminated line."""
    return [line.decode("utf-8", errors="replace") for line in split_lines(data)]


def validate(records: list, inputs: list[list[bytes]]) -> None:
    """Exactly the reversed words, in order (as Wallaroo's ``--validation-cmp``)."""
    want = expected(inputs)
    for i, (got, exp) in enumerate(zip(records, want, strict=False)):  # length checked below
        assert got == exp, (
            f"reverse: record {i} is {got!r}, expected {exp!r} (the reverse of input "
            f"{exp[::-1]!r}); outputs must be the reversed inputs in input order"
        )
    assert len(records) == len(want), (
        f"reverse: received {len(records)} records, expected {len(want)}; "
        + (
            f"missing from record {len(records)} on, starting with {want[len(records)]!r}"
            if len(records) < len(want)
            else f"extra records from {len(want)} on, starting with {records[len(want)]!r}"
        )
    )


def app_args(in_addrs: list[tuple[str, int]], out_addrs: list[tuple[str, int]]) -> list[str]:
    """``["prog", "--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]``."""
    return tcp_app_args(in_addrs, out_addrs, SOURCES)
