"""Wallaroo 0.5 apps run unmodified: bytes and int partition keys, the app's serialize on the
last hop (the sink's encoder runs with the last step), the same computation twice, and state
between runs of the embedded engine. The apps are ours, in tests/fidelity/."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from engine_harness import free_port, wait_idle

from nfbuilder.loader import load_app
from nfbuilder.local.engine import Engine, EngineOptions
from nfbuilder.local.tcptools import TcpReceiver, send_frames
from nfbuilder.plan import PlanOptions, plan
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.testing import run, run_app
from nfbuilder.topology import partition_key

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APPS = HERE / "fidelity"
ARGS = ["--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def on_engine(app: Path, frames: list[bytes], tmp_path: Path, **plan_opts: Any) -> bytes:
    """Run ``app`` (one TCP source, one TCP sink) on the engine; what the sink received."""
    async def go() -> bytes:
        rx = await TcpReceiver.start()
        src = free_port()
        loaded = load_app(str(app), ["--in", f"127.0.0.1:{src}",
                                     "--out", f"127.0.0.1:{rx.address[1]}"])
        engine = Engine(loaded, EngineOptions(PlanOptions(**plan_opts), quiet=True,
                                              work_dir=str(tmp_path / "run")))
        await engine.start()
        try:
            await send_frames(("127.0.0.1", src), frames)
            await wait_idle(engine, 1.0)
            await engine.drain()
        finally:
            await engine.stop_processes()
            await rx.close()
        assert engine.failure is None, engine.failure
        return rx.data()

    return asyncio.run(go())


# ------------------------------------------------------------ partition keys


def test_partition_keys_convert_as_wallaroo_0_5_4_did() -> None:
    assert partition_key(b"kw") == partition_key("kw") == "kw"
    assert partition_key(117) == "u" and partition_key(117, u64=True) == "117"
    assert partition_key(("a", 1)) == "('a', 1)"
    with pytest.raises(ValueError) as err:
        partition_key(b"\xff")
    assert str(err.value) == ("partition key b'\\xff' is not UTF-8 text (invalid start byte at "
                              "byte 0); return a str, or bytes that are UTF-8")
    with pytest.raises(ValueError, match=r"an int key becomes chr\(key\)"):
        partition_key(-1)


def test_bytes_keys_match_declared_bytes_keys_in_the_harness() -> None:
    result = run(str(APPS / "bytes_keys.py"), ARGS,
                 {0: [frame(b"kw 1"), frame(b"ab 2"), frame(b"kw 3")]})
    assert result.outputs == {"sink": [b"kw 1\n", b"ab 2\n", b"kw 4\n"]}
    assert result.unknown_keys == {"totals": 0}
    assert result.state("totals", b"kw").total == result.state("totals", "kw").total == 4


def test_bytes_keys_on_the_engine(tmp_path: Path) -> None:
    out = on_engine(APPS / "bytes_keys.py", [frame(b"kw 1"), frame(b"zz 5"), frame(b"kw 3"),
                                             frame(b"nope 9")], tmp_path)
    assert sorted(out.split(b"\n")[:-1]) == [b"kw 1", b"kw 4", b"zz 5"]  # 'nope' undeclared


def test_a_partition_function_returning_bytes_that_are_not_utf8_is_named() -> None:
    with pytest.raises(UserCodeError) as err:
        run_app(str(APPS / "bytes_keys.py"), ARGS, {0: [frame(b"\xff 1")]})
    assert ("pipeline 'totals', step 'add': " in str(err.value)
            and "by_key" in str(err.value)
            and "returned partition key b'\\xff' is not UTF-8 text" in str(err.value))


def test_int_keys_become_chr_of_the_int() -> None:
    result = run(str(APPS / "int_keys.py"), ARGS, {0: [frame(b"1"), frame(b"4"), frame(b"2")]})
    assert result.outputs == {"sink": [b"1 1\n", b"1 2\n", b"2 1\n"]}
    assert result.unknown_keys == {"counts": 0}
    assert result.state("counts", 118).n == 2  # 117 + 4 % 3 -> chr(118) == 'v'
    assert result.state("counts", "v").n == 2


# ------------------------------------------------------------ serialize on the last hop


def test_an_app_serialize_that_knows_only_what_crosses_workers_works(tmp_path: Path) -> None:
    # its serialize returns None for the tuples only the last step makes; the encoder runs
    # with that step, so the tuples never cross a hop
    frames = [frame(b"apple"), frame(b"fig")]
    assert run_app(str(APPS / "narrow_serialize.py"), ARGS, {0: frames}, serialize=True) == {
        "sink": [b"apple:5\n", b"fig:3\n"]}
    assert on_engine(APPS / "narrow_serialize.py", frames, tmp_path) == b"apple:5\nfig:3\n"


def test_serialize_returning_no_bytes_names_the_step_and_the_type() -> None:
    from fidelity.narrow_serialize import crossing_setup

    with pytest.raises(UserCodeError) as err:
        run_app(crossing_setup, ARGS, {0: [frame(b"apple")]}, serialize=True)
    assert str(err.value).startswith(
        "pipeline 'words', step 'measure': the app's serialize returned NoneType for an output "
        "of type tuple; it must return bytes (what crosses to the next vertex).")


# ------------------------------------------------------------ the same computation twice


def test_the_same_computation_three_times_in_a_pipeline(tmp_path: Path) -> None:
    graph = plan(load_app(str(APPS / "twice.py"), ARGS).app)
    assert [v.name for v in graph.vertices()] == ["source", "double", "double-2", "double-3",
                                                  "sink"]
    assert run_app(str(APPS / "twice.py"), ARGS, {0: [frame(b"1"), frame(b"5")]}) == {
        "sink": [b"8\n", b"40\n"]}
    assert on_engine(APPS / "twice.py", [frame(b"1"), frame(b"5")], tmp_path) == b"8\n40\n"


# ------------------------------------------------------------ state between runs


def nfb_run(app: str, args: list[str], *opts: str, cwd: Path, send: list[bytes],
            port: int) -> tuple[int, str]:
    """``nfbuilder run`` as a user runs it; returns (exit code, stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfbuilder", "run", app, "--until-idle", "2", *opts, "--",
         *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    asyncio.run(send_frames(("127.0.0.1", port), send, connect_timeout_s=60))
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def alphabet_run(tmp_path: Path, *opts: str) -> tuple[int, str, dict[str, int]]:
    """``nfbuilder run apps/alphabet.py`` on 200 votes: exit code, stderr, last total per
    letter."""
    from apps.data import alphabet as data

    async def go() -> tuple[int, str, bytes]:
        rx = await TcpReceiver.start()
        src = free_port()
        args = ["--in", f"127.0.0.1:{src}", "--out", f"127.0.0.1:{rx.address[1]}"]
        code, err = await asyncio.get_running_loop().run_in_executor(None, lambda: nfb_run(
            str(ROOT / "apps" / "alphabet.py"), args, *opts, cwd=tmp_path,
            send=data.inputs(200)[0], port=src))
        await rx.close()
        return code, err, rx.data()

    code, err, out = asyncio.run(go())
    return code, err, dict(data.parse_output(out))


def test_each_run_starts_empty_by_default(tmp_path: Path) -> None:
    from apps.data import alphabet as data

    want = data.expected(data.inputs(200))
    c1, e1, first = alphabet_run(tmp_path)
    c2, e2, second = alphabet_run(tmp_path)
    assert (c1, c2) == (0, 0), e1 + e2
    assert first == want and second == want  # the second run did not add to the first's
    assert not (tmp_path / ".nfbuilder").exists()


def test_the_same_work_dir_resumes_and_fresh_starts_empty(tmp_path: Path) -> None:
    from apps.data import alphabet as data

    want = data.expected(data.inputs(200))
    work = str(tmp_path / "work")
    c1, e1, first = alphabet_run(tmp_path, "--work-dir", work)
    c2, e2, second = alphabet_run(tmp_path, "--work-dir", work)
    assert (c1, c2) == (0, 0), e1 + e2
    assert first == want
    assert second == {k: 2 * v for k, v in want.items()}  # resumed: totals continue
    assert "empty, starting fresh" in e1
    # alphabet's state is one to_stateful object: one key
    assert "resuming 1 key(s) from an earlier run (--fresh starts empty)" in e2
    c3, e3, third = alphabet_run(tmp_path, "--work-dir", work, "--fresh")
    assert c3 == 0 and third == want
    assert "--fresh: 1 key(s) of an earlier run deleted, starting empty" in e3
