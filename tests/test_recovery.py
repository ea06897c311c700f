"""Crash recovery of state on the embedded engine: kill -9 state partitions mid-run, with the
SQLite and the Redis store; no update may be lost or applied twice."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_harness import run_app_on_engine
from redis_server import RedisServer

KILLS = 3


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db"
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    yield server.url


def killer(vertex: str, total: int):  # type: ignore[no-untyped-def]
    """A `during` hook: kill -9 a replica of `vertex` KILLS times, spread over the run, each
    time while it has messages in flight (if it gets any within about a second)."""
    async def kill(engine, rx) -> None:  # type: ignore[no-untyped-def]
        reps = engine.replicas[vertex]
        for k in range(KILLS):
            target = total * (k + 1) // (KILLS + 2)
            while sum(r.processed for r in reps) < target:  # noqa: ASYNC110 - polls counters
                await asyncio.sleep(0.005)
            rep = reps[k % len(reps)]
            # Still recovering from the previous kill (polled, like the counter above).
            while not rep.ready.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            # ... and in the middle of a batch, so that the kill leaves messages to redeliver (a
            # fast vertex idles between batches; on a busy machine the kill used to land there)
            waited = 0
            while not rep.busy and waited < 1000:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
                waited += 1
            assert rep.proc is not None
            os.kill(rep.proc.pid, signal.SIGKILL)
    return kill


def report(engine, name: str) -> None:  # type: ignore[no-untyped-def]
    for label, seconds, redelivered in engine.recoveries:
        print(f"{name}: {label} back after {seconds:.2f} s, {redelivered} message(s) redelivered")


def test_sequence_window_survives_kills(store_url: str, tmp_path: Path) -> None:
    data = importlib.import_module("apps.data.sequence_window")
    n = 5000
    inputs = data.inputs(n=n)
    out, _, engine = asyncio.run(run_app_on_engine(
        "sequence_window", inputs, work_dir=str(tmp_path / "run"), state_store=store_url,
        during=killer("sequence-window", n)))
    report(engine, "sequence_window")
    assert len(engine.recoveries) >= KILLS
    records = data.parse_output(out)
    data.validate(records, inputs)
    final = {}
    for window in records:
        final[window[-1] % 2] = window
    assert final == {0: (n - 6, n - 4, n - 2, n), 1: (n - 7, n - 5, n - 3, n - 1)}


def test_alphabet_totals_exact_after_kills(store_url: str, tmp_path: Path) -> None:
    data = importlib.import_module("apps.data.alphabet")
    n = 10000
    inputs = data.inputs(n=n)
    out, _, engine = asyncio.run(run_app_on_engine(
        "alphabet", inputs, work_dir=str(tmp_path / "run"), state_store=store_url,
        during=killer("letter-state", n)))
    report(engine, "alphabet")
    assert len(engine.recoveries) >= KILLS
    data.validate(data.parse_output(out), inputs)  # last total per letter == sum of its votes


def hot_key_run(tmp_path: Path, n: int, retention_s: float) -> tuple[int, int, Any]:
    """The hot-key app on the engine with JetStream-like late redelivery (8 s), its state vertex
    SIGKILLed twice while messages stream; returns the final (count, sum) it emitted."""
    from engine_harness import free_port, wait_idle

    from nfbuilder.loader import load_app
    from nfbuilder.local.engine import Engine, EngineOptions
    from nfbuilder.local.tcptools import TcpReceiver, send_frames
    from nfbuilder.plan import PlanOptions

    app = Path(__file__).parent / "fidelity" / "hot_key.py"
    frames = [len(str(i)).to_bytes(4, "big") + str(i).encode() for i in range(1, n + 1)]

    async def go() -> tuple[bytes, Any]:
        rx = await TcpReceiver.start()
        src = free_port()
        loaded = load_app(str(app), ["--in", f"127.0.0.1:{src}",
                                     "--out", f"127.0.0.1:{rx.address[1]}"])
        engine = Engine(loaded, EngineOptions(
            PlanOptions(state_store=f"sqlite:///{tmp_path}/state.db", id_retention_s=retention_s),
            quiet=True, work_dir=str(tmp_path / "run"), redelivery_delay=8.0))
        await engine.start()
        try:
            sender = asyncio.ensure_future(send_frames(("127.0.0.1", src), frames))
            await killer("tally", n)(engine, rx)
            await sender
            await wait_idle(engine, 2.0, timeout_s=120)
            await engine.drain()
        finally:
            await engine.stop_processes()
            await rx.close()
        return rx.data(), engine

    out, engine = asyncio.run(go())
    pairs = [tuple(map(int, line.split())) for line in out.decode().splitlines()]
    count, total = max(pairs)
    return count, total, engine


def test_hot_key_state_is_exact_when_redelivery_comes_after_newer_messages(
    tmp_path: Path,
) -> None:
    n = 12000
    count, total, engine = hot_key_run(tmp_path, n, retention_s=120)
    report(engine, "hot key")
    assert len(engine.recoveries) >= 2
    assert any(redelivered for _, _, redelivered in engine.recoveries)
    assert (count, total) == (n, n * (n + 1) // 2)  # none applied twice, none lost
