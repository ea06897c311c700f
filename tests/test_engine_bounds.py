"""The engine's buffers between vertices are bounded in bytes as well as in messages."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nfbuilder.local.process import QUEUE_BYTES, QUEUE_MESSAGES, Replica, ReplicaSpec


class Big:
    def __init__(self, size: int) -> None:
        self.value = b"x" * size


def test_a_writer_waits_while_the_queue_holds_its_bytes_and_goes_on_when_it_drains(
        tmp_path: Path) -> None:
    async def main() -> None:
        rep = Replica(ReplicaSpec("doc", "v", "map", 0, ()), tmp_path, {}, 0)
        half = QUEUE_BYTES // 2
        await rep.put_many([Big(half)])
        await rep.put_many([Big(half)])  # now at the bound
        third = asyncio.ensure_future(rep.put_many([Big(half)]))
        await asyncio.sleep(0.05)
        assert not third.done() and len(rep.queue) == 2  # waits: 16 MiB are queued
        assert len(rep.take(1)) == 1
        await asyncio.wait_for(third, 5)
        assert len(rep.queue) == 2 and rep.queued_bytes == 2 * half

    asyncio.run(main())


def test_a_message_bigger_than_the_bound_still_goes_into_an_empty_queue(tmp_path: Path) -> None:
    async def main() -> None:
        rep = Replica(ReplicaSpec("doc", "v", "map", 0, ()), tmp_path, {}, 0)
        await asyncio.wait_for(rep.put_many([Big(QUEUE_BYTES + 1)]), 5)
        assert rep.queued_bytes == QUEUE_BYTES + 1
        assert len(rep.take(5)) == 1
        assert rep.queued_bytes == 0

    asyncio.run(main())


def test_a_batch_goes_in_as_far_as_the_count_bound_and_the_rest_when_there_is_room(
        tmp_path: Path) -> None:
    async def main() -> None:
        rep = Replica(ReplicaSpec("doc", "v", "map", 0, ()), tmp_path, {}, 0)
        msgs = [Big(i % 7) for i in range(QUEUE_MESSAGES + 10)]
        reader = asyncio.ensure_future(rep.arrival(5))  # waiting on the empty queue
        await asyncio.sleep(0.01)
        writer = asyncio.ensure_future(rep.put_many(msgs))
        started = time.monotonic()
        await asyncio.wait_for(reader, 5)
        # woken while the writer waits for room, not after the reader's own timeout
        assert time.monotonic() - started < 0.2 and not writer.done()
        assert len(rep.queue) == QUEUE_MESSAGES
        first = rep.take(400)
        await asyncio.wait_for(writer, 5)
        rest = rep.take(QUEUE_MESSAGES)
        assert first + rest == msgs  # in order, each once
        assert rep.queued_bytes == 0 and not rep.queue

    asyncio.run(main())
