"""The plan's vertex specs and the defects their absence caused: colliding routing tags, the plan
digest that ties a container to its manifest, one router for the harness and the engine, CLI
option errors, and a real ``AttributeError`` in a client no longer taken for "not connected"."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from engine_harness import free_port, wait_idle

from nfbuilder.cli import main
from nfbuilder.loader import load_app
from nfbuilder.local.engine import Engine, EngineOptions
from nfbuilder.local.flow import Flow, Msg, SourceState, Tally, Token
from nfbuilder.local.process import NotConnected, Replica, ReplicaSpec
from nfbuilder.local.tcptools import TcpReceiver, send_frames
from nfbuilder.plan import (
    DROP,
    AppRef,
    Edge,
    PlanOptions,
    Router,
    StateVertex,
    TcpSourceVertex,
    partition_of,
    plan,
)
from nfbuilder.runtime.vertex import PlanMismatch, build_program
from nfbuilder.testing import run_app

ROOT = Path(__file__).resolve().parents[1]

# Two pipelines whose names slug alike ("orders-eu"), joined at a shared state, each with its own
# sink: every output must reach its own pipeline's sink only.
TWIN_ORDERS = '''
import struct
import nfbuilder as wallaroo


class Seen:
    def __init__(self):
        self.n = 0


@wallaroo.state_computation(name="note")
def note(data, state):
    state.n += 1
    return data, True


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode()


@wallaroo.encoder
def encode(data):
    return (data + "\\n").encode()


def application_setup(args):
    ins = wallaroo.tcp_parse_input_addrs(args)
    outs = wallaroo.tcp_parse_output_addrs(args)
    ab = wallaroo.ApplicationBuilder("Twin Orders")
    ab.new_pipeline("Orders EU", wallaroo.TCPSourceConfig(ins[0][0], ins[0][1], decode))
    ab.to_stateful(note, Seen, "seen")
    ab.to_sink(wallaroo.TCPSinkConfig(outs[0][0], outs[0][1], encode))
    ab.new_pipeline("orders-eu", wallaroo.TCPSourceConfig(ins[1][0], ins[1][1], decode))
    ab.to_stateful(note, Seen, "seen")
    ab.to_sink(wallaroo.TCPSinkConfig(outs[1][0], outs[1][1], encode))
    return ab.build()
'''


def frame(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(4, "big") + data


def twin_app(tmp_path: Path) -> Path:
    path = tmp_path / "twin_orders.py"
    path.write_text(TWIN_ORDERS)
    return path


def twin_args(ins: list[int], outs: list[int]) -> list[str]:
    return ["--in", ",".join(f"127.0.0.1:{p}" for p in ins),
            "--out", ",".join(f"127.0.0.1:{p}" for p in outs)]


# ------------------------------------------------------------ routing tags


def test_pipelines_whose_names_slug_alike_get_distinct_tags(tmp_path: Path) -> None:
    loaded = load_app(str(twin_app(tmp_path)), twin_args([7010, 7011], [7002, 7003]))
    (doc,) = plan(loaded.app).docs
    state = doc.vertex("seen")
    assert [w.tag for w in state.works] == ["orders-eu", "orders-eu-2"]
    assert sorted((e.src, e.dst, e.tags) for e in doc.edges if e.src == "seen") == [
        ("seen", "dead-letters", ("nfbuilder-dead-letter",)),
        ("seen", "orders-eu-sink", ("orders-eu",)),
        ("seen", "orders-eu-sink-2", ("orders-eu-2",))]


def test_harness_sends_each_output_to_its_own_pipelines_sink(tmp_path: Path) -> None:
    outs = run_app(str(twin_app(tmp_path)), twin_args([7010, 7011], [7002, 7003]),
                   {"Orders EU": ["eu-1", "eu-2"], "orders-eu": ["lower-1"]})
    assert outs == {"orders-eu-sink": [b"eu-1\n", b"eu-2\n"], "orders-eu-sink-2": [b"lower-1\n"]}


def test_engine_sends_each_output_to_its_own_pipelines_sink(tmp_path: Path) -> None:
    async def go() -> tuple[bytes, bytes, Engine]:
        rx = [await TcpReceiver.start(), await TcpReceiver.start()]
        ins = [free_port(), free_port()]
        loaded = load_app(str(twin_app(tmp_path)), twin_args(ins, [r.address[1] for r in rx]))
        engine = Engine(loaded, EngineOptions(PlanOptions(state_store="memory://"), quiet=True,
                                              work_dir=str(tmp_path / "run")))
        await engine.start()
        try:
            await send_frames(("127.0.0.1", ins[0]), [frame("eu-1"), frame("eu-2")])
            await send_frames(("127.0.0.1", ins[1]), [frame("lower-1")])
            await wait_idle(engine, 1.0)
            await engine.drain()
        finally:
            await engine.stop_processes()
            for r in rx:
                await r.close()
        return rx[0].data(), rx[1].data(), engine

    first, second, engine = asyncio.run(go())
    assert engine.failure is None
    assert sorted(first.split()) == [b"eu-1", b"eu-2"]
    assert second.split() == [b"lower-1"]


# ------------------------------------------------------------ one router


def test_router_follows_tag_conditions_and_drop() -> None:
    router = Router([Edge("s", "a", ("x",)), Edge("s", "b", ("y", "z")), Edge("s", "c")])
    assert router.destinations(("x",)) == ("a", "c")
    assert router.destinations(("z", "x")) == ("a", "b", "c")
    assert router.destinations(()) == ("c",)
    assert router.destinations((DROP, "x")) == ()
    assert router.always is None and router.all == ("a", "b", "c")
    plain = Router([Edge("s", "a"), Edge("s", "b")])
    assert plain.always == ("a", "b") and plain.destinations(("t",)) == ("a", "b")
    assert plain.destinations((DROP,)) == ()


def test_partition_of_is_stable_and_within_range() -> None:
    spread = {partition_of((f"k{i}",), 3) for i in range(100)}
    assert spread == {0, 1, 2}
    assert all(partition_of(("k7",), 3) == partition_of(("k7",), 3) for _ in range(3))
    assert partition_of(("anything",), 1) == 0


# ------------------------------------------------------------ specs and the digest


def reverse_app(**options: object) -> tuple[object, str]:
    args = ("--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002")
    loaded = load_app(str(ROOT / "apps" / "reverse.py"), args)
    graph = plan(loaded.app, PlanOptions(**options),  # type: ignore[arg-type]
                 AppRef(loaded.module_name, args))
    return graph, graph.digest


def test_specs_carry_the_resolved_configuration_and_the_container() -> None:
    loaded = load_app(str(ROOT / "apps" / "word_count.py"),
                      ["--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"])
    graph = plan(loaded.app, PlanOptions(partitions=3, state_store="sqlite:///s.db"),
                 AppRef("word_count", ("--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002")))
    _, src = graph.find("source")
    assert isinstance(src, TcpSourceVertex) and (src.host, src.port) == ("127.0.0.1", 7010)
    _, state = graph.find("word-totals")
    assert isinstance(state, StateVertex) and state.partitions == 3 and state.ordered
    assert state.container is not None and state.container.service == "batchmap"
    assert state.container.command[4:8] == ("--app", "word_count", "--vertex", "word-totals")
    assert state.container.values() == {"PYTHONUNBUFFERED": "1",
                                        "NFBUILDER_PLAN_DIGEST": graph.digest,
                                        "NFBUILDER_STATE_STORE": "sqlite:///s.db"}


def test_digest_ignores_deployment_options_but_not_the_app_or_its_args() -> None:
    graph, digest = reverse_app()
    assert reverse_app(partitions=7, max_replicas=9, image="x:1", namespace="n",
                       state_store="sqlite:///x.db")[1] == digest
    assert reverse_app(fuse=True)[1] != digest
    other = load_app(str(ROOT / "apps" / "reverse.py"), ["--in", "127.0.0.1:7999", "--out",
                                                         "127.0.0.1:7002"])
    assert plan(other.app).digest != digest


def test_build_program_checks_the_digest() -> None:
    args = ["--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]
    loaded = load_app(str(ROOT / "apps" / "reverse.py"), args)
    _, digest = reverse_app()
    program = build_program(loaded, "reverse", fuse=False, state_store=None, digest=digest)
    assert program.vertex.name == "reverse"
    with pytest.raises(PlanMismatch) as err:
        build_program(loaded, "reverse", fuse=False, state_store=None, digest="0123456789abcdef")
    assert str(err.value) == (
        f"vertex 'reverse': the application's plan is not the one this manifest was compiled "
        f"from (plan digest {digest}, the manifest's 0123456789abcdef): the app or its arguments "
        "changed since 'nfbuilder compile'. Compile again and apply the new manifest (and image).")


def test_an_app_edited_after_compile_fails_at_serve_startup(tmp_path: Path) -> None:
    """Compile, edit the app, start the container command with the manifest's env: exit 2."""
    app = tmp_path / "edited.py"
    app.write_text((ROOT / "apps" / "reverse.py").read_text())
    args = ["--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]
    assert main(["compile", str(app), "-o", str(tmp_path / "build"), "--", *args]) == 0
    docs = list(yaml.safe_load_all((tmp_path / "build" / "pipeline.yaml").read_text()))
    vertex = next(v for v in docs[0]["spec"]["vertices"] if v["name"] == "reverse")
    container = vertex["udf"]["container"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NFBUILDER_PLAN_DIGEST"] == docs[0]["metadata"]["annotations"][
        "nfbuilder.io/plan-digest"]
    # the user renames the step after compiling
    app.write_text(app.read_text().replace('name="reverse"', 'name="reversed"'))
    cmd = [sys.executable, *container["command"][1:], *container["args"]]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, **env, "PYTHONPATH": str(tmp_path),
             "NFBUILDER_SOCKET_DIR": str(tmp_path / "s")})
    assert proc.returncode == 2, proc.stderr
    # the renamed step is another vertex: the manifest's one is gone
    assert proc.stderr.strip() == (
        "nfbuilder serve: no vertex named 'reverse'; the plan has: source, reversed, sink, "
        "dead-letters")
    # same vertex name, other arguments: the digest catches it
    app.write_text((ROOT / "apps" / "reverse.py").read_text())
    cmd[cmd.index("127.0.0.1:7010")] = "127.0.0.1:7999"
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, **env, "PYTHONPATH": str(tmp_path),
             "NFBUILDER_SOCKET_DIR": str(tmp_path / "s")})
    assert proc.returncode == 2, proc.stderr
    assert "nfbuilder serve: vertex 'reverse': the application's plan is not the one this " \
           "manifest was compiled from" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------ the CLI owns options and exits


