"""User-defined sources (``UserSourceConfig``; ``GenSourceConfig`` is one) and event time from
data: the handler's offsets, acks and nacks; the engine with real processes, across a SIGKILL
of the source; event times reaching the sink."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from engine_harness import free_port, until_delivered

from apps.data import frame
from nfbuilder.codec import Codec
from nfbuilder.loader import load_app
from nfbuilder.local.engine import Engine
from nfbuilder.local.sourcesink import SinkClient
from nfbuilder.local.tcptools import TcpReceiver, send_frames
from nfbuilder.plan import PlanOptions
from nfbuilder.records import Record
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.messages import Datum
from nfbuilder.runtime.usersource import GeneratorSource, UserSourceHandler, user_offset
from nfbuilder.testing import run

HERE = Path(__file__).resolve().parent
LOG_APP = str(HERE.parent / "apps" / "log_levels.py")
EVENT_APP = str(HERE / "event_app.py")
LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


class Listed:
    """A source over a list, recording what it is told."""

    def __init__(self, items: list[Any], asynchronous: bool = False) -> None:
        self.items = list(items)
        self.acked: list[Any] = []
        self.nacked: list[Any] = []
        self.asynchronous = asynchronous

    def read(self, n: int, timeout_s: float) -> Any:
        taken, self.items = self.items[:n], self.items[n:]
        if not self.asynchronous:
            return taken

        async def later() -> list[Any]:
            await asyncio.sleep(0)
            return taken

        return later()

    def ack(self, offsets: list[Any]) -> None:
        self.acked += offsets

    def nack(self, offsets: list[Any]) -> None:
        self.nacked += offsets

    def pending(self) -> int:
        return len(self.items)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_offsets_keep_their_type_through_read_ack_and_nack(asynchronous: bool) -> None:
    source = Listed([Record(b"\x00raw", "a"), ("line-7", "b", 1.5), Record(42, "c")],
                    asynchronous)
    handler = UserSourceHandler(source, Codec.for_module(None), 0, "pipeline 'p'")

    async def go() -> list[Any]:
        msgs = await handler.read(10, 0.1)
        assert await handler.pending() == 0
        await handler.ack([(msgs[0].offset, 0), (msgs[2].offset, 0)])
        await handler.nack([(msgs[1].offset, 0)])
        return msgs

    msgs = asyncio.run(go())
    assert [Codec.for_module(None).loads(m.payload) for m in msgs] == ["a", "b", "c"]
    assert msgs[1].event_time_ns == 1_500_000_000
    assert source.acked == [b"\x00raw", 42] and source.nacked == ["line-7"]
    assert [user_offset(m.offset) for m in msgs] == [b"\x00raw", "line-7", 42]


def test_records_beyond_what_was_asked_for_come_with_the_next_read() -> None:
    class Generous(Listed):
        def read(self, n: int, timeout_s: float) -> Any:
            return super().read(n + 2, timeout_s)

    handler = UserSourceHandler(Generous([(i, i) for i in range(5)]), Codec.for_module(None),
                                0, "pipeline 'p'")

    async def go() -> list[list[Any]]:
        return [[user_offset(m.offset) for m in await handler.read(2, 0.1)] for _ in range(4)]

    assert asyncio.run(go()) == [[0, 1], [2, 3], [4], []]


def test_bad_records_are_clear_errors() -> None:
    handler = UserSourceHandler(Listed([Record(1.5, b"x")]), None, 0, "pipeline 'p'")
    with pytest.raises(UserCodeError, match=r"pipeline 'p' source: a record's offset must be "
                                            r"bytes, str or int, got float: 1.5"):
        asyncio.run(handler.read(5, 0.1))
    handler = UserSourceHandler(Listed([Record(1, "text")]), None, 0, "pipeline 'p'")
    with pytest.raises(UserCodeError, match="a record's value must be bytes for a source with a "
                                            "decoder, got str"):
        asyncio.run(handler.read(5, 0.1))
    handler = UserSourceHandler(Listed(["just a value"]), None, 0, "pipeline 'p'")
    with pytest.raises(UserCodeError, match="read\\(\\) must give Records or \\(offset, value\\)"):
        asyncio.run(handler.read(5, 0.1))

    class Broken(Listed):
        def read(self, n: int, timeout_s: float) -> Any:
            raise OSError("disk gone")

    handler = UserSourceHandler(Broken([]), None, 0, "pipeline 'p'")
    with pytest.raises(UserCodeError, match=r"pipeline 'p' source: .*read raised "
                                            r"OSError\('disk gone'\)"):
        asyncio.run(handler.read(5, 0.1))


def test_a_generator_reads_nacked_records_again_first() -> None:
    class Upto3:
        def initial_value(self) -> int:
            return 1

        def apply(self, previous: int) -> int | None:
            return previous + 1 if previous < 3 else None

    gen = GeneratorSource(Upto3())
    assert [(r.offset, r.value) for r in gen.read(2, 0)] == [(0, 1), (1, 2)]
    gen.nack([1])
    gen.ack([0])
    assert [(r.offset, r.value) for r in gen.read(5, 0)] == [(1, 2), (2, 3)]
    assert gen.pending() == 0 and gen.read(5, 0) == []


def _write_log(path: Path, n: int) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    start = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
    with open(path, "w") as f:
        for i in range(n):
            level = LEVELS[(i * 7) % 4]
            counts[level] += 1
            when = (start + datetime.timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
            f.write(f"{when} {level} event {i}\n")
    return counts


async def _on_engine(tmp_path: Path, app: str, args: list[str], until: int,
                     during: Any = None, plan: PlanOptions | None = None) -> tuple[bytes, Engine]:
    """``app`` on the engine (``args`` with ``--out`` appended) until ``until`` messages were
    delivered (``during(engine)`` runs first); the sink's bytes and the engine."""
    rx = await TcpReceiver.start()
    try:
        loaded = load_app(app, [*args, "--out", f"127.0.0.1:{rx.address[1]}"])
        engine = await until_delivered(loaded, until, str(tmp_path / "run"), plan,
                                       timeout_s=120, during=during)
    finally:
        await rx.close()
    return rx.data(), engine


