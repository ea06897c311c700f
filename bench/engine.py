"""Word-count throughput in one run: a plain Python loop, ``nfbuilder.testing``, the embedded
engine and Bytewax, on the same generated corpus.

  (a) plain      a Python loop doing the same decode + split + count + format (the floor)
  (b) harness    ``nfbuilder.testing.run_app`` on ``apps/word_count.py`` (default plan; also
                 ``--fuse``), in-process, every step through the real ``VertexProgram``:
                 objects passed between vertices (the default), and ``serialize=True``
                 (payload bytes between vertices, as deployed)
  (c) engine     ``nfbuilder run apps/word_count.py`` (every vertex a process, real gRPC and TCP);
                 a smaller corpus by default (``--engine-lines``): each gRPC hop costs CPU
  (d) bytewax    ``bytewax==0.21.1`` ``run_main``: input -> flat_map split -> key_on word ->
                 stateful_map count -> map format -> TestingSink

Every run's final count per word is checked against (a). Words/s is words counted (one output
line each) per second of this process's CPU for (a), (b) and (d) (best of ``--repeat`` runs;
loading and planning included), so a busy machine skews the comparison little; (c) runs in other
processes and is measured in wall-clock seconds from the first byte sent to the last output line
received. See bench/README.md.

    python bench/engine.py                       # make bench-engine
    python bench/engine.py --lines 5000 --skip engine
    python bench/engine.py --profile             # cProfile of (b): where the time goes
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import random
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "apps"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))  # run as a script from a checkout

from apps.data.word_count import VOCABULARY  # noqa: E402 - after the sys.path set-up

APP = str(ROOT / "apps" / "word_count.py")
ARGS = ["--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]
GOAL_VS_BYTEWAX = 2.0  # (b) words/s over (d) words/s, at least
ENGINE_GOAL_VS_BYTEWAX = 0.1  # issue 12: the embedded engine's word count
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


@attrs.frozen
class Result:
    name: str
    words: int
    seconds: float  # CPU seconds in-process; wall-clock seconds for the engine
    wall: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.words / self.seconds if self.seconds > 0 else 0.0


@attrs.frozen
class Skipped:
    name: str
    reason: str


def corpus(lines: int, words_per_line: int = 10, seed: int = 7) -> list[str]:
    """``lines`` lines of ``words_per_line`` words drawn from the word_count vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCABULARY) for _ in range(words_per_line)) for _ in range(lines)]


def framed(text: list[str]) -> list[bytes]:
    return [struct.pack(">I", len(b)) + b for b in (line.encode() for line in text)]


def last_counts(lines: list[bytes]) -> dict[str, int]:
    """Final count per word from ``b"word => n\\n"`` outputs."""
    out: dict[str, int] = {}
    for line in lines:
        word, _, n = line.decode().rstrip("\n").rpartition(" => ")
        out[word] = int(n)
    return out


# -- (a) the floor ------------------------------------------------------------------------
def plain(frames: list[bytes]) -> list[bytes]:
    counts: dict[str, int] = {}
    outs: list[bytes] = []
    for f in frames:
        for word in f[4:].decode("utf-8").lower().translate(_DELETE_PUNCTUATION).split():
            n = counts[word] = counts.get(word, 0) + 1
            outs.append(f"{word} => {n}\n".encode())
    return outs


# -- (b) nfbuilder.testing ------------------------------------------------------------------
def harness(frames: list[bytes], fuse: bool, serialize: bool = False) -> list[bytes]:
    from nfbuilder.testing import run_app

    return run_app(APP, ARGS, {0: frames}, fuse=fuse, serialize=serialize)["sink"]


def profile_harness(frames: list[bytes], fuse: bool, serialize: bool = False,
                    top: int = 18) -> str:
    prof = cProfile.Profile()
    prof.enable()
    harness(frames, fuse, serialize)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


