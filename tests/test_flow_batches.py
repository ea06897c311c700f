"""How the engine's flow drives a batch-mode (ordered) vertex: the next batch goes out while the
previous one's results are still being routed, and the results go downstream batch after
batch, in order. Fake clients, no processes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nfbuilder.local.flow import Flow, Msg, SourceState, Tally, Token
from nfbuilder.local.process import Replica, ReplicaSpec
from nfbuilder.local.wire import Result
from nfbuilder.plan import Edge


async def _until(done: Any, timeout_s: float = 2.0) -> None:
    """Poll ``done()`` every 10 ms for up to ``timeout_s`` (the assertions after say why not)."""
    for _ in range(int(timeout_s / 0.01)):
        if done():
            return
        await asyncio.sleep(0.01)


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
        ordered = Replica(ReplicaSpec("doc", "st", "batchmap", 0, ()), tmp_path, {}, 0)
        out = Replica(ReplicaSpec("doc", "out", "sink", 0, ()), tmp_path, {}, 1)
        client = Echo()
        ordered.client = client
        ordered.ready.set()
        flow = Flow({"st": SimpleNamespace(ordered=True), "out": SimpleNamespace(ordered=False)},
                    {"st": [ordered], "out": [out]}, read_batch=2, read_timeout_ms=10,
                    on_failure=lambda rep, exc: None)
        flow.edges["st"] = [Edge("st", "out")]
        delivered: list[list[bytes]] = []
        release = asyncio.Event()

        async def held_put_many(msgs: Any) -> None:  # downstream is slow to take the first
            delivered.append([m.value for m in msgs])
            if len(delivered) == 1:
                await release.wait()

        out.put_many = held_put_many  # type: ignore[method-assign]
        token = Token(SourceState(ordered, Tally("p")), (b"0", 0))
        await ordered.put_many([Msg(f"m{i}", b"v%d" % i, (), 0, None, token)
                                for i in range(4)])
        worker = asyncio.ensure_future(flow.batch_worker(ordered))
        try:
            await _until(lambda: len(client.batches) == 2)
            # the second batch is with the vertex while the first's results wait downstream
            assert client.batches == [["m0", "m1"], ["m2", "m3"]]
            assert delivered == [[b"v0", b"v1"]]
            release.set()
            await _until(lambda: len(delivered) == 2)
            assert delivered == [[b"v0", b"v1"], [b"v2", b"v3"]]  # batch after batch, in order
            assert ordered.processed == 4
        finally:
            worker.cancel()

    asyncio.run(main())


def test_after_a_failed_batch_the_worker_waits_for_the_replica_before_the_next(
        tmp_path: Path) -> None:
    async def main() -> None:
        from nfbuilder.local.rpc import UdfStreamError

        failures: list[BaseException] = []
        ordered = Replica(ReplicaSpec("doc", "st", "batchmap", 0, ()), tmp_path, {}, 0)
        calls: list[list[str]] = []

        class Broken:
            async def map_batch(self, batch: list[Msg]) -> Any:
                calls.append([m.id for m in batch])
                ordered.ready.clear()  # as the supervisor does when it restarts the vertex
                raise UdfStreamError("st", None, "the vertex died")

        ordered.client = Broken()
        ordered.ready.set()
        flow = Flow({"st": SimpleNamespace(ordered=True)}, {"st": [ordered]}, read_batch=2,
                    read_timeout_ms=10, on_failure=lambda rep, exc: failures.append(exc))
        token = Token(SourceState(ordered, Tally("p")), (b"0", 0))
        await ordered.put_many([Msg(f"m{i}", b"v", (), 0, None, token) for i in range(4)])
        worker = asyncio.ensure_future(flow.batch_worker(ordered))
        try:
            await asyncio.sleep(0.2)
            # one call, one failure; the batch is kept for redelivery, nothing else was sent
            assert calls == [["m0", "m1"]] and len(failures) == 1
            assert [m.id for m in ordered.redeliver] == ["m0", "m1"]
        finally:
            worker.cancel()

    asyncio.run(main())


def test_a_message_without_results_is_done_and_its_offset_acked(tmp_path: Path) -> None:
    async def main() -> None:
        ordered = Replica(ReplicaSpec("doc", "st", "batchmap", 0, ()), tmp_path, {}, 0)

        class Filter:  # keeps the even values only
            async def map_batch(self, batch: list[Msg]) -> list[list[Result]]:
                return [[Result(m.value)] if int(m.value) % 2 == 0 else [] for m in batch]

        ordered.client = Filter()
        ordered.ready.set()
        flow = Flow({"st": SimpleNamespace(ordered=True)}, {"st": [ordered]}, read_batch=10,
                    read_timeout_ms=10, on_failure=lambda rep, exc: None)
        flow.edges["st"] = []  # the kept ones go nowhere here (a blackhole)
        src = SourceState(ordered, Tally("p"))
        tokens = [Token(src, (b"%d" % i, 0)) for i in range(4)]
        await ordered.put_many([Msg(f"m{i}", b"%d" % i, (), 0, None, t)
                                for i, t in enumerate(tokens)])
        worker = asyncio.ensure_future(flow.batch_worker(ordered))
        try:
            await _until(lambda: ordered.processed == 4)
            assert [t.count for t in tokens] == [0, 0, 0, 0]
            assert sorted(src.done) == [(b"%d" % i, 0) for i in range(4)] and not src.open
            assert src.tally.filtered == 2 + 2  # two without results, two routed nowhere
        finally:
            worker.cancel()

    asyncio.run(main())


def test_a_batch_sent_while_the_last_is_routed_and_then_failed_waits_in_order(
        tmp_path: Path) -> None:
    async def main() -> None:
        from nfbuilder.local.rpc import UdfStreamError

        ordered = Replica(ReplicaSpec("doc", "st", "batchmap", 0, ()), tmp_path, {}, 0)
        out = Replica(ReplicaSpec("doc", "out", "sink", 0, ()), tmp_path, {}, 1)
        calls: list[list[str]] = []

        class SecondFails:
            async def map_batch(self, batch: list[Msg]) -> list[list[Result]]:
                calls.append([m.id for m in batch])
                if len(calls) == 2:
                    ordered.ready.clear()  # the supervisor restarts the vertex
                    raise UdfStreamError("st", None, "the vertex died")
                return [[Result(m.value)] for m in batch]

        ordered.client = SecondFails()
        ordered.ready.set()
        failures: list[BaseException] = []
        flow = Flow({"st": SimpleNamespace(ordered=True), "out": SimpleNamespace(ordered=False)},
                    {"st": [ordered], "out": [out]}, read_batch=2, read_timeout_ms=10,
                    on_failure=lambda rep, exc: failures.append(exc))
        flow.edges["st"] = [Edge("st", "out")]
        token = Token(SourceState(ordered, Tally("p")), (b"0", 0))
        await ordered.put_many([Msg(f"m{i}", b"v%d" % i, (), 0, None, token)
                                for i in range(6)])
        worker = asyncio.ensure_future(flow.batch_worker(ordered))
        try:
            await asyncio.sleep(0.3)
            assert calls == [["m0", "m1"], ["m2", "m3"]] and len(failures) == 1
            assert [m.value for m in out.queue] == [b"v0", b"v1"]  # the first was delivered
            # the failed batch goes first, before the one still queued; nothing else was sent
            assert [m.id for m in ordered.redeliver] == ["m2", "m3"]
            assert [m.id for m in ordered.queue] == ["m4", "m5"]
        finally:
            worker.cancel()

    asyncio.run(main())


def test_unary_batches_that_fail_together_are_redelivered_oldest_first(tmp_path: Path) -> None:
    async def main() -> None:
        from nfbuilder.local.rpc import UdfStreamError

        rep = Replica(ReplicaSpec("doc", "up", "map", 0, ()), tmp_path, {}, 0)
        gate = asyncio.Event()

        class DiesWithTwoInFlight:
            def __init__(self) -> None:
                self.batches: list[list[str]] = []

            async def map_many(self, batch: list[Msg]) -> Any:
                self.batches.append([m.id for m in batch])
                await gate.wait()  # the stream fails for every batch in flight at once
                raise UdfStreamError("up", None, "the vertex died")

        client = DiesWithTwoInFlight()
        rep.client = client
        rep.ready.set()
        flow = Flow({"up": SimpleNamespace(ordered=False)}, {"up": [rep]}, read_batch=2,
                    read_timeout_ms=10, on_failure=lambda r, exc: r.ready.clear())
        token = Token(SourceState(rep, Tally("p")), (b"0", 0))
        await rep.put_many([Msg(f"m{i}", b"v", (), 0, None, token) for i in range(6)])
        worker = asyncio.ensure_future(flow.map_worker(rep))
        try:
            await _until(lambda: len(client.batches) >= 2)
            gate.set()
            await asyncio.sleep(0.2)
            sent = [i for b in client.batches for i in b]
            assert [m.id for m in rep.redeliver] == sent  # in the order they were sent
        finally:
            worker.cancel()

    asyncio.run(main())


def test_a_unary_worker_whose_routing_fails_ends_with_that_error(tmp_path: Path) -> None:
    """A bug in routing a unary vertex's results ends its worker with the error (the engine
    then stops the run, naming it) instead of leaving the worker waiting for room forever."""
    async def main() -> None:
        rep = Replica(ReplicaSpec("doc", "up", "map", 0, ()), tmp_path, {}, 0)

        class Echo1:
            async def map_many(self, batch: list[Msg]) -> list[list[Result]]:
                return [[Result(m.value)] for m in batch]

        rep.client = Echo1()
        rep.ready.set()
        flow = Flow({"up": SimpleNamespace(ordered=False)}, {"up": [rep]}, read_batch=2,
                    read_timeout_ms=10, on_failure=lambda r, exc: None)

        def broken(*args: Any) -> None:
            raise RuntimeError("a bug in routing")

        flow.collect = broken  # type: ignore[method-assign]
        token = Token(SourceState(rep, Tally("p")), (b"0", 0))
        await rep.put_many([Msg(f"m{i}", b"v", (), 0, None, token) for i in range(10)])
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
