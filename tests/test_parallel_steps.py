"""Steps in K worker processes behind one socket (``processes=``): on the engine with real
processes, in order on an ordered vertex, every result once, and a killed worker costs a
restart, not a message."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from engine_harness import ROOT, free_port, until_delivered

from apps.data import frame
from nfbuilder.loader import load_app
from nfbuilder.local.engine import Engine
from nfbuilder.local.tcptools import TcpReceiver, send_frames
from nfbuilder.plan import PlanOptions
from nfbuilder.testing import run

APP = os.path.join(os.path.dirname(__file__), "parallel_app.py")


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


async def _engine_run(tmp_path: Path, mode: str, words: list[str], during=None
                      ) -> tuple[list[str], Engine]:
    """tests/parallel_app.py on the engine: ``words`` sent while ``during(engine)`` runs,
    until every one is delivered; the sink's lines and the engine."""
    rx = await TcpReceiver.start()
    port = free_port()
    loaded = load_app(APP, ["--in", f"127.0.0.1:{port}", "--out", f"127.0.0.1:{rx.address[1]}",
                            "--mode", mode])

    async def send_and(engine: Engine) -> None:
        sender = asyncio.ensure_future(send_frames(("127.0.0.1", port),
                                                   [frame(w.encode()) for w in words]))
        if during is not None:
            await during(engine)
        await sender

    try:
        engine = await until_delivered(loaded, len(words), str(tmp_path / "run"),
                                       timeout_s=90, during=send_and)
    finally:
        await rx.close()
    return rx.data().decode().split("\n")[:-1], engine


def test_an_ordered_step_in_two_processes_answers_in_order(tmp_path: Path) -> None:
    words = [f"w{i:04d}" for i in range(3000)]
    seen: list[list[int]] = []

    async def look(engine: Engine) -> None:
        rep = engine.replicas["tag"][0]
        assert rep.proc is not None
        seen.append(_children(rep.proc.pid))

    out, engine = asyncio.run(_engine_run(tmp_path, "ordered", words, look))
    assert [line.split(":")[0] for line in out] == words  # all, once, in order
    pids = {int(line.split(":")[1]) for line in out}
    assert len(seen[0]) == 2 and pids == set(seen[0]), (pids, seen)  # both workers computed
    assert engine.failure is None
    local = run(APP, ["--in", "h:1", "--out", "h:2", "--mode", "ordered"], {0: words})
    assert [x.split(":")[0] for x in local.output().decode().split("\n")[:-1]] == words


def test_an_unordered_step_in_two_processes_gives_every_result_once(tmp_path: Path) -> None:
    words = [f"w{i:04d}" for i in range(3000)]
    out, _ = asyncio.run(_engine_run(tmp_path, "unordered", words))
    assert sorted(line.split(":")[0] for line in out) == words
    assert len({line.split(":")[1] for line in out}) >= 2


def test_a_killed_worker_restarts_its_vertex_and_loses_nothing(tmp_path: Path) -> None:
    words = [f"w{i:05d}" for i in range(6000)]
    killed: list[int] = []

    async def kill_a_worker(engine: Engine) -> None:
        rep = engine.replicas["tag"][0]
        while rep.processed < 500:  # noqa: ASYNC110 - polls a counter, no event exists
            await asyncio.sleep(0.01)
        assert rep.proc is not None
        worker = _children(rep.proc.pid)[0]
        killed.append(worker)
        os.kill(worker, signal.SIGKILL)

    out, engine = asyncio.run(_engine_run(tmp_path, "ordered", words, kill_a_worker))
    assert killed and engine.replicas["tag"][0].restarts >= 1
    got = [line.split(":")[0] for line in out]
    assert set(got) == set(words), f"{len(set(words) - set(got))} lost"
    report = list((tmp_path / "run").rglob("*.log"))
    assert any("worker" in p.read_text(errors="replace") and "SIGKILL" in
               p.read_text(errors="replace") for p in report), "the vertex log names the death"


def test_a_failing_step_in_a_worker_is_a_dead_letter(tmp_path: Path) -> None:
    letters = tmp_path / "dead.jsonl"

    async def go() -> tuple[int, str, bytes]:
        rx = await TcpReceiver.start()
        src = ("127.0.0.1", free_port())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nfbuilder", "run", APP, "--quiet", "--until-idle", "2",
            "--dead-letters", str(letters), "--", "--in", f"{src[0]}:{src[1]}",
            "--out", f"127.0.0.1:{rx.address[1]}", "--mode", "ordered", cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": ROOT}, stderr=asyncio.subprocess.PIPE)
        await send_frames(src, [frame(w) for w in (b"a", b"fail", b"b")], connect_timeout_s=60)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        await rx.close()
        return proc.returncode or 0, err.decode(), rx.data()

    code, err, out = asyncio.run(go())
    assert code == 0, err
    assert [x.split(":")[0] for x in out.decode().split("\n")[:-1]] == ["a", "b"]
    (record,) = [json.loads(line) for line in letters.read_text().splitlines()]
    assert record["step"] == "tag" and "cannot tag 'fail'" in record["error"]


@pytest.mark.parametrize("mode", ["ordered", "unordered"])
def test_the_plan_gives_the_vertex_its_processes(mode: str) -> None:
    from nfbuilder.plan import AppRef, plan

    loaded = load_app(APP, ["--in", "h:1", "--out", "h:2", "--mode", mode])
    _, v = plan(loaded.app, PlanOptions(), AppRef("parallel_app")).find("tag")
    assert v.processes == 2 and v.ordered == (mode == "ordered")