# -- (c) the embedded engine ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _engine_process(in_port: int, out_port: int, work_dir: str) -> Iterator[subprocess.Popen]:
    # A fresh SQLite store per run (the engine's default one lives in ./.nfbuilder and would
    # carry the counts over from the previous run).
    store = f"sqlite:///{os.path.join(work_dir, 'state.db')}"
    cmd = [sys.executable, "-m", "nfbuilder", "run", APP, "--quiet", "--work-dir", work_dir,
           "--state-store", store,
           "--", "--in", f"127.0.0.1:{in_port}", "--out", f"127.0.0.1:{out_port}"]
    log = open(os.path.join(work_dir, "engine.log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the engine drains and stops its vertices
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # our own child's session only
                proc.wait()
        log.close()


def engine(frames: list[bytes], words: int, timeout: float) -> tuple[float, list[bytes], str] | str:
    """Seconds from the first byte sent to the last output line received, the outputs and the
    CPU spent meanwhile by the engine and its vertex processes; or why it was skipped."""
    try:
        import nfbuilder.local.engine  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import problem means "not runnable yet"
        return f"nfbuilder.local.engine does not import: {exc!r}"
    receiver = socket.socket()
    receiver.bind(("127.0.0.1", 0))
    receiver.listen(1)
    out_port = receiver.getsockname()[1]
    received: list[bytes] = []
    done = threading.Event()
    finished_at: list[float] = []

    def receive() -> None:
        receiver.settimeout(timeout)
        try:
            conn, _ = receiver.accept()
        except OSError:
            return
        buf = b""
        with conn:
            conn.settimeout(timeout)
            while len(received) < words:
                try:
                    chunk = conn.recv(1 << 16)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                received.extend(line + b"\n" for line in lines)
        finished_at.append(time.perf_counter())
        done.set()

    with tempfile.TemporaryDirectory(prefix="nfb-bench-") as work_dir:
        in_port = free_port()
        thread = threading.Thread(target=receive, daemon=True)
        thread.start()
        with _engine_process(in_port, out_port, work_dir) as proc:
            deadline = time.monotonic() + timeout
            sender = None
            while sender is None:
                if proc.poll() is not None:
                    return f"`nfbuilder run` exited with {proc.returncode}: {_tail(work_dir)}"
                if time.monotonic() > deadline:
                    return f"the engine's TCP source never listened on port {in_port}"
                try:
                    sender = socket.create_connection(("127.0.0.1", in_port), timeout=1)
                except OSError:
                    time.sleep(0.1)  # waiting for a process to start, not synchronising a test
            cpu_before = _tree_cpu(proc.pid)
            start = time.perf_counter()
            with sender:
                sender.sendall(b"".join(frames))
                done.wait(timeout)
            cpu_after = _tree_cpu(proc.pid)
        receiver.close()
        if len(received) < words:
            return (f"only {len(received)} of {words} outputs arrived within {timeout:.0f} s: "
                    f"{_tail(work_dir)}")
        cpu = ""
        if cpu_before and cpu_after:
            own, kids = (cpu_after[k] - cpu_before[k] for k in (0, 1))
            cpu = (f"CPU per word: engine {own / words * 1e6:.0f} us, vertex processes "
                   f"{kids / words * 1e6:.0f} us")
        return finished_at[0] - start, received, cpu


def _tree_cpu(pid: int) -> tuple[float, float] | None:
    """(CPU seconds of the engine process, of its live descendants), or None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        root = psutil.Process(pid)
        own = sum(root.cpu_times()[:2])
        kids = 0.0
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                kids += sum(child.cpu_times()[:2])
        return own, kids
    except psutil.Error:
        return None


def _tail(work_dir: str, n: int = 400) -> str:
    with contextlib.suppress(OSError):
        text = Path(work_dir, "engine.log").read_text(errors="replace").strip()
        return text[-n:] or "(no output)"
    return "(no log)"


# -- (d) Bytewax ------------------------------------------------------------------------------
def bytewax(frames: list[bytes]) -> list[bytes] | str:
    try:
        import bytewax.operators as op
        from bytewax.dataflow import Dataflow
        from bytewax.testing import TestingSink, TestingSource, run_main
    except ImportError as exc:
        return f"bytewax is not installed ({exc}); pip install bytewax==0.21.1"

    def split(frame: bytes) -> list[str]:
        return frame[4:].decode("utf-8").lower().translate(_DELETE_PUNCTUATION).split()

    def count(total: int | None, _word: str) -> tuple[int, int]:
        n = (total or 0) + 1
        return n, n

    def fmt(item: tuple[str, int]) -> bytes:
        return f"{item[0]} => {item[1]}\n".encode()

    outs: list[bytes] = []
    flow = Dataflow("word_count")
    lines = op.input("in", flow, TestingSource(frames))
    words = op.flat_map("split", lines, split)
    keyed = op.key_on("by_word", words, lambda w: w)
    counted = op.stateful_map("count", keyed, count)
    op.output("out", op.map("format", counted, fmt), TestingSink(outs))
    run_main(flow)
    return outs


# -- the report -------------------------------------------------------------------------------
def _timed(
    fn: Callable[[], list[bytes] | str], repeat: int
) -> tuple[float, float, list[bytes]] | str:
    """Best-of-``repeat`` (CPU seconds, wall seconds, outputs) of ``fn``, or why it was skipped."""
    best: tuple[float, float, list[bytes]] | None = None
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        outs = fn()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if isinstance(outs, str):
            return outs
        if best is None or cpu < best[0]:
            best = (cpu, wall, outs)
    assert best is not None
    return best


def _check(name: str, got: tuple[float, float, list[bytes]] | str, want: dict[str, int],
           words: int, note: str = "") -> Result | Skipped:
    if isinstance(got, str):
        return Skipped(name, got)
    seconds, wall, outs = got
    if len(outs) != words or last_counts(outs) != want:
        return Skipped(name, f"WRONG OUTPUT: {len(outs)} lines for {words} words, or final "
                             "counts differ from the plain loop's")
    return Result(name, words, seconds, wall, note)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=20_000, help="corpus lines (10 words each)")
    ap.add_argument("--repeat", type=int, default=3, help="in-process runs: best of N")
    ap.add_argument("--engine-lines", type=int, default=2_000,
                    help="corpus lines for the embedded engine (c)")
    ap.add_argument("--engine-timeout", type=float, default=120.0)
    ap.add_argument("--skip", default="",
                    help="comma-separated: harness,serialized,fused,engine,bytewax")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of (b) and exit")
    ap.add_argument("--profile-serialized", action="store_true",
                    help="print a cProfile of (b) with serialize=True and exit")
    ns = ap.parse_args(argv)
    skip = set(filter(None, ns.skip.split(",")))
    repeat = max(1, ns.repeat)

    frames = framed(corpus(ns.lines))
    if ns.profile or ns.profile_serialized:
        print(profile_harness(frames, fuse=False, serialize=ns.profile_serialized))
        return 0
    floor = _timed(lambda: plain(frames), repeat)
    assert not isinstance(floor, str)
    words, want = len(floor[2]), last_counts(floor[2])
    rows: list[Result | Skipped] = [Result("(a) plain loop", words, floor[0], floor[1])]
    if "harness" not in skip:
        got = _timed(lambda: harness(frames, False), repeat)
        rows.append(_check("(b) testing.run_app", got, want, words, "objects between vertices"))
    if "serialized" not in skip:
        got = _timed(lambda: harness(frames, False, serialize=True), repeat)
        rows.append(_check("(bs) serialize=True", got, want, words,
                           "payload bytes between vertices"))
    if "fused" not in skip:
        got = _timed(lambda: harness(frames, True), repeat)
        rows.append(_check("(b') run_app fuse=True", got, want, words))
    if "engine" not in skip:
        e_frames = frames[: ns.engine_lines]
        e_want = plain(e_frames)
        got_e = engine(e_frames, len(e_want), ns.engine_timeout)
        note = f"{len(e_frames)} lines; wall-clock"
        if not isinstance(got_e, str):
            note += f"; {got_e[2]}" if got_e[2] else ""
        rows.append(_check("(c) nfbuilder run", got_e if isinstance(got_e, str) else
                           (got_e[0], got_e[0], got_e[1]), last_counts(e_want), len(e_want),
                           note))
    if "bytewax" not in skip:
        rows.append(_check("(d) bytewax 0.21.1", _timed(lambda: bytewax(frames), repeat), want,
                           words))
    _report(rows, ns.lines, words)
    return 0


def _report(rows: list[Result | Skipped], lines: int, words: int) -> None:
    print(f"word count: {lines} lines, {words} words, python {sys.version.split()[0]}; "
          "words/s per CPU second (best run)")
    floor = rows[0]
    assert isinstance(floor, Result)
    for r in rows:
        if isinstance(r, Skipped):
            print(f"  {r.name:<24} skipped: {r.reason}")
            continue
        slower = floor.rate / r.rate if r.rate else float("inf")
        note = f"  ({r.note})" if r.note else ""
        print(f"  {r.name:<24} {r.rate:>12,.0f} words/s  {r.seconds:8.3f} s  (wall {r.wall:.3f} s)"
              f"  {slower:6.1f}x the floor{note}")
    found = {r.name.split()[0]: r for r in rows if isinstance(r, Result)}
    b, bs, d = found.get("(b)"), found.get("(bs)"), found.get("(d)")
    if b and d:
        ratio = b.rate / d.rate
        verdict = "meets" if ratio >= GOAL_VS_BYTEWAX else "MISSES"
        print(f"  (b)/(d) = {ratio:.2f}  ({verdict} the goal of >= {GOAL_VS_BYTEWAX:.0f}x Bytewax)")
    if bs and d:
        print(f"  (bs)/(d) = {bs.rate / d.rate:.2f}  (serializing between vertices)")
    c = found.get("(c)")
    if c and d:
        ratio = c.rate / d.rate
        verdict = "meets" if ratio >= ENGINE_GOAL_VS_BYTEWAX else "MISSES"
        print(f"  (c)/(d) = {ratio:.3f}  ({verdict} the engine's goal of >= "
              f"{ENGINE_GOAL_VS_BYTEWAX:g}x Bytewax: every vertex a process, real sockets)")


if __name__ == "__main__":
    sys.exit(main())
