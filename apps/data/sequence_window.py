"""Inputs and validator for ``apps/sequence_window.py``.

Input: 1..N (default 1000) as framed big-endian u64 (Wallaroo's sequence sender). Output: per
value, the window of the last four values of its parity, ``"[a,b,c,d]"`` framed ``>L``.

The validator checks what Wallaroo's sequence-window validator checked: every window is the one
that must follow its newest value (size 4, leading zeros only, one parity, steps of 2); per
parity each window follows the previous one, where at-least-once delivery may repeat or go back
but never skip ahead; the last windows are ``[N-6,N-4,N-2,N]`` and ``[N-7,N-5,N-3,N-1]``. With
``exactly_once=True`` repeats and going back are errors too.

    msgs = inputs(n=1000)
    validate(parse_output(sink_bytes), msgs)
"""

from __future__ import annotations

import re
import struct

from apps.data import frame, show, split_frames, tcp_app_args

SOURCES = 1
SEND_ORDER = [0]
_WINDOW = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")


def inputs(n: int | None = None, seed: int = 0) -> list[list[bytes]]:
    """1..n (default 1000), each framed ``>I`` 8 + ``>Q``; ``seed`` is unused (no randomness)."""
    count = 1000 if n is None else n
    return [[frame(struct.pack(">Q", v)) for v in range(1, count + 1)]]


def values(inputs: list[list[bytes]]) -> list[int]:
    """The values that reach the state step, in order (the app's one-to-many rule applied)."""
    out: list[int] = []
    for payload in split_frames(b"".join(inputs[0])):
        (v,) = struct.unpack(">Q", payload)
        if v >= 12 and v % 12 == 0:
            out.extend((v, v + 1, v + 2))
        elif not (v > 12 and v % 12 in (1, 2)):
            out.append(v)
    return out


def expected(inputs: list[list[bytes]]) -> dict[int, list[tuple[int, ...]]]:
    """Per parity (0, 1), the windows in the order an exactly-once run emits them; the last one
    is the final window."""
    windows: dict[int, list[tuple[int, ...]]] = {0: [], 1: []}
    current = {0: (0, 0, 0, 0), 1: (0, 0, 0, 0)}
    for v in values(inputs):
        current[v % 2] = current[v % 2][1:] + (v,)
        windows[v % 2].append(current[v % 2])
    return windows


def parse_output(data: bytes) -> list[tuple[int, ...]]:
    """One 4-tuple per ``>L``-framed ``"[a,b,c,d]"`` record."""
    out = []
    for i, payload in enumerate(split_frames(data, ">L")):
        text = payload.decode("ascii", errors="replace")
        match = _WINDOW.fullmatch(text.strip())
        assert match, (
            f"sequence_window: output record {i} is {text!r}; expected a window of four "
            "integers like '[2,4,6,8]'"
        )
        out.append(tuple(int(g) for g in match.groups()))
    return out


def validate(records: list, inputs: list[list[bytes]], *, exactly_once: bool = False) -> None:
    """Window invariants, order per parity (at-least-once by default) and final windows."""
    want = expected(inputs)
    index = {w[-1]: (parity, i) for parity, ws in want.items() for i, w in enumerate(ws)}
    position = {0: -1, 1: -1}
    for n, record in enumerate(records):
        window = tuple(record)
        assert len(window) == 4 and window[-1] in index, (
            f"sequence_window: record {n} {list(window)} does not end with a value that was "
            "sent; a window holds the last four values of one parity"
        )
        parity, i = index[window[-1]]
        assert window == want[parity][i], (
            f"sequence_window: record {n} is {list(window)}, but the window after "
            f"{window[-1]} must be {list(want[parity][i])} (four values of one parity, "
            "stepping by 2, zeros only in front): values were lost, repeated or reordered"
        )
        previous = position[parity]
        step_ok = i == previous + 1 if exactly_once else i <= previous + 1
        following = (
            list(want[parity][previous + 1]) if previous + 1 < len(want[parity])
            else "nothing (the final window was already received)"
        )
        assert step_ok, (
            f"sequence_window: record {n} {list(window)} follows "
            f"{list(want[parity][previous]) if previous >= 0 else 'the start'} for parity "
            f"{parity}; expected {following}"
            + ("" if exactly_once else " (or a repeat of an earlier window)")
            + ": windows were skipped" + (" or repeated" if exactly_once else "")
        )
        position[parity] = i
    for parity, ws in want.items():
        if not ws:
            continue
        got = list(ws[position[parity]]) if position[parity] >= 0 else "none at all"
        assert position[parity] == len(ws) - 1, (
            f"sequence_window: the last {'even' if parity == 0 else 'odd'} window received is "
            f"{got}, expected the final window {list(ws[-1])}; "
            f"{len(ws) - 1 - position[parity]} window(s) missing at the end "
            f"(received {len(records)} records, e.g. last {show(records[-3:])})"
        )


def app_args(in_addrs: list[tuple[str, int]], out_addrs: list[tuple[str, int]]) -> list[str]:
    """``["prog", "--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]``."""
    return tcp_app_args(in_addrs, out_addrs, SOURCES)
