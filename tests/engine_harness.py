"""Run an example app on the embedded engine with real TCP senders and a receiver (test helper)."""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from nfbuilder.loader import load_app
from nfbuilder.local.engine import Engine, EngineOptions
from nfbuilder.local.tcptools import TcpReceiver, send_frames
from nfbuilder.plan import PlanOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def poll(cond: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Wait until ``cond()`` holds, checking every 5 ms; fails the test after ``timeout_s`` so a
    wait that never ends says what it waited for instead of passing on to weaker checks."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_idle(engine: Engine, quiet_s: float, timeout_s: float = 60) -> None:
    """Until nothing moved for ``quiet_s`` and nothing is queued."""
    since = time.monotonic()  # the sender is done: give the source time to read what it sent
    deadline = since + timeout_s
    while time.monotonic() < deadline:
        moved = max(engine.last_move, since)
        if not engine.in_flight() and time.monotonic() - moved >= quiet_s:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"engine not idle after {timeout_s} s ({engine.in_flight()} in flight)")


async def until_delivered(loaded: Any, count: int, work_dir: str,
                          plan: PlanOptions | None = None, timeout_s: float = 60,
                          during: Any = None) -> Engine:
    """Run ``loaded`` on the engine until ``count`` messages reached its sinks, then drain and
    stop; fails the test if it takes longer than ``timeout_s`` or a vertex keeps failing.
    ``during(engine)`` runs once the engine has started (to send, or to kill a process)."""
    engine = Engine(loaded, EngineOptions(plan or PlanOptions(), quiet=True, work_dir=work_dir))
    await engine.start()
    try:
        if during is not None:
            await during(engine)
        deadline = time.monotonic() + timeout_s
        while engine.delivered < count and not engine.failure:
            assert time.monotonic() < deadline, (
                f"{engine.delivered}/{count} delivered after {timeout_s:g} s "
                f"({engine.in_flight()} queued)")
            await asyncio.sleep(0.05)
        await engine.drain()
    finally:
        await engine.stop_processes()
    assert engine.failure is None, engine.failure
    return engine


async def run_app_on_engine(
    name: str, inputs: list[list[bytes]] | None = None, *, work_dir: str, state_store: str,
    during: Any = None, **plan: Any,
) -> tuple[bytes, list[list[bytes]], Engine]:
    """Start the engine, feed the app's inputs in SEND_ORDER (waiting for idleness between
    sources), wait until idle, stop; returns (sink bytes, inputs, engine)."""
    data = importlib.import_module(f"apps.data.{name}")
    inputs = inputs if inputs is not None else data.inputs()
    rx = await TcpReceiver.start()
    ins = [("127.0.0.1", free_port()) for _ in range(data.SOURCES)]
    args = data.app_args(ins, [rx.address])[1:]
    loaded = load_app(os.path.join(ROOT, "apps", f"{name}.py"), args)
    engine = Engine(loaded, EngineOptions(
        plan=PlanOptions(state_store=state_store, **plan), quiet=True, work_dir=work_dir))
    await engine.start()
    try:
        for idx in data.SEND_ORDER:
            sender = asyncio.ensure_future(send_frames(ins[idx], inputs[idx]))
            if during is not None:
                await during(engine, rx)
            await sender
            await wait_idle(engine, 1.0)
        await engine.drain()
    finally:
        await engine.stop_processes()
        await rx.close()
    return rx.data(), inputs, engine
