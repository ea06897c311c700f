"""The embedded engine end to end: real processes, real gRPC, real TCP in and out."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal

import pytest
from engine_harness import run_app_on_engine

from nfbuilder.local.process import QUEUE_MESSAGES

APPS = ["reverse", "celsius", "alphabet", "alphabet_partitioned", "word_count", "market_spread",
        "sequence_window"]


@pytest.mark.parametrize("name", APPS)
def test_app_end_to_end(name: str, tmp_path) -> None:
    data = importlib.import_module(f"apps.data.{name}")
    out, inputs, engine = asyncio.run(run_app_on_engine(
        name, work_dir=str(tmp_path / "run"), state_store=f"sqlite:///{tmp_path}/state.db"))
    data.validate(data.parse_output(out), inputs)
    assert engine.failure is None
    assert all(r.restarts == 0 for reps in engine.replicas.values() for r in reps)
    # every source message done (delivered, filtered or dropped), so every offset acked
    assert [t.lost for t in engine.flow.tallies.values()] == [0] * len(engine.flow.tallies)
    assert engine.flow.open_count() == 0


def test_kill_9_stateless_map_loses_nothing(tmp_path) -> None:
    """kill -9 the map process mid-run: it is restarted and every message still arrives."""
    from apps.data import frame

    inputs = [[frame(f"w{i:05d}".encode()) for i in range(3000)]]
    killed: list[int] = []

    async def kill_midway(engine, rx) -> None:
        rep = engine.replicas["reverse"][0]
        while rep.processed < 300:  # noqa: ASYNC110 - polls a counter, no event exists
            await asyncio.sleep(0.01)
        assert rep.proc is not None
        killed.append(rep.proc.pid)
        os.kill(rep.proc.pid, signal.SIGKILL)

    out, _, engine = asyncio.run(run_app_on_engine(
        "reverse", inputs, work_dir=str(tmp_path / "run"), state_store="memory://",
        during=kill_midway))
    got = set(out.decode().split("\n")) - {""}
    want = {f"w{i:05d}"[::-1] for i in range(3000)}
    assert killed and engine.replicas["reverse"][0].restarts >= 1
    assert want <= got, f"{len(want - got)} messages lost after kill -9"


def test_back_pressure_paused_receiver_bounds_memory(tmp_path) -> None:
    """With the receiver paused the engine's buffers stay bounded and the sender blocks;
    resuming delivers every message exactly once."""
    from apps.data import frame

    # 30 MB: far more than the kernel's socket buffers toward the paused receiver hold
    n = 30000
    pad = b"x" * 1000
    inputs = [[frame(f"m{i:06d}".encode() + pad) for i in range(n)]]
    seen_max: list[int] = []

    async def pause_then_resume(engine, rx) -> None:
        rx.paused.set()
        for _ in range(60):  # 3 s paused
            seen_max.append(engine.in_flight())
            await asyncio.sleep(0.05)
        assert engine.entered < n, "the sender was not held back while the sink was paused"
        rx.paused.clear()

    out, _, engine = asyncio.run(run_app_on_engine(
        "reverse", inputs, work_dir=str(tmp_path / "run"), state_store="memory://",
        during=pause_then_resume))
    bound = sum(QUEUE_MESSAGES for reps in engine.replicas.values() for r in reps)
    assert max(seen_max) <= bound + 1000
    lines = [x for x in out.decode().split("\n") if x]
    assert len(lines) == n and len(set(lines)) == n


@pytest.mark.parametrize("name", ["reverse", "word_count", "market_spread", "sequence_window"])
def test_engine_and_in_process_harness_give_the_same_outputs(name: str, tmp_path) -> None:
    """The same inputs through nfbuilder.testing give the same outputs as the engine (as a
    multiset: partitions may interleave differently)."""
    from nfbuilder.testing import run

    data = importlib.import_module(f"apps.data.{name}")
    inputs = data.inputs()
    out, _, _ = asyncio.run(run_app_on_engine(
        name, inputs, work_dir=str(tmp_path / "run"), state_store=f"sqlite:///{tmp_path}/e.db"))
    args = data.app_args([("127.0.0.1", 1)] * data.SOURCES, [("127.0.0.1", 2)])[1:]
    local = run(os.path.join(os.path.dirname(__file__), "..", "apps", f"{name}.py"), args,
                {i: inputs[i] for i in data.SEND_ORDER})
    def comparable(records: list) -> list:  # market_spread stamps each rejection with the time
        return sorted(r._replace(timestamp=0) if hasattr(r, "timestamp") else r for r in records)

    assert comparable(data.parse_output(out)) == comparable(data.parse_output(local.output()))


def test_memory_store_is_announced(tmp_path, capsys) -> None:
    from engine_harness import ROOT

    from nfbuilder.loader import load_app
    from nfbuilder.local.engine import Engine, EngineOptions
    from nfbuilder.plan import PlanOptions

    loaded = load_app(os.path.join(ROOT, "apps", "alphabet.py"),
                      ["--in", "127.0.0.1:1", "--out", "127.0.0.1:2"])
    engine = Engine(loaded, EngineOptions(plan=PlanOptions(state_store="memory://"), quiet=True,
                                          work_dir=str(tmp_path / "run")))

    async def go() -> None:
        try:
            await engine.start()
        finally:
            await engine.stop_processes()

    asyncio.run(go())
    assert "state store memory:// keeps state inside the vertex processes only" in \
        capsys.readouterr().err
