"""Log Levels: a user-defined source that tails a log file, with event time from each line.

One pipeline: ``LogFile`` (a ``UserSourceConfig``: reads the file's lines, remembers what was
acknowledged in ``<file>.acked``) -> ``parse`` -> ``count`` (a state per log level) -> TCP sink
writing ``LEVEL count`` lines.

Each record's offset is its line number and its event time the timestamp the line starts with,
so Numaflow's watermarks follow the log's own clock, not the time it was read. The source keeps
the highest line below which every line was acknowledged; restarted (a pod replaced, a process
killed), it reads on from there, and what it reads again is dropped by Numaflow as a duplicate
(same offset, same message id), so every line is counted once.

    printf '2026-12-01T10:00:00Z INFO started\\n' > /tmp/app.log
    nfbuilder run apps/log_levels.py -- --file /tmp/app.log --out 127.0.0.1:7002
"""

from __future__ import annotations

import asyncio
import datetime
import os

import nfbuilder as wallaroo

LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def application_setup(args: list[str]) -> list[tuple]:
    """Wallaroo entry point: ``application_setup(["prog", "--file", "a.log", "--out", "h:p"])``."""
    path = args[args.index("--file") + 1]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("Log Levels")
    ab.new_pipeline("levels", wallaroo.UserSourceConfig(LogFile(path)))
    ab.to(parse)
    ab.to_state_partition(count, LevelCount, "level counts", by_level, LEVELS)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


class LogFile:
    """The lines of a growing text file as records: offset = line number (0 first), value =
    the line, event time = its leading ISO-8601 timestamp.

    ``<path>.acked`` holds how many lines from the start are acknowledged; a new ``LogFile``
    reads on from there. Lines are read when asked for, so the file may grow while it runs."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.progress = path + ".acked"
        self._file = None  # opened at the first read, in the source's own process
        self._next = 0  # the line number of the next line to read
        self._acked: set[int] = set()
        self._done = 0  # lines 0 .. _done - 1 are all acknowledged
        self._again: list[tuple[int, str]] = []
        self._unacked: dict[int, str] = {}

    def _open(self) -> None:
        if os.path.exists(self.progress):
            with open(self.progress) as f:
                self._done = int(f.read().strip() or 0)
        self._file = open(self.path, encoding="utf-8")  # noqa: SIM115 - read for the run
        for _ in range(self._done):  # skip what was acknowledged before
            self._file.readline()
        self._next = self._done

    async def read(self, n: int, timeout_s: float) -> list[wallaroo.Record]:
        if self._file is None:
            self._open()
        out = []
        while self._again and len(out) < n:
            offset, line = self._again.pop(0)
            out.append(self._record(offset, line))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(out) < n:
            line = self._file.readline()
            if not line.endswith("\n"):  # end of the file, or a line still being written
                self._file.seek(self._file.tell() - len(line.encode()))
                if out or asyncio.get_running_loop().time() >= deadline:
                    break
                await asyncio.sleep(0.02)  # wait for the file to grow
                continue
            offset, self._next = self._next, self._next + 1
            self._unacked[offset] = line
            out.append(self._record(offset, line))
        return out

    @staticmethod
    def _record(offset: int, line: str) -> wallaroo.Record:
        stamp = line.split(" ", 1)[0]
        try:
            when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            when = None  # no timestamp: the time it was read
        return wallaroo.Record(offset, line.rstrip("\n"), when)

    def ack(self, offsets: list[int]) -> None:
        for offset in offsets:
            self._unacked.pop(offset, None)
            if offset >= self._done:
                self._acked.add(offset)
        moved = False
        while self._done in self._acked:
            self._acked.discard(self._done)
            self._done += 1
            moved = True
        if moved:
            tmp = self.progress + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(self._done))
            os.replace(tmp, self.progress)

    def nack(self, offsets: list[int]) -> None:
        for offset in offsets:
            line = self._unacked.get(offset)
            if line is not None:
                self._again.append((offset, line))

    def pending(self) -> int | None:
        return len(self._again) or None

    def partitions(self) -> list[int]:
        return [0]


@wallaroo.computation(name="parse")
def parse(line: str) -> str | None:
    parts = line.split(" ", 2)
    if len(parts) < 2 or parts[1] not in LEVELS:
        return None  # not a log line of ours: filtered
    return parts[1]


class LevelCount:
    def __init__(self) -> None:
        self.count = 0


@wallaroo.partition
def by_level(level: str) -> str:
    return level


@wallaroo.state_computation(name="count")
def count(level: str, state: LevelCount) -> tuple[tuple[str, int], bool]:
    state.count += 1
    return (level, state.count), True


@wallaroo.encoder
def encoder(result: tuple[str, int]) -> bytes:
    return f"{result[0]} {result[1]}\n".encode()
