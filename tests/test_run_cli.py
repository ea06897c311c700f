"""`nfbuilder run` as a user runs it: a real subprocess, real TCP in and out."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

from engine_harness import ROOT, free_port

from apps.data import frame
from nfbuilder.local.tcptools import TcpReceiver, send_frames


async def start_run(app: str, args: list[str], *opts: str, cwd: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nfbuilder", "run", app, *opts, "--work-dir", str(cwd / "w"), "--",
        *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def start_reverse(
    tmp_path: Path, *opts: str
) -> tuple[asyncio.subprocess.Process, TcpReceiver, tuple[str, int]]:
    """``nfbuilder run apps/reverse.py`` with a receiver: (the run, the receiver, its source)."""
    rx = await TcpReceiver.start()
    src = ("127.0.0.1", free_port())
    proc = await start_run(os.path.join(ROOT, "apps", "reverse.py"),
                           ["--in", f"{src[0]}:{src[1]}", "--out", f"127.0.0.1:{rx.address[1]}"],
                           *opts, cwd=tmp_path)
    return proc, rx, src


def reverse_run(tmp_path: Path, *opts: str, n: int = 20) -> tuple[int, str, bytes]:
    async def go() -> tuple[int, str, bytes]:
        proc, rx, src = await start_reverse(tmp_path, *opts)
        await send_frames(src, [frame(f"w{i}".encode()) for i in range(n)], connect_timeout_s=60)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        await rx.close()
        return proc.returncode or 0, err.decode(), rx.data()
    return asyncio.run(go())


def test_until_idle_ends_the_run_with_status_0_and_shows_status(tmp_path: Path) -> None:
    code, err, out = reverse_run(tmp_path, "--until-idle", "1")
    assert code == 0, err
    assert out.decode().split("\n")[:-1] == [f"w{i}"[::-1] for i in range(20)]
    assert "[nfbuilder] reverse" in err and "processed" in err  # plain status lines when piped


def test_max_messages_ends_the_run(tmp_path: Path) -> None:
    code, err, out = reverse_run(tmp_path, "--max-messages", "20", "--quiet")
    assert code == 0, err
    assert len(out.decode().split("\n")) - 1 == 20
    assert "processed" not in err  # --quiet


def test_sigterm_drains_and_exits_0(tmp_path: Path) -> None:
    async def go() -> tuple[int, bytes]:
        proc, rx, src = await start_reverse(tmp_path, "--quiet")
        await send_frames(src, [frame(f"w{i}".encode()) for i in range(50)], connect_timeout_s=60)
        assert await rx.wait_for(lambda d: d.count(b"\n") >= 50, 60)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 60)
        await rx.close()
        return proc.returncode or 0, rx.data()
    code, out = asyncio.run(go())
    assert code == 0 and out.count(b"\n") == 50


BOOM_APP = textwrap.dedent('''
    import nfbuilder as wallaroo

    def application_setup(args):
        (ih, ip), = wallaroo.tcp_parse_input_addrs(args)
        (oh, op), = wallaroo.tcp_parse_output_addrs(args)
        ab = wallaroo.ApplicationBuilder("Boom")
        ab.new_pipeline("p", wallaroo.TCPSourceConfig(ih, ip, decode))
        ab.to(explode)
        ab.to_sink(wallaroo.TCPSinkConfig(oh, op, encode))
        ab.on_error("fail")  # Numaflow's own behaviour: the vertex exits, restarted
        return ab.build()

    @wallaroo.decoder(header_length=4, length_fmt=">I")
    def decode(bs):
        return bs.decode()

    @wallaroo.computation(name="explode")
    def explode(data):
        if data == "bad":
            raise ValueError("cannot handle " + data)
        return data

    @wallaroo.encoder
    def encode(data):
        return data + "\\n"
''')


def test_user_code_error_under_fail_is_reported_with_step_function_and_traceback(
        tmp_path: Path) -> None:
    app = tmp_path / "boom.py"
    app.write_text(BOOM_APP)

    async def go() -> tuple[int, str]:
        rx = await TcpReceiver.start()
        src = ("127.0.0.1", free_port())
        proc = await start_run(str(app), ["--in", f"{src[0]}:{src[1]}",
                                          "--out", f"127.0.0.1:{rx.address[1]}"], cwd=tmp_path)
        await send_frames(src, [frame(b"good"), frame(b"bad")], connect_timeout_s=60)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        await rx.close()
        return proc.returncode or 0, err.decode()
    code, err = asyncio.run(go())
    assert code == 1
    assert "UDF_EXECUTION_ERROR(udf): pipeline 'p', step 'explode'" in err
    assert "boom.py" in err and "raised ValueError('cannot handle bad')" in err
    assert "Traceback" in err
    assert "keeps failing" in err


def test_unreachable_state_store_is_a_clear_error_with_the_password_masked(tmp_path: Path) -> None:
    async def go() -> tuple[int, str]:
        url = tmp_path / "store-url"  # not on the command line: ps shows it to every user
        url.write_text("redis://app:s3cret@127.0.0.1:1/0\n")
        proc = await start_run(os.path.join(ROOT, "apps", "alphabet.py"),
                               ["--in", f"127.0.0.1:{free_port()}", "--out", "127.0.0.1:9"],
                               "--state-store-file", str(url), cwd=tmp_path)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode or 0, err.decode()
    code, err = asyncio.run(go())
    assert code == 1
    assert "redis://app:***@127.0.0.1:1/0" in err and "s3cret" not in err
    assert "letter-state" in err


def test_sigkill_of_the_run_leaves_no_vertex_process_behind(tmp_path: Path) -> None:
    import psutil

    async def go() -> tuple[list[psutil.Process], tuple[str, int]]:
        proc, rx, src = await start_reverse(tmp_path, "--quiet")
        await send_frames(src, [frame(b"w")], connect_timeout_s=60)
        assert await rx.wait_for(lambda d: d.count(b"\n") >= 1, 60)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # source, map, sink
        proc.kill()
        await proc.wait()
        await rx.close()
        return children, src

    children, src = asyncio.run(go())
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert alive == [], [p.cmdline() for p in alive]
    import socket

    with socket.socket() as s:  # the TCP source's port was released
        assert s.connect_ex(src) != 0
