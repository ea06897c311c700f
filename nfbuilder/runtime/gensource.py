"""A Wallaroo 0.5.4 ``GenSourceConfig`` served over ``source.v1``: numa's Read/Ack/Nack over
a generator object (``initial_value()``, then ``apply(previous)`` until it returns None).

Each generated object goes through the source's work (its fused steps, keying, encoding) at
read time; a message keeps its offset until it is acked, and a nacked one is read again first::

    handler = GenSourceHandler(program, generator, partition=0)
    msgs = await handler.read(100, 1.0)      # up to 100 SourceMessages
    await handler.ack([(msgs[0].offset, 0)])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from nfbuilder.runtime.core import VertexProgram
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.messages import SourceMessage
from nfbuilder.runtime.stages import user_error


class GenSourceHandler:
    """The source handler of a generator source vertex (one replica, one partition)."""

    def __init__(self, program: VertexProgram, generator: Any, partition: int) -> None:
        from nfbuilder.runtime.vertex import pipeline_metadata

        self.program = program
        self.generator = generator
        self.partition = partition
        self.pipeline = program.pipelines[0]
        self.meta = pipeline_metadata(self.pipeline)
        self._where = f"pipeline {program.work(self.pipeline).pipeline_name!r} generator"
        self._previous: Any = None
        self._started = False
        self._ended = False
        self._next = 0  # the offset of the next generated object
        self._unacked: dict[bytes, SourceMessage] = {}  # by offset, until acked
        self._again: list[bytes] = []  # nacked offsets, read again first

    def generate(self) -> tuple[int, Any] | None:
        """The next (offset, object) of the generator, or None once it has ended."""
        if self._ended:
            return None
        method = "apply" if self._started else "initial_value"
        try:
            value = (self.generator.apply(self._previous) if self._started
                     else self.generator.initial_value())
        except UserCodeError:
            raise
        except Exception as exc:
            raise user_error(self._where, self.generator, method, exc) from exc
        self._started = True
        if value is None:
            self._ended = True
            return None
        self._previous = value
        offset, self._next = self._next, self._next + 1
        return offset, value

    async def read(self, num_records: int, timeout_s: float) -> list[SourceMessage]:
        out: list[SourceMessage] = []
        while self._again and len(out) < num_records:
            again = self._unacked.get(self._again.pop(0))
            if again is not None:
                out.append(again)
        while len(out) < num_records:
            item = self.generate()
            if item is None:
                break
            offset, value = item
            key = str(offset).encode()
            msgs = self.program.process_object(self.pipeline, value, key.decode())
            if not msgs:
                continue  # filtered: nothing to ack
            now = time.time_ns()
            for i, m in enumerate(msgs):
                sub = key if len(msgs) == 1 else key + b"/" + str(i).encode()
                msg = SourceMessage(m.value, sub, self.partition, now, m.keys,
                                    user_metadata=self.meta)
                self._unacked[sub] = msg
                out.append(msg)
        return out

    async def ack(self, offsets: Sequence[tuple[bytes, int]]) -> None:
        for offset, _ in offsets:
            self._unacked.pop(offset, None)

    async def nack(self, offsets: Sequence[tuple[bytes, int]]) -> None:
        for offset, _ in offsets:
            if offset in self._unacked and offset not in self._again:
                self._again.append(offset)

    async def pending(self) -> int:
        return 0 if self._ended else -1

    async def partitions(self) -> list[int]:
        return [self.partition]
