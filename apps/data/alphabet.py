"""Inputs and validator for ``apps/alphabet.py`` (also used by ``alphabet_partitioned``).

As Wallaroo's test: 1000 random votes (a letter a–z and a count 1..9999; seeded here), framed
``>I`` 5 + ``>sI``. Every vote yields one output record, the letter's new total, framed
``>I`` 9 + ``>sQ``. The validator keeps the LAST total per letter and compares it with the sums of
the inputs, so at-least-once duplicates are accepted. It also rejects what no correct run can
produce: a letter nobody voted for, a total above the letter's final total, and fewer distinct
totals for a letter than positive votes sent for it (lost outputs).

    msgs = inputs(seed=0)
    validate(parse_output(sink_bytes), msgs)
"""

from __future__ import annotations

import random
import string
import struct
from collections import Counter

from apps.data import frame, show, split_frames, tcp_app_args

SOURCES = 1
SEND_ORDER = [0]


def inputs(n: int | None = None, seed: int = 0) -> list[list[bytes]]:
    """``n`` (default 1000) random votes framed ``>I`` 5 + ``>sI``."""
    rng = random.Random(seed)
    count = 1000 if n is None else n
    return [
        [
            frame(
                struct.pack(
                    ">sI", rng.choice(string.ascii_lowercase).encode(), rng.randint(1, 9999)
                )
            )
            for _ in range(count)
        ]
    ]


def votes(inputs: list[list[bytes]]) -> list[tuple[str, int]]:
    """The ``(letter, count)`` votes encoded in ``inputs``, in sending order."""
    out = []
    for payload in split_frames(b"".join(inputs[0])):
        letter, count = struct.unpack(">sI", payload)
        out.append((letter.decode("ascii"), count))
    return out


def expected(inputs: list[list[bytes]]) -> dict[str, int]:
    """The final total per letter: ``{"a": 51234, ...}``."""
    totals: Counter[str] = Counter()
    for letter, count in votes(inputs):
        totals[letter] += count
    return dict(totals)


def parse_output(data: bytes) -> list[tuple[str, int]]:
    """``(letter, total)`` per ``>I``-framed 9-byte ``>sQ`` record."""
    return _parse(data, "alphabet")


def validate(records: list, inputs: list[list[bytes]]) -> None:
    """Last total per letter == sum of its votes (duplicates allowed), plus the sanity checks in
    the module docstring."""
    check(records, inputs, "alphabet")


def app_args(in_addrs: list[tuple[str, int]], out_addrs: list[tuple[str, int]]) -> list[str]:
    """``["prog", "--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]``."""
    return tcp_app_args(in_addrs, out_addrs, SOURCES)


def _parse(data: bytes, app: str) -> list[tuple[str, int]]:
    out = []
    for i, payload in enumerate(split_frames(data)):
        assert len(payload) == 9, (
            f"{app}: output record {i} has a {len(payload)}-byte payload {payload!r}; expected "
            "9 bytes (>sQ: a letter and a u64 total)"
        )
        letter, total = struct.unpack(">sQ", payload)
        out.append((letter.decode("ascii", errors="replace"), total))
    return out


def check(records: list, inputs: list[list[bytes]], app: str) -> None:
    """The validator of both alphabet apps; ``app`` names the app in error messages."""
    want = expected(inputs)
    positive: Counter[str] = Counter(letter for letter, count in votes(inputs) if count > 0)
    last: dict[str, int] = {}
    seen: dict[str, set[int]] = {}
    for i, (letter, total) in enumerate(records):
        assert letter in want, (
            f"{app}: output record {i} is ({letter!r}, {total}) but no input voted for "
            f"{letter!r}; inputs voted for {show(sorted(want))}"
        )
        assert total <= want[letter], (
            f"{app}: output record {i} says {letter!r} has {total} votes, more than the "
            f"{want[letter]} votes sent for it in total"
        )
        last[letter] = total
        seen.setdefault(letter, set()).add(total)
    missing = sorted(set(want) - set(last))
    assert not missing, (
        f"{app}: no output record for letters {show(missing)} (expected final totals "
        f"{show(f'{k}={want[k]}' for k in missing)}); received {len(records)} records for "
        f"{len(votes(inputs))} votes"
    )
    wrong = {k: (last[k], want[k]) for k in sorted(want) if last[k] != want[k]}
    assert not wrong, (
        f"{app}: the last total of {len(wrong)} letter(s) is wrong: "
        + ", ".join(f"{k!r} ends at {got} but its votes sum to {exp}" for k, (got, exp) in
                    list(wrong.items())[:5])
        + (" ..." if len(wrong) > 5 else "")
    )
    lost = {k: (len(seen[k]), positive[k]) for k in sorted(want) if len(seen[k]) < positive[k]}
    assert not lost, (
        f"{app}: outputs were lost: "
        + ", ".join(f"{k!r} has {got} distinct totals for {exp} votes" for k, (got, exp) in
                    list(lost.items())[:5])
        + " (every vote must produce its own running total)"
    )
