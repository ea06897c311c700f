"""How the engine's flow drives a batch-mode (ordered) vertex: the next batch goes out while the
previous one's results are still being routed, and the results go downstream batch after
batch, in order. Fake clients, no processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from engine_harness import poll

from nfbuilder.local.flow import Flow, Msg, SourceState, Tally, Token
from nfbuilder.local.process import Replica, ReplicaSpec
from nfbuilder.local.rpc import UdfStreamError
from nfbuilder.local.wire import Result
from nfbuilder.plan import Edge


def _replica(tmp_path: Path, name: str, kind: str, index: int = 0,
             client: Any = None) -> Replica:
    """A replica of vertex ``name`` with no process; given a client, it is ready to be called."""
    rep = Replica(ReplicaSpec("doc", name, kind, 0, ()), tmp_path, {}, index)
    if client is not None:
        rep.client = client
        rep.ready.set()
    return rep


def _flow(*, ordered: Sequence[Replica] = (), unordered: Sequence[Replica] = (),
          read_batch: int,
          on_failure: Callable[[Replica, BaseException], None] = lambda rep, exc: None) -> Flow:
    """A flow over one-replica vertices, ordered (batch mode) or not, reading briefly."""
    reps = [(rep, True) for rep in ordered] + [(rep, False) for rep in unordered]
    return Flow({rep.spec.vertex: SimpleNamespace(ordered=o) for rep, o in reps},
                {rep.spec.vertex: [rep] for rep, _ in reps}, read_batch=read_batch,
                read_timeout_ms=10, on_failure=on_failure)


async def _queue(rep: Replica, n: int) -> None:
    """Queue ``n`` messages ``m0``, ``m1``... with values ``v0``, ``v1``... from one source
    message."""
    token = Token(SourceState(rep, Tally("p")), (b"0", 0))
    await rep.put_many([Msg(f"m{i}", b"v%d" % i, (), 0, None, token) for i in range(n)])


@contextlib.asynccontextmanager
async def _running(work: Coroutine[Any, Any, Any]) -> AsyncIterator[None]:
    """Run a worker for the body of the ``async with``; it never ends by itself, so cancel it."""
    worker = asyncio.ensure_future(work)
    try:
        yield
    finally:
        worker.cancel()


class Echo:
    """A batch-mode client answering each message with its value; records each batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def map_batch(self, batch: list[Msg]) -> list[list[Result]]:
        self.batches.append([m.id for m in batch])
        return [[Result(m.value)] for m in batch]


def test_the_next_batch_is_sent_while_the_last_ones_results_are_still_routed(
        tmp_path: Path) -> None:
    async def main() -> None:
        client = Echo()
        ordered = _replica(tmp_path, "st", "batchmap", client=client)
        out = _replica(tmp_path, "out", "sink", 1)
        flow = _flow(ordered=[ordered], unordered=[out], read_batch=2)
        flow.edges["st"] = [Edge("st", "out")]
        delivered: list[list[bytes]] = []
        release = asyncio.Event()

        async def held_put_many(msgs: Any) -> None:  # downstream is slow to take the first
            delivered.append([m.value for m in msgs])
            if len(delivered) == 1:
                await release.wait()

        out.put_many = held_put_many  # type: ignore[method-assign]
        await _queue(ordered, 4)
        async with _running(flow.batch_worker(ordered)):
            await poll(lambda: len(client.batches) == 2, what="the second batch")
            # the second batch is with the vertex while the first's results wait downstream
            assert client.batches == [["m0", "m1"], ["m2", "m3"]]
            assert delivered == [[b"v0", b"v1"]]
            release.set()
            await poll(lambda: len(delivered) == 2, what="the second batch's results")
            assert delivered == [[b"v0", b"v1"], [b"v2", b"v3"]]  # batch after batch, in order
            assert ordered.processed == 4

    asyncio.run(main())


def test_after_a_failed_batch_the_worker_waits_for_the_replica_before_the_next(
        tmp_path: Path) -> None:
    async def main() -> None:
        failures: list[BaseException] = []
        calls: list[list[str]] = []

        class Broken:
            async def map_batch(self, batch: list[Msg]) -> Any:
                calls.append([m.id for m in batch])
                ordered.ready.clear()  # as the supervisor does when it restarts the vertex
                raise UdfStreamError("st", None, "the vertex died")

        ordered = _replica(tmp_path, "st", "batchmap", client=Broken())
        flow = _flow(ordered=[ordered], read_batch=2,
                     on_failure=lambda rep, exc: failures.append(exc))
        await _queue(ordered, 4)
        async with _running(flow.batch_worker(ordered)):
            await asyncio.sleep(0.2)
            # one call, one failure; the batch is kept for redelivery, nothing else was sent
            assert calls == [["m0", "m1"]] and len(failures) == 1
            assert [m.id for m in ordered.redeliver] == ["m0", "m1"]

    asyncio.run(main())


