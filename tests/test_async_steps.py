"""``async def`` steps: awaited on the vertex's step loop, many at once on unordered vertices,
one at a time on ordered ones, bounded by a per-message timeout; the engine (real processes,
real TCP) and the in-process harness give the same outputs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from engine_harness import ROOT, free_port

from apps.data import frame
from nfbuilder.dsl.errors import WallarooParameterError
from nfbuilder.local.tcptools import TcpReceiver, send_frames
from nfbuilder.testing import run

APP = os.path.join(os.path.dirname(__file__), "async_app.py")


async def _run_cli(tmp_path: Path, app: str, app_args: list[str], frames: list[bytes],
                   *opts: str) -> tuple[int, str, bytes]:
    rx = await TcpReceiver.start()
    src = ("127.0.0.1", free_port())
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nfbuilder", "run", app, "--quiet", "--until-idle", "2", *opts,
        "--", "--in", f"{src[0]}:{src[1]}", "--out", f"127.0.0.1:{rx.address[1]}", *app_args,
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await send_frames(src, frames, connect_timeout_s=60)
    _, err = await asyncio.wait_for(proc.communicate(), 180)
    await rx.close()
    return proc.returncode or 0, err.decode(), rx.data()


def _lines(out: bytes) -> list[str]:
    return out.decode().split("\n")[:-1]


def test_an_async_parallel_step_awaits_many_messages_at_once(tmp_path: Path) -> None:
    """100 messages awaiting 0.2 s each: on the engine they wait together (each output says how
    many were already waiting when it started), and every one arrives once; the harness gives
    the same messages."""
    words = [f"m{i:03d}" for i in range(100)]
    code, err, out = asyncio.run(_run_cli(
        tmp_path, APP, ["--mode", "concurrent"], [frame(w.encode()) for w in words]))
    assert code == 0, err
    got = [line.rsplit(":", 1) for line in _lines(out)]
    assert sorted(w for w, _ in got) == words
    # serially every message would find none waiting; 100 at 64 per replica overlap widely
    assert max(int(n) for _, n in got) >= 30, got
    local = run(APP, ["--in", "h:1", "--out", "h:2", "--mode", "concurrent"], {0: words})
    assert sorted(x.rsplit(":", 1)[0] for x in _lines(local.output())) == words


def test_an_async_state_step_keeps_each_keys_order_and_exact_state(tmp_path: Path) -> None:
    """A partitioned async state step whose awaits take random times: per key the outputs
    come in input order with positions 1, 2, 3...; engine and harness agree exactly."""
    words = [f"{'abcde'[i % 5]}{i:04d}" for i in range(400)]
    code, err, out = asyncio.run(_run_cli(
        tmp_path, APP, ["--mode", "state"], [frame(w.encode()) for w in words]))
    assert code == 0, err
    per_key: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for line in _lines(out):
        key, pos, word = line.split(":")
        per_key[key].append((int(pos), word))
    for key in "abcde":
        mine = [w for w in words if w[0] == key]
        assert per_key[key] == [(i + 1, w) for i, w in enumerate(mine)], key
    local = run(APP, ["--in", "h:1", "--out", "h:2", "--mode", "state"], {0: words})
    assert sorted(_lines(local.output())) == sorted(_lines(out))
    assert len(local.state("words", "a").words) == 80


def test_a_step_past_its_timeout_is_a_dead_letter_and_the_rest_go_on(tmp_path: Path) -> None:
    letters = tmp_path / "dead.jsonl"
    words = [f"slow{i}" if i % 10 == 3 else f"w{i}" for i in range(50)]
    code, err, out = asyncio.run(_run_cli(
        tmp_path, APP, ["--mode", "timeout"], [frame(w.encode()) for w in words],
        "--dead-letters", str(letters)))
    assert code == 0, err
    assert _lines(out) == [w for w in words if not w.startswith("slow")]
    records = [json.loads(line) for line in letters.read_text().splitlines()]
    assert sorted(r["object"] for r in records) == sorted(
        repr(w) for w in words if w.startswith("slow"))
    assert all("StepTimeout('did not finish within its timeout of 0.3 s')" in r["error"]
               and r["step"] == "maybe slow" for r in records), records[0]


def test_the_harness_reports_a_timeout_as_the_steps_error() -> None:
    from nfbuilder.runtime.errors import UserCodeError

    with pytest.raises(UserCodeError, match=r"step 'maybe slow'.*StepTimeout"):
        run(APP, ["--in", "h:1", "--out", "h:2", "--mode", "timeout"], {0: ["slow"]})


def test_a_steps_own_timeout_error_stays_its_own() -> None:
    """A TimeoutError raised by the step itself is not taken for the step's timeout."""
    from nfbuilder.runtime.steploop import StepTimeout, asynchronous

    async def gives_up(x: object) -> object:
        raise TimeoutError("the service said so")

    with pytest.raises(TimeoutError, match="the service said so") as info:
        asynchronous(gives_up, 5.0)(1)
    assert not isinstance(info.value, StepTimeout)

    async def hangs(x: object) -> object:
        await asyncio.sleep(10)

    with pytest.raises(StepTimeout, match="within its timeout of 0.05 s"):
        asynchronous(hangs, 0.05)(1)


