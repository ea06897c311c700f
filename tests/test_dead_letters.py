"""Dead letters and the error policy: the plan's dead-letter sink and edges, the core's retries,
and the engine (real processes, real TCP) going on past bad frames and failing steps."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import wallaroo_objects as w
from engine_harness import ROOT, free_port

import nfbuilder as wallaroo
from apps.data import frame
from nfbuilder import ApplicationBuilder
from nfbuilder.codec import Codec
from nfbuilder.dsl import WallarooParameterError
from nfbuilder.emit.manifest import emit
from nfbuilder.local.tcptools import TcpReceiver, send_frames
from nfbuilder.plan import (
    DEAD_LETTER,
    KafkaSinkVertex,
    LogSinkVertex,
    PlanOptions,
    TcpSinkVertex,
    plan,
)
from nfbuilder.runtime.core import VertexProgram
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.statetable import StateTable
from nfbuilder.topology import ErrorPolicy, from_actions

# -- the plan ------------------------------------------------------------------------------


def _app(ab: ApplicationBuilder) -> Any:
    return from_actions(ab.build())


def _pipeline() -> ApplicationBuilder:
    return ApplicationBuilder("App").new_pipeline("p", w.tcp_source())


def test_every_vertex_with_user_code_gets_a_dead_letter_edge_and_the_rest_take_not() -> None:
    doc = plan(_app(_pipeline().to(w.double).to_sink(w.tcp_sink()))).docs[0]
    assert doc.dead_letters == "dead-letters"
    assert isinstance(doc.vertex("dead-letters"), LogSinkVertex)
    assert [(e.src, e.dst, e.tags, e.operator) for e in doc.edges] == [
        ("source", "double", (DEAD_LETTER,), "not"),
        ("double", "sink", (DEAD_LETTER,), "not"),
        ("source", "dead-letters", (DEAD_LETTER,), "or"),
        ("double", "dead-letters", (DEAD_LETTER,), "or"),
    ]
    pipeline = emit(plan(_app(_pipeline().to(w.double).to_sink(w.tcp_sink()))))[0]
    assert {"name": "dead-letters", "sink": {"log": {}}, "scale": {"min": 1, "max": 1}} in \
        pipeline["spec"]["vertices"]
    assert pipeline["spec"]["edges"][0]["conditions"] == {
        "tags": {"operator": "not", "values": [DEAD_LETTER]}}


def test_conditional_edges_keep_their_tags_and_a_dead_letter_meets_none_of_them() -> None:
    ab = _pipeline().to(w.double).to_sinks([w.tcp_sink("7002"), w.tcp_sink("7003")])
    doc = plan(_app(ab)).docs[0]
    assert [(e.dst, e.tags, e.operator) for e in doc.edges if e.src == "double"] == [
        ("sink", ("sink",), "or"), ("sink-2", ("sink-2",), "or"),
        ("dead-letters", (DEAD_LETTER,), "or")]


def test_the_fail_policy_everywhere_plans_no_dead_letter_sink() -> None:
    doc = plan(_app(_pipeline().to(w.double).to_sink(w.tcp_sink()).on_error("fail"))).docs[0]
    assert doc.dead_letters is None
    assert all(e.tags == () for e in doc.edges)


def test_a_step_may_dead_letter_under_an_app_that_fails() -> None:
    @wallaroo.computation(name="careful", on_error=("dead-letter", 0))
    def careful(x: Any) -> Any:
        return x

    doc = plan(_app(_pipeline().to(w.double).to(careful).to_sink(w.tcp_sink())
                    .on_error("fail"))).docs[0]
    assert [e.src for e in doc.edges if e.dst == "dead-letters"] == ["careful"]
    work = doc.vertex("careful").works[0]
    assert work.policy("careful") == ErrorPolicy("dead-letter", 0)
    assert work.policy(None) == ErrorPolicy("fail")  # its decoder/encoders: the app's


@pytest.mark.parametrize("bad", [
    "retry", ("dead-letter", -1), ("fail", 1, "soon"), ("fail", True)])
def test_a_bad_policy_is_refused_where_it_is_given(bad: Any) -> None:
    with pytest.raises(WallarooParameterError, match="dead-letter"):
        wallaroo.computation(name="x", on_error=bad)(lambda x: x)
    with pytest.raises(WallarooParameterError, match="ab.on_error"):
        _pipeline().to(w.double).to_sink(w.tcp_sink()).on_error(*(
            (bad,) if isinstance(bad, str) else bad)).build()


def test_the_dead_letter_sink_can_be_kafka_or_tcp_and_containers_plan_the_same() -> None:
    app = _app(_pipeline().to(w.double).to_sink(w.tcp_sink()))
    kafka = plan(app, PlanOptions(dead_letters="kafka://b1:9092,b2:9092/dead")).docs[0]
    v = kafka.vertex("dead-letters")
    assert isinstance(v, KafkaSinkVertex) and (v.brokers, v.topic) == (("b1:9092", "b2:9092"),
                                                                         "dead")
    tcp = plan(app, PlanOptions(dead_letters="tcp://collector:7099"))
    v = tcp.find("dead-letters")[1]
    assert isinstance(v, TcpSinkVertex) and (v.host, v.port) == ("collector", 7099)
    assert v.container is not None and "--dead-letter-sink" in v.container.command
    for bad in ("file:///x", "kafka://b1/", "tcp://host", "tcp://:1"):
        with pytest.raises(ValueError, match="dead-letter sink"):
            PlanOptions(dead_letters=bad)


# -- the core ------------------------------------------------------------------------------

class Flaky:
    """Fails ``failures`` times, then returns its input."""

    def __init__(self, failures: int) -> None:
        self.left = failures

    def name(self) -> str:
        return "flaky"

    def compute(self, data: Any) -> Any:
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("not yet")
        return data


def _program(ab: ApplicationBuilder, vertex: str, store: str | None = None) -> VertexProgram:
    graph = plan(_app(ab))
    _, v = graph.find(vertex)
    codec = Codec.for_module(None)
    state_store = None
    if store:
        from nfbuilder.runtime.state.store import open_store

        state_store = open_store(store, namespace="t")
    return VertexProgram(v, codec, StateTable(state_store, codec))


def test_handle_retries_then_the_message_goes_on() -> None:
    ab = _pipeline().to(Flaky(2)).to_sink(w.tcp_sink()).on_error("dead-letter", 2, 0)
    program = _program(ab, "flaky")
    outs = program.handle(None, Codec.for_module(None).dumps("x"), "m-1")
    assert [(o.value, o.tags) for o in outs] == [(w.encode("x"), ())]  # it encodes: last step
    assert program.dead_lettered == 0


def test_handle_dead_letters_after_the_retries_with_the_whole_record(
        caplog: pytest.LogCaptureFixture) -> None:
    ab = _pipeline().to(Flaky(5)).to_sink(w.tcp_sink()).on_error("dead-letter", 2, 0)
    program = _program(ab, "flaky")
    payload = Codec.for_module(None).dumps("x")
    with caplog.at_level(logging.WARNING, logger="nfbuilder.core"):
        outs = program.handle(None, payload, "m-1")
    assert len(outs) == 1 and outs[0].tags == (DEAD_LETTER,)
    record = json.loads(outs[0].value)
    assert record["pipeline"] == "p" and record["vertex"] == "flaky"
    assert record["step"] == "flaky" and record["function"] == "Flaky.compute"
    assert "raised RuntimeError('not yet')" in record["error"]
    assert "Traceback" in record["traceback"] and record["id"] == "m-1"
    assert record["attempts"] == 3 and record["time"] > 1.7e9
    assert record["payload_b64"] == __import__("base64").b64encode(payload).decode()
    assert program.dead_lettered == 1
    assert any("dead letter" in r.getMessage() for r in caplog.records)


def test_handle_with_fail_raises_for_numaflow_to_restart_the_vertex() -> None:
    ab = _pipeline().to(Flaky(1)).to_sink(w.tcp_sink()).on_error("fail", 0)
    with pytest.raises(UserCodeError, match="not yet") as info:
        _program(ab, "flaky").handle(None, Codec.for_module(None).dumps("x"), "m-1")
    assert info.value.step == "flaky"


def test_an_unpicklable_output_is_a_dead_letter_naming_the_step() -> None:
    @wallaroo.computation(name="make lock")
    def make_lock(x: Any) -> Any:
        import threading

        return threading.Lock()

    ab = _pipeline().to(make_lock).to(w.double).to_sink(w.tcp_sink()).on_error(
        "dead-letter", 0)
    outs = _program(ab, "make-lock").handle(None, Codec.for_module(None).dumps("x"), "m-1")
    record = json.loads(outs[0].value)
    assert record["step"] == "make lock" and "cannot be pickled" in record["error"]


def test_a_failed_state_step_leaves_the_saved_state_as_it_was(tmp_path: Path) -> None:
    class Box:
        def __init__(self) -> None:
            self.items: list[str] = []

    @wallaroo.state_computation(name="keep")
    def keep(x: str, box: Box) -> Any:
        box.items.append(x)  # changes the state, then fails
        if x == "bad":
            raise ValueError(x)
        return len(box.items), True

    codec = Codec.for_module(None)
    ab = _pipeline().to_stateful(keep, Box, "box").to_sink(w.tcp_sink()).on_error(
        "dead-letter", 1, 0)
    program = _program(ab, "box", f"sqlite:///{tmp_path / 's.db'}")
    assert program.handle(None, codec.dumps("a"), "m-1")[0].value == w.encode(1)
    assert program.handle(None, codec.dumps("bad"), "m-2")[0].tags == (DEAD_LETTER,)
    assert program.handle(None, codec.dumps("b"), "m-3")[0].value == w.encode(2)
    assert program.states.get("box", "_").items == ["a", "b"]


# -- the engine: `nfbuilder run` as a user runs it -------------------------------------------

FAULTY_APP = textwrap.dedent('''
    import time
    import nfbuilder as wallaroo

    def application_setup(args):
        (ih, ip), = wallaroo.tcp_parse_input_addrs(args)
        (oh, op), = wallaroo.tcp_parse_output_addrs(args)
        ab = wallaroo.ApplicationBuilder("Faulty")
        ab.new_pipeline("p", wallaroo.TCPSourceConfig(ih, ip, decode))
        ab.to(check)
        ab.to_sink(wallaroo.TCPSinkConfig(oh, op, encode))
        ab.on_error("dead-letter", retries=1, backoff=0.01)
        return ab.build()

    @wallaroo.decoder(header_length=4, length_fmt=">I")
    def decode(bs):
        return bs.decode("utf-8")   # raises on invalid UTF-8

    @wallaroo.computation(name="check")
    def check(data):
        if data.startswith("bad"):
            raise ValueError("cannot handle " + data)
        if data.startswith("sleep"):
            time.sleep(float(data.split()[1]))
        return data

    @wallaroo.encoder
    def encode(data):
        return data + "\\n"
''')


async def _start(tmp_path: Path, source: str, *opts: str) -> tuple[
        asyncio.subprocess.Process, TcpReceiver, tuple[str, int]]:
    app = tmp_path / "app.py"
    app.write_text(source)
    rx = await TcpReceiver.start()
    src = ("127.0.0.1", free_port())
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nfbuilder", "run", str(app), "--quiet", *opts, "--",
        "--in", f"{src[0]}:{src[1]}", "--out", f"127.0.0.1:{rx.address[1]}", cwd=tmp_path,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    return proc, rx, src


def test_bad_frames_and_failing_steps_are_dead_lettered_and_the_rest_delivered_once(
        tmp_path: Path) -> None:
    letters = tmp_path / "dead.jsonl"
    frames = []
    for i in range(1000):
        if i % 100 == 7:
            frames.append(frame(b"\xff\xfe not utf-8 %d" % i))
        elif i % 100 == 57:
            frames.append(frame(b"bad %d" % i))
        else:
            frames.append(frame(b"w%d" % i))

    async def go() -> tuple[int, str, bytes]:
        proc, rx, src = await _start(tmp_path, FAULTY_APP, "--until-idle", "2",
                                     "--dead-letters", str(letters))
        await send_frames(src, frames, connect_timeout_s=60)
        _, err = await asyncio.wait_for(proc.communicate(), 180)
        await rx.close()
        return proc.returncode or 0, err.decode(), rx.data()

    code, err, out = asyncio.run(go())
    assert code == 0, err
    got = out.decode().split("\n")[:-1]
    assert sorted(got) == sorted(f"w{i}" for i in range(1000) if i % 100 not in (7, 57))
    assert len(got) == 980  # exactly once
    records = [json.loads(line) for line in letters.read_text().splitlines()]
    assert len(records) == 20
    decoding = [r for r in records if r["step"] is None]
    stepping = [r for r in records if r["step"] == "check"]
    assert len(decoding) == 10 and len(stepping) == 10
    assert all("UnicodeDecodeError" in r["error"] and r["vertex"] == "source"
               for r in decoding)
    assert sorted(r["object"] for r in stepping) == sorted(
        repr(f"bad {i}") for i in range(1000) if i % 100 == 57)
    assert all("raised ValueError('cannot handle bad" in r["error"] for r in stepping)
    assert "pipeline 'p': 1000 entered, 980 delivered, 0 filtered, 0 dropped by rule, " \
           "20 dead-lettered, 0 lost" in err
    assert f"20 dead letter(s) in {letters}" in err


def test_a_step_busy_on_a_message_is_not_idle_and_is_reported(tmp_path: Path) -> None:
    async def go() -> tuple[int, str, bytes]:
        proc, rx, src = await _start(tmp_path, FAULTY_APP, "--until-idle", "4",
                                     "--busy-warning", "3")
        await send_frames(src, [frame(b"w0"), frame(b"sleep 15"), frame(b"w2")],
                          connect_timeout_s=60)
        _, err = await asyncio.wait_for(proc.communicate(), 180)
        await rx.close()
        return proc.returncode or 0, err.decode(), rx.data()

    code, err, out = asyncio.run(go())
    # the run waited for the busy step instead of calling it idle
    assert sorted(out.decode().split("\n")[:-1]) == ["sleep 15", "w0", "w2"], err
    assert code == 0, err
    assert "warning: vertex check has been busy on message" in err


def test_ctrl_c_while_a_step_hangs_exits_non_zero_naming_what_was_not_delivered(
        tmp_path: Path) -> None:
    async def go() -> tuple[int, str, bytes]:
        proc, rx, src = await _start(tmp_path, FAULTY_APP, "--grace", "1")
        # w0 first: an ordered step runs in batches, and a batch is answered as a whole
        await send_frames(src, [frame(b"w0")], connect_timeout_s=60)
        assert await rx.wait_for(lambda d: d.count(b"\n") >= 1, 60)
        await send_frames(src, [frame(b"sleep 600"), frame(b"w2")], connect_timeout_s=60)
        await asyncio.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        await rx.close()
        return proc.returncode or 0, err.decode(), rx.data()

    code, err, out = asyncio.run(go())
    assert code == 3, err
    assert "lost" in err and "not delivered when the run stopped: vertex check busy on " \
                                "message" in err
    assert "messages were lost" in err
    assert b"sleep" not in out


ALL_DROPPED_APP = textwrap.dedent('''
    import nfbuilder as wallaroo

    def application_setup(args):
        (ih, ip), = wallaroo.tcp_parse_input_addrs(args)
        (oh, op), = wallaroo.tcp_parse_output_addrs(args)
        ab = wallaroo.ApplicationBuilder("Dropped")
        ab.new_pipeline("p", wallaroo.TCPSourceConfig(ih, ip, decode))
        ab.to_state_partition(count, Count, "counts", first, ["a"])
        ab.to_sink(wallaroo.TCPSinkConfig(oh, op, encode))
        return ab.build()

    class Count:
        def __init__(self):
            self.n = 0

    @wallaroo.decoder(header_length=4, length_fmt=">I")
    def decode(bs):
        return bs.decode()

    @wallaroo.partition
    def first(data):
        return data[0]

    @wallaroo.state_computation(name="count")
    def count(data, state):
        state.n += 1
        return state.n, True

    @wallaroo.encoder
    def encode(n):
        return "%d\\n" % n
''')


def test_a_run_whose_every_message_is_dropped_by_rule_exits_non_zero(tmp_path: Path) -> None:
    async def go() -> tuple[int, str]:
        proc, rx, src = await _start(tmp_path, ALL_DROPPED_APP, "--until-idle", "2")
        await send_frames(src, [frame(b"zebra %d" % i) for i in range(200)],
                          connect_timeout_s=60)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        await rx.close()
        return proc.returncode or 0, err.decode()

    code, err = asyncio.run(go())
    assert code == 3, err
    assert "pipeline 'p': 200 entered, 0 delivered, 0 filtered, 200 dropped by rule (e.g. " \
           "step 'count', key 'z'), 0 dead-lettered, 0 lost" in err


def test_sigkill_of_the_source_process_is_reported_as_a_loss(tmp_path: Path) -> None:
    import psutil

    async def go() -> tuple[int, str]:
        proc, rx, src = await _start(tmp_path, FAULTY_APP, "--until-idle", "3")
        await send_frames(src, [frame(b"w0")], connect_timeout_s=60)
        assert await rx.wait_for(lambda d: d.count(b"\n") >= 1, 60)
        source = [p for p in psutil.Process(proc.pid).children(recursive=True)
                  if "--vertex" in p.cmdline() and "source" in p.cmdline()
                  and "--transformer" not in p.cmdline()]
        assert len(source) == 1
        source[0].kill()
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        await rx.close()
        return proc.returncode or 0, err.decode()

    code, err = asyncio.run(go())
    assert code == 3, err
    assert "source source was restarted 1 time(s)" in err


def test_a_clean_run_removes_its_work_dir_and_a_failed_one_keeps_it(tmp_path: Path) -> None:
    import shutil
    import tempfile

    # a short TMPDIR: the work dir holds the vertices' Unix sockets (at most 107 bytes a path)
    work = Path(tempfile.mkdtemp(prefix="nfbw-", dir="/tmp"))

    async def go(source: str, frames: list[bytes]) -> tuple[int, str]:
        proc, rx, src = await _start(tmp_path, source, "--until-idle", "2")
        await send_frames(src, frames, connect_timeout_s=60)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        await rx.close()
        return proc.returncode or 0, err.decode()

    env = dict(os.environ)
    os.environ["TMPDIR"] = str(work)
    try:
        code, err = asyncio.run(go(FAULTY_APP, [frame(b"w0")]))
        assert code == 0, err
        assert list(work.iterdir()) == []
        code, err = asyncio.run(go(ALL_DROPPED_APP, [frame(b"zz")]))
        assert code == 3
        kept = list(work.iterdir())
        assert len(kept) == 1 and f"work dir kept: {kept[0]}" in err
    finally:
        os.environ.clear()
        os.environ.update(env)
        shutil.rmtree(work, ignore_errors=True)


def test_run_refuses_a_password_on_its_command_line_and_reads_a_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nfbuilder.cli import main

    assert main(["run", "x.py", "--state-store", "redis://u:s3cret@h:1/0"]) == 2
    assert "--state-store has credentials in it" in capsys.readouterr().err
    url_file = tmp_path / "url"
    url_file.write_text("")
    assert main(["run", "x.py", "--state-store-file", str(url_file)]) == 2
    assert f"--state-store-file {url_file} is empty" in capsys.readouterr().err
    # the URL read from the file is the one the run uses (it gets as far as loading the app)
    url_file.write_text("redis://u:s3cret@h:1/0\n")
    assert main(["run", "x.py", "--state-store-file", str(url_file)]) == 2
    err = capsys.readouterr().err
    assert "credentials" not in err and "x.py" in err

