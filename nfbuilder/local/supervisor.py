"""Supervision of the engine's vertex processes: notice failures, restart with backoff, give up.

A replica that fails a call or exits on its own is marked not ready (its workers pause), stopped
and started again with exponential backoff; its unacknowledged messages are redelivered with the
same ids. A crash loop (failures with no message processed in between) ends the run after
:data:`MAX_RESTARTS` attempts: ``failure`` says why and the ``stop`` event is set.

::

    supervisor = Supervisor(status, stop=asyncio.Event(), tasks=tasks)
    tasks.append(asyncio.ensure_future(supervisor.watch(replica)))
    supervisor.failed(replica, exc)  # from a worker whose call failed
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from nfbuilder.local.clients import ClientError
from nfbuilder.local.process import Replica, ReplicaDied
from nfbuilder.local.status import Status

MAX_RESTARTS = 5  # consecutive failed restarts of one replica before the run is given up


class Supervisor:
    """Restarts failed replicas; records each recovery and the failure that ends a run.

    ``tasks`` is the engine's task list: restarts are added to it so that stopping the engine
    cancels them too.
    """

    def __init__(self, status: Status, *, stop: asyncio.Event,
                 tasks: list[asyncio.Task[Any]], redelivery_delay: float = 0.0) -> None:
        self.status = status
        #: seconds after a restart before its unacknowledged messages come back (ackWait)
        self.redelivery_delay = redelivery_delay
        self.stop = stop
        self.tasks = tasks
        #: why the run was given up, or None
        self.failure: str | None = None
        #: (replica, seconds from failure to ready again, messages redelivered) per restart
        self.recoveries: list[tuple[str, float, int]] = []

    def failed(self, rep: Replica, exc: BaseException) -> None:
        """``rep`` failed with ``exc``: restart it, unless a restart is already under way."""
        if rep.ready.is_set() and not rep.stopping:
            rep.ready.clear()
            self.tasks.append(asyncio.ensure_future(self._restart(rep, exc)))

    async def _restart(self, rep: Replica, exc: BaseException | None) -> None:
        failed_at = time.monotonic()
        report = None
        if rep.proc is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(rep.proc.wait(), 5)
            report = rep.error_report()
        await rep.stop(grace_s=2)
        why = report or (
            str(exc) if exc else f"exited with status {rep.proc and rep.proc.returncode}"
        )
        self.status.event(f"vertex {rep.spec.label} failed: {why}")
        # A crash loop is a run of failures with no message processed in between (the same
        # message failing again, a store that stays down...): give up after MAX_RESTARTS.
        rep.streak = rep.streak + 1 if rep.processed == rep.processed_at_failure else 1
        rep.processed_at_failure = rep.processed
        failures = rep.streak - 1
        while not self.stop.is_set():
            rep.restarts += 1
            failures += 1
            if failures > MAX_RESTARTS:
                self.failure = f"vertex {rep.spec.label} keeps failing: {why}"
                self.stop.set()
                return
            await asyncio.sleep(min(0.2 * 2 ** (failures - 1), 5))
            try:
                await rep.start()
                rep.redeliver_at = time.monotonic() + self.redelivery_delay
                self.recoveries.append(
                    (rep.spec.label, time.monotonic() - failed_at, len(rep.redeliver)))
                self.status.event(f"vertex {rep.spec.label} restarted (restart #{rep.restarts}); "
                                  f"redelivering {len(rep.redeliver)} message(s)")
                return
            except (ReplicaDied, ClientError, OSError) as err:
                why = rep.error_report() or f"{err}\n{rep.log_tail()}"
                await rep.stop(grace_s=1)

    async def watch(self, rep: Replica) -> None:
        """Notice a process that exits on its own (kill -9, crash) and restart it."""
        while not self.stop.is_set():
            proc = rep.proc
            if proc is None or not rep.ready.is_set():
                await asyncio.sleep(0.1)
                continue
            await proc.wait()
            if not rep.stopping and rep.proc is proc and rep.ready.is_set():
                self.failed(rep, RuntimeError(f"process exited with status {proc.returncode}"))