@pytest.mark.parametrize(("kwargs", "is_async", "message"), [
    ({"timeout": 1}, False, "timeout is for async def steps"),
    ({"timeout": 0}, True, "timeout must be a number of seconds > 0, got 0"),
    ({"concurrency": 8}, False, "concurrency is how many messages an async def step awaits"),
    ({"concurrency": 0}, True, "concurrency must be an int >= 1, got 0"),
    ({"processes": 2}, True, "give it concurrency= instead of processes="),
    ({"processes": "2"}, False, "processes must be an int >= 1, got '2'"),
])
def test_bad_execution_keywords_are_refused_where_the_step_is_declared(
        kwargs: dict, is_async: bool, message: str) -> None:
    import nfbuilder as wallaroo

    async def coro(x: object) -> object:
        return x

    def plain(x: object) -> object:
        return x

    with pytest.raises(WallarooParameterError, match=message):
        wallaroo.computation(name="s", **kwargs)(coro if is_async else plain)


def test_a_state_step_cannot_have_processes_and_helpers_cannot_be_async() -> None:
    import nfbuilder as wallaroo

    with pytest.raises(WallarooParameterError, match="a state step runs in one process"):
        wallaroo.state_computation(name="s", processes=2)(lambda d, s: (d, False))

    async def decode(bs: bytes) -> str:
        return bs.decode()

    with pytest.raises(WallarooParameterError, match="the decoder .* is an async def"):
        wallaroo.decoder(header_length=4, length_fmt=">I")(decode)
    with pytest.raises(WallarooParameterError, match="the encoder .* is an async def"):
        wallaroo.encoder(decode)
    with pytest.raises(WallarooParameterError, match="the partition function .* is an async"):
        wallaroo.partition(decode)


def test_the_plan_gives_unordered_async_vertices_their_concurrency() -> None:
    from nfbuilder.loader import load_app
    from nfbuilder.plan import AppRef, PlanOptions, plan

    loaded = load_app(APP, ["--in", "h:1", "--out", "h:2", "--mode", "concurrent"])
    graph = plan(loaded.app, PlanOptions(), AppRef("async_app"))
    _, v = graph.find("probe")
    assert (v.concurrency, v.ordered) == (64, False)
    loaded = load_app(APP, ["--in", "h:1", "--out", "h:2", "--mode", "timeout"])
    _, v = plan(loaded.app, PlanOptions(), AppRef("async_app")).find("maybe-slow")
    assert (v.concurrency, v.ordered) == (1, True)  # ordered: one message at a time


def test_an_ordered_vertex_awaiting_a_step_still_answers_other_calls(tmp_path: Path) -> None:
    """While a batch waits for its async step, the server's loop is free: IsReady answers."""
    import subprocess

    from nfbuilder._proto import map_pb2_grpc
    from nfbuilder.codec import Codec
    from nfbuilder.local.clients import MapClient, SinkDatum
    from nfbuilder.local.rpc import connect, wait_ready
    from nfbuilder.local.serverinfo import wait_server_info

    gate = tmp_path / "gate"
    gate.mkdir()
    env = {**os.environ, "PYTHONPATH": ROOT, "NFBUILDER_SOCKET_DIR": str(tmp_path / "s"),
           "NUMAFLOW_UD_CONTAINER_TYPE": "udf"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfbuilder", "serve", "--app", APP, "--vertex", "gated", "--",
         "--in", "h:1", "--out", "h:2", "--mode", "gate", "--gate", str(gate)],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE)

    async def go() -> list[list]:
        await wait_server_info(tmp_path / "s" / "mapper-server-info", poll_s=0.05,
                               deadline_s=60)
        channel = await connect(str(tmp_path / "s" / "batchmap.sock"), retry_s=0.05,
                                deadline_s=30)
        try:
            client = await MapClient.open(channel)
            word = Codec.for_module(None).dumps("a")
            batch = asyncio.ensure_future(client.map_batch([SinkDatum("m-1", word)]))

            async def started() -> None:
                while not (gate / "started").exists():  # noqa: ASYNC110 - a file is the signal
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(started(), 30)
            await asyncio.wait_for(wait_ready(map_pb2_grpc.MapStub(channel), retry_s=0.05,
                                              deadline_s=5), 5)
            assert not batch.done()
            (gate / "release").touch()
            return await asyncio.wait_for(batch, 30)
        finally:
            await channel.close()

    try:
        (results,) = asyncio.run(go())
        assert [r.value for r in results] == [b"a\n"]  # encoded for the sink
    finally:
        proc.terminate()
        proc.wait(30)
