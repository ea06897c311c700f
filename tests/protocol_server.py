"""Test-only launcher: serve one nfbuilder protocol server with a simple in-test handler.

Run from the repository root (the server never imports pynumaflow)::

    python -m tests.protocol_server --kind map --handler identity

Settings come from the environment (NFBUILDER_SOCKET_DIR, NUMAFLOW_UD_CONTAINER_TYPE, ...).
``--marks DIR`` makes handlers drop marker files there, so tests can wait for "the handler
started" without sleeping.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.messages import Datum, Result, SinkResult, SourceMessage
from nfbuilder.runtime.server import serve
from nfbuilder.runtime.settings import Settings


def _mark(marks: Path | None, name: str) -> None:
    if marks is not None:
        (marks / name).write_text("1")


def map_handler(marks: Path | None):  # type: ignore[no-untyped-def]
    """Identity with a few magic values: b"fail", b"usererr", b"slow", b"two", b"none"."""

    def handle(datum: Datum) -> list[Result]:
        if datum.value == b"fail":
            raise ValueError("boom")
        if datum.value == b"usererr":
            raise UserCodeError("step 'double' (app.py:7, double()) raised KeyError('k')",
                                "Traceback (most recent call last):\n  fake frame\nKeyError: 'k'\n")
        if datum.value == b"slow":
            _mark(marks, "slow-started")
            time.sleep(0.5)  # an in-flight message during shutdown; the test waits on the mark
        if datum.value == b"two":
            return [Result(b"a", tags=("t1",)), Result(b"b", keys=("k2",))]
        if datum.value == b"none":
            return []
        if datum.value == b"et":
            return [Result(b"et", event_time_ns=1_700_000_000_123_456_789)]
        meta = dict(datum.user_metadata)
        meta["seen"] = {"wm": str(datum.watermark_ns).encode(),
                        "et": str(datum.event_time_ns).encode(),
                        "hdr": datum.headers.get("h", "").encode()}
        return [Result(datum.value, keys=datum.keys, tags=("echo",), user_metadata=meta)]

    return handle


class ListSource:
    """A source over ``count`` messages b"m0".. with offsets b"0"..; nack puts them back."""

    def __init__(self, count: int, marks: Path | None, bad_offset: int | None = None) -> None:
        self.unread = list(range(count))
        self.bad_offset = bad_offset
        self.in_flight: set[int] = set()
        self.marks = marks

    async def read(self, num_records: int, timeout_s: float) -> Sequence[SourceMessage]:
        taken, self.unread = self.unread[:num_records], self.unread[num_records:]
        self.in_flight.update(taken)
        return [
            SourceMessage(f"m{i}".encode(), b"" if i == self.bad_offset else str(i).encode(), 0,
                          1_000_000_000 * i, keys=("k",), headers={"h": "v"},
                          user_metadata={"g": {"i": str(i).encode()}})
            for i in taken
        ]

    async def ack(self, offsets: Sequence[tuple[bytes, int]]) -> None:
        for offset, _partition in offsets:
            self.in_flight.discard(int(offset))
        _mark(self.marks, "acked-" + ",".join(o.decode() for o, _ in offsets))

    async def nack(self, offsets: Sequence[tuple[bytes, int]]) -> None:
        back = sorted(int(o) for o, _ in offsets)  # b"boom" raises: the unary error path
        self.in_flight.difference_update(back)
        self.unread = back + self.unread

    async def pending(self) -> int:
        return len(self.unread)

    async def partitions(self) -> Sequence[int]:
        return [0]


def sink_handler(marks: Path | None):  # type: ignore[no-untyped-def]
    """Collects values in marks/sunk; b"bad..." fails, b"raise" raises, b"skip" loses an id."""

    async def write(batch: Sequence[Datum]) -> Sequence[SinkResult]:
        results = []
        for datum in batch:
            if datum.value == b"raise":
                raise OSError("disk on fire")
            if datum.value == b"skip":
                continue
            ok = not datum.value.startswith(b"bad")
            results.append(SinkResult(datum.id, ok, "" if ok else f"rejected {datum.value!r}"))
            if ok and marks is not None:
                with open(marks / "sunk", "ab") as out:  # noqa: ASYNC230 - tiny test file
                    out.write(datum.value + b"\n")
        return results

    return write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", required=True)
    parser.add_argument("--marks", type=Path)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--ordered", action="store_true")
    parser.add_argument("--bad-offset", type=int)
    opts = parser.parse_args(argv)
    settings = Settings.from_env()
    handler: object
    if opts.kind in ("map", "sourcetransformer"):
        handler = map_handler(opts.marks)
    elif opts.kind == "source":
        handler = ListSource(opts.count, opts.marks, opts.bad_offset)
    else:
        handler = sink_handler(opts.marks)
    return serve(opts.kind, handler, settings, ordered=opts.ordered)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