def test_a_message_without_results_is_done_and_its_offset_acked(tmp_path: Path) -> None:
    async def main() -> None:
        class Filter:  # keeps the even values only
            async def map_batch(self, batch: list[Msg]) -> list[list[Result]]:
                return [[Result(m.value)] if int(m.value) % 2 == 0 else [] for m in batch]

        ordered = _replica(tmp_path, "st", "batchmap", client=Filter())
        flow = _flow(ordered=[ordered], read_batch=10)
        flow.edges["st"] = []  # the kept ones go nowhere here (a blackhole)
        src = SourceState(ordered, Tally("p"))
        tokens = [Token(src, (b"%d" % i, 0)) for i in range(4)]  # one source message each
        await ordered.put_many([Msg(f"m{i}", b"%d" % i, (), 0, None, t)
                                for i, t in enumerate(tokens)])
        async with _running(flow.batch_worker(ordered)):
            await poll(lambda: ordered.processed == 4, what="4 processed")
            assert [t.count for t in tokens] == [0, 0, 0, 0]
            assert sorted(src.done) == [(b"%d" % i, 0) for i in range(4)] and not src.open
            assert src.tally.filtered == 2 + 2  # two without results, two routed nowhere

    asyncio.run(main())


def test_a_batch_sent_while_the_last_is_routed_and_then_failed_waits_in_order(
        tmp_path: Path) -> None:
    async def main() -> None:
        calls: list[list[str]] = []

        class SecondFails:
            async def map_batch(self, batch: list[Msg]) -> list[list[Result]]:
                calls.append([m.id for m in batch])
                if len(calls) == 2:
                    ordered.ready.clear()  # the supervisor restarts the vertex
                    raise UdfStreamError("st", None, "the vertex died")
                return [[Result(m.value)] for m in batch]

        ordered = _replica(tmp_path, "st", "batchmap", client=SecondFails())
        out = _replica(tmp_path, "out", "sink", 1)
        failures: list[BaseException] = []
        flow = _flow(ordered=[ordered], unordered=[out], read_batch=2,
                     on_failure=lambda rep, exc: failures.append(exc))
        flow.edges["st"] = [Edge("st", "out")]
        await _queue(ordered, 6)
        async with _running(flow.batch_worker(ordered)):
            await asyncio.sleep(0.3)
            assert calls == [["m0", "m1"], ["m2", "m3"]] and len(failures) == 1
            assert [m.value for m in out.queue] == [b"v0", b"v1"]  # the first was delivered
            # the failed batch goes first, before the one still queued; nothing else was sent
            assert [m.id for m in ordered.redeliver] == ["m2", "m3"]
            assert [m.id for m in ordered.queue] == ["m4", "m5"]

    asyncio.run(main())


def test_unary_batches_that_fail_together_are_redelivered_oldest_first(tmp_path: Path) -> None:
    async def main() -> None:
        gate = asyncio.Event()

        class DiesWithTwoInFlight:
            def __init__(self) -> None:
                self.batches: list[list[str]] = []

            async def map_many(self, batch: list[Msg]) -> Any:
                self.batches.append([m.id for m in batch])
                await gate.wait()  # the stream fails for every batch in flight at once
                raise UdfStreamError("up", None, "the vertex died")

        client = DiesWithTwoInFlight()
        rep = _replica(tmp_path, "up", "map", client=client)
        flow = _flow(unordered=[rep], read_batch=2, on_failure=lambda r, exc: r.ready.clear())
        await _queue(rep, 6)
        async with _running(flow.map_worker(rep)):
            await poll(lambda: len(client.batches) >= 2, what="two batches in flight")
            gate.set()
            await asyncio.sleep(0.2)
            sent = [i for b in client.batches for i in b]
            assert [m.id for m in rep.redeliver] == sent  # in the order they were sent

    asyncio.run(main())


def test_a_unary_worker_whose_routing_fails_ends_with_that_error(tmp_path: Path) -> None:
    """A bug in routing a unary vertex's results ends its worker with the error (the engine
    then stops the run, naming it) instead of leaving the worker waiting for room forever."""
    async def main() -> None:
        class Echo1:
            async def map_many(self, batch: list[Msg]) -> list[list[Result]]:
                return [[Result(m.value)] for m in batch]

        rep = _replica(tmp_path, "up", "map", client=Echo1())
        flow = _flow(unordered=[rep], read_batch=2)

        def broken(*args: Any) -> None:
            raise RuntimeError("a bug in routing")

        flow.collect = broken  # type: ignore[method-assign]
        await _queue(rep, 10)
        with pytest.raises(RuntimeError, match="a bug in routing"):
            await asyncio.wait_for(flow.map_worker(rep), 5)

    asyncio.run(main())


def test_an_engine_worker_that_raises_stops_the_run_naming_the_error(tmp_path: Path) -> None:
    from nfbuilder.loader import load_app
    from nfbuilder.local.engine import Engine, EngineOptions
    from nfbuilder.plan import PlanOptions

    root = Path(__file__).resolve().parent.parent
    loaded = load_app(str(root / "apps" / "reverse.py"),
                      ["--in", "127.0.0.1:1", "--out", "127.0.0.1:2"])

    async def main() -> Engine:
        engine = Engine(loaded, EngineOptions(PlanOptions(state_store="memory://"), quiet=True,
                                              work_dir=str(tmp_path / "w")))

        async def buggy() -> None:
            raise KeyError("oops")

        async def drained() -> None:  # a worker that simply ends: not a failure
            return None

        engine._spawn(drained())
        await asyncio.sleep(0.01)
        assert engine.failure is None and not engine._stop.is_set()
        engine._spawn(buggy())
        await asyncio.sleep(0.01)
        return engine

    engine = asyncio.run(main())
    assert engine.failure == "an engine worker failed: KeyError('oops')"
    assert engine._stop.is_set()
