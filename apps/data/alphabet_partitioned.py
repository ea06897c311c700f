"""Inputs and validator for ``apps/alphabet_partitioned.py``: the same data and checks as
``apps.data.alphabet`` (1000 votes; last total per letter), naming this app in its messages.

    msgs = inputs(seed=0)
    validate(parse_output(sink_bytes), msgs)
"""

from __future__ import annotations

from apps.data import alphabet as _alphabet
from apps.data.alphabet import SEND_ORDER, SOURCES, app_args, expected, inputs

__all__ = ["SEND_ORDER", "SOURCES", "app_args", "expected", "inputs", "parse_output", "validate"]


def parse_output(data: bytes) -> list[tuple[str, int]]:
    """``(letter, total)`` per ``>I``-framed 9-byte ``>sQ`` record."""
    return _alphabet._parse(data, "alphabet_partitioned")


def validate(records: list, inputs: list[list[bytes]]) -> None:
    """Last total per letter == sum of its votes (duplicates allowed).

    See ``apps.data.alphabet``."""
    _alphabet.check(records, inputs, "alphabet_partitioned")