def test_the_source_killed_mid_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """kill -9 of the user source's process: it restarts from what was acked, what it reads
    again is dropped as a duplicate (numa's ISB does the same by message id), and each level's
    count goes 1, 2, 3... with no gap and no repeat."""
    log = tmp_path / "app.log"
    counts = _write_log(log, 6000)
    killed: list[int] = []

    async def kill_the_source(engine: Engine) -> None:
        rep = engine.replicas["source"][0]
        while rep.processed < 1500:  # noqa: ASYNC110 - polls a counter, no event exists
            await asyncio.sleep(0.005)
        assert rep.proc is not None
        killed.append(rep.proc.pid)
        os.kill(rep.proc.pid, signal.SIGKILL)

    data, engine = asyncio.run(_on_engine(
        tmp_path, LOG_APP, ["--file", str(log)], 6000, kill_the_source,
        PlanOptions(state_store=f"sqlite:///{tmp_path}/state.db")))
    out = data.decode().split("\n")[:-1]
    assert killed and engine.replicas["source"][0].restarts >= 1
    seen: dict[str, list[int]] = defaultdict(list)
    for line in out:
        level, n = line.split()
        seen[level].append(int(n))
    for level, total in counts.items():
        assert sorted(seen[level]) == list(range(1, total + 1)), level
    assert engine.flow.duplicates > 0  # it did read some lines again
    assert not engine.lost_messages(), engine.summary()
    assert (tmp_path / "app.log.acked").read_text() == "6000"