@pytest.mark.parametrize("option, text", [
    (["--partitions", "0"], "nfbuilder run: bad option: 'partitions' must be >= 1: 0"),
    (["--max-replicas", "0"], "nfbuilder run: bad option: 'max_replicas' must be >= 1: 0"),
    (["--until-idle", "-1"], "nfbuilder run: bad option: --until-idle must be > 0, got -1.0"),
    (["--redelivery-delay", "-2"],
     "nfbuilder run: bad option: --redelivery-delay must be >= 0, got -2.0"),
    (["--sink-retry-cap", "0.01"], "nfbuilder run: bad option: the sink retry cap (0.01 s) is "
                                   "below its first interval (0.05 s)"),
])
def test_run_rejects_bad_options_in_one_line(option: list[str], text: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(ROOT / "apps" / "reverse.py"), *option, "--", "--in",
                 "127.0.0.1:7010", "--out", "127.0.0.1:7002"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == text


def test_serve_unknown_vertex_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--app", str(ROOT / "apps" / "reverse.py"), "--vertex", "nope", "--",
                 "--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "nfbuilder serve: no vertex named 'nope'; the plan has: source, reverse, sink, "
        "dead-letters")


# ------------------------------------------------------------ not connected vs a real bug


def _replica(tmp_path: Path) -> Replica:
    return Replica(ReplicaSpec("doc", "double", "map", 0, ()), tmp_path, {}, 0)


