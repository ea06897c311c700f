"""The engine's status display: a live table on a terminal, periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Status:
    """Per vertex: processed, rate, pending, restarts. ``quiet=True`` shows only failures."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None,
                 interval_s: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.interval = interval_s if interval_s is not None else (0.5 if self.tty else 5.0)
        self._last = 0.0
        self._prev: dict[str, tuple[float, int]] = {}
        self._drawn = 0

    def event(self, text: str, *, always: bool = False) -> None:
        """One line; ``--quiet`` hides all but failures and ``always`` lines (warnings)."""
        if self.quiet and not always and "failed" not in text:
            return
        self._clear()
        print(f"[nfbuilder] {text}", file=self.stream, flush=True)

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def rows(self, engine: Any) -> list[str]:
        now = time.monotonic()
        rows = []
        for name, reps in engine.replica_groups().items():
            done = sum(r.processed for r in reps)
            pending = sum(r.pending for r in reps)
            restarts = sum(r.restarts for r in reps)
            t0, n0 = self._prev.get(name, (now, done))
            rate = (done - n0) / (now - t0) if now > t0 else 0.0
            self._prev[name] = (now, done)
            rows.append(f"{_label(engine, name):<36} processed {done:>9}  {rate:>8.0f}/s  "
                        f"pending {pending:>6}  restarts {restarts}")
        return rows

    def update(self, engine: Any, final: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not final and now - self._last < self.interval:
            return
        self._last = now
        rows = self.rows(engine)
        self._clear()
        if not self.tty:
            rows = [f"[nfbuilder] {r}" for r in rows]
        for r in rows:
            print(r, file=self.stream)
        self.stream.flush()
        self._drawn = len(rows) if self.tty and not final else 0


def _label(engine: Any, name: str) -> str:
    """The vertex name with its steps' names (a repeated computation's vertices differ by a
    suffix only): ``'double-2 (double)'``."""
    vertex = engine.vertices.get(name)
    steps = [s for w in vertex.works for s in w.step_names] if vertex is not None else []
    return f"{name} ({', '.join(dict.fromkeys(steps))})" if steps else name
