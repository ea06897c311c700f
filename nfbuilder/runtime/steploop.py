"""Where ``async def`` steps run: one event loop per process, on a thread of its own.

The step core stays synchronous (one code path for every caller: servicers, the engine's
vertices, the in-process harness); an async step's coroutine is handed to this loop and its
caller waits for the result. An ordered vertex calls one message at a time, so it awaits one
message at a time; an unordered vertex calls from up to ``concurrency`` threads at once, so that
many coroutines await together on this loop. Every coroutine of a process shares the loop, so
the user's own async resources (a client, a cache) work across messages::

    run = awaiter(timeout_s=2.0)
    value = run(fetch(item))      # fetch's result, StepTimeout after 2 s

The loop starts at the first call, and again in a forked child (a thread does not survive
``fork``).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class StepTimeout(Exception):
    """An async step did not finish within its timeout (a step error, like any exception)."""


class _StepLoop:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="nfbuilder-steps",
                                          daemon=True)
                thread.start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_LOOP = _StepLoop()


def awaiter(timeout_s: float) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """``run(coro)``: await ``coro`` on the process's step loop and return its result (or raise
    its exception); :class:`StepTimeout` once ``timeout_s`` has passed (the coroutine is
    cancelled). Call from any thread but the step loop's own."""

    async def bounded(coro: Coroutine[Any, Any, Any]) -> Any:
        task = asyncio.ensure_future(coro)
        # not wait_for: a TimeoutError the step raises itself must stay the step's own
        done, _ = await asyncio.wait((task,), timeout=timeout_s)
        if not done:
            task.cancel()
            raise StepTimeout(f"did not finish within its timeout of {timeout_s:g} s")
        return task.result()

    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(bounded(coro), _LOOP.loop()).result()

    return run


def asynchronous(fn: Callable[..., Any], timeout_s: float) -> Callable[..., Any]:
    """``fn`` (an ``async def``) as a plain function: called, it awaits on the step loop."""
    run = awaiter(timeout_s)

    def call(*args: Any) -> Any:
        return run(fn(*args))

    return call