def _flow(failures: list[BaseException]) -> Flow:
    return Flow({}, {}, read_batch=10, read_timeout_ms=10,
                on_failure=lambda rep, exc: failures.append(exc))


def test_a_replica_without_client_is_a_failure_to_restart(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    rep = _replica(tmp_path)
    src = SourceState(rep, Tally("p"))
    msg = Msg("m-0", b"x", (), 0, None, Token(src, (b"0", 0)))
    assert asyncio.run(_flow(failures)._call_map(rep, [msg], batch_mode=False)) is None
    assert len(failures) == 1 and isinstance(failures[0], NotConnected)
    assert str(failures[0]) == "double is not connected (starting or stopped)"
    assert not rep.busy  # the worker puts the batch back (tests/test_flow_batches.py)


def test_an_attribute_error_in_a_client_is_a_bug_not_a_restart(tmp_path: Path) -> None:
    class Broken:
        async def map_many(self, *args: object) -> object:
            return None.value  # type: ignore[attr-defined]

    failures: list[BaseException] = []
    rep = _replica(tmp_path)
    rep.client = Broken()
    msg = Msg("m-0", b"x", (), 0, None, Token(SourceState(rep, Tally("p")), (b"0", 0)))
    with pytest.raises(AttributeError):
        asyncio.run(_flow(failures)._call_map(rep, [msg], batch_mode=False))
    assert failures == [] and not rep.redeliver



def test_a_stopping_run_nacks_what_it_cancelled_and_acks_what_is_done(tmp_path: Path) -> None:
    class Recording:
        def __init__(self) -> None:
            self.acked: list[object] = []
            self.nacked: list[object] = []

        async def ack(self, offsets: list[object]) -> None:
            self.acked += offsets

        async def nack(self, offsets: list[object]) -> None:
            self.nacked += offsets

    rep = _replica(tmp_path)
    rep.client = client = Recording()
    src = SourceState(rep, Tally("p"))
    flow = _flow([])
    flow.sources.append(src)
    done, cancelled = Token(src, (b"1", 0)), Token(src, (b"2", 0))
    done.add(-1)  # its only message reached a sink
    assert cancelled.count == 1
    asyncio.run(flow.ack_leftovers())
    assert src.tally.lost == 1  # counted in the run's summary
    assert (client.acked, client.nacked) == ([(b"1", 0)], [(b"2", 0)])
    assert src.open == {} and src.done == []


def test_serving_a_built_in_vertex_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from apps import goldens  # the repository root is on sys.path (conftest)

    code = main(["serve", "--app", str(goldens.app_path("celsius_kafka")), "--vertex", "sink",
                 "--", *goldens.ARGS["celsius_kafka"]])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "nfbuilder serve: vertex 'sink' is a Numaflow built-in (KafkaSinkVertex); it has no "
        "container to serve")