def test_engine_and_harness_agree_on_a_user_source(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    _write_log(log, 300)
    local = run(LOG_APP, ["--file", str(log), "--out", "h:1"], {0: 1000})
    os.remove(str(log) + ".acked")  # the harness acked them all: start again
    engine_out, _ = asyncio.run(_on_engine(tmp_path, LOG_APP, ["--file", str(log)], 300))
    assert sorted(engine_out.split(b"\n")) == sorted(local.output().split(b"\n"))


WATERMARKS: dict[bytes, int | None] = {}


@pytest.fixture
def sink_event_times(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, int]:
    """What the engine's sink requests say: value -> event time (and, in ``WATERMARKS``,
    value -> watermark)."""
    seen: dict[bytes, int] = {}
    WATERMARKS.clear()
    real = SinkClient.write

    async def recording(self: SinkClient, batch: Any) -> Any:
        for datum in batch:
            seen[datum.value] = datum.event_time_ns
            WATERMARKS[datum.value] = datum.watermark_ns
        return await real(self, batch)

    monkeypatch.setattr(SinkClient, "write", recording)
    return seen


def test_event_times_from_a_user_source_reach_the_sink(
        tmp_path: Path, sink_event_times: dict[bytes, int]) -> None:
    log = tmp_path / "app.log"
    log.write_text("2026-12-01T10:00:00Z INFO a\n2026-12-01T10:00:05Z ERROR b\n")
    asyncio.run(_on_engine(tmp_path, LOG_APP, ["--file", str(log)], 2))
    t0 = int(datetime.datetime(2026, 12, 1, 10, tzinfo=datetime.timezone.utc).timestamp())
    assert sink_event_times == {b"INFO 1\n": t0 * 10**9, b"ERROR 1\n": (t0 + 5) * 10**9}


def test_event_times_a_decoder_gives_reach_the_sink(
        tmp_path: Path, sink_event_times: dict[bytes, int]) -> None:
    port = free_port()

    async def send(engine: Engine) -> None:
        await send_frames(("127.0.0.1", port), [
            frame(b"1767261600.25,a"), frame(b"1767261601,b"), frame(b"bad,c")])

    _, engine = asyncio.run(_on_engine(tmp_path, EVENT_APP, ["--in", f"127.0.0.1:{port}"], 2,
                                       send))
    assert engine.flow.dead_letters is not None and engine.flow.dead_letters.count == 1
    assert sink_event_times == {b"A\n": 1_767_261_600_250_000_000,
                                b"B\n": 1_767_261_601_000_000_000}
    # the source's watermark follows the times the transformer gave, not the arrival times
    assert all(w is not None and 1_767_261_600_250_000_000 <= w <= 1_767_261_601_000_000_000
               for w in WATERMARKS.values()), WATERMARKS


def test_the_kafka_transformer_gives_the_decoders_event_time() -> None:
    from nfbuilder.runtime.vertex import build_program, map_handler

    loaded = load_app(EVENT_APP, ["--kafka", "--out", "127.0.0.1:2"])
    program = build_program(loaded, "source", fuse=False, state_store=None)
    handle = map_handler(program)
    (result,) = handle(Datum("o-0", (), b"12.5,x", 0, None, {}, {}))
    assert result.event_time_ns == 12_500_000_000
    (letter,) = handle(Datum("o-1", (), b"bad,x", 0, None, {}, {}))
    assert "the event time must be a datetime or seconds since the Unix epoch" in \
        letter.value.decode()


def test_a_sources_watermark_comes_from_the_transformed_event_times_without_drops() -> None:
    """The one rule both source paths (udsource and Kafka) advance their watermark by."""
    from nfbuilder.local.clients import TransformResult
    from nfbuilder.local.flow import transformed_times
    from nfbuilder.plan.routing import DROP

    outs = [[TransformResult(b"a", 5), TransformResult(b"b", 7)],
            [TransformResult(b"", 1, tags=(DROP,))], []]
    assert transformed_times(outs) == [5, 7]
