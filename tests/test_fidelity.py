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
from engine_harness import free_port, until_delivered, wait_idle
from kafka_broker import kafka_broker  # noqa: F401  (the fixture)

import nfbuilder as wallaroo
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
                                                  "sink", "dead-letters"]
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


# ------------------------------------------------------------ the rest of the 0.5 API


def test_each_decorated_function_has_its_own_class_on_the_module() -> None:
    import nfbuilder
    import wallaroo as wallaroo_module

    @wallaroo_module.computation(name="c")
    def my_computation(d: Any) -> Any:
        return d

    @wallaroo_module.state_computation_multi(name="s")
    def my_state_step(d: Any, s: Any) -> Any:
        return [d], False

    @wallaroo_module.partition
    def my_partition(d: Any) -> Any:
        return d

    @wallaroo_module.decoder(header_length=4, length_fmt=">I")
    def my_decoder(bs: bytes) -> Any:
        return bs

    @wallaroo_module.encoder
    def my_encoder(d: Any) -> bytes:
        return b""

    assert isinstance(my_computation, wallaroo_module.Computation__my_computation)
    assert isinstance(my_computation, wallaroo_module.Computation)
    assert isinstance(my_state_step, nfbuilder.StateComputationMulti__my_state_step)
    assert isinstance(my_partition, wallaroo_module.Partition__my_partition)
    assert isinstance(my_decoder, wallaroo_module.Decoder__my_decoder)
    assert isinstance(my_encoder, wallaroo_module.Encoder__my_encoder)
    assert repr(my_computation).startswith("<Computation ")
    with pytest.raises(AttributeError, match="module 'wallaroo' has no attribute 'Nope__x'"):
        wallaroo_module.Nope__x  # noqa: B018


KAFKA_ARGS = ["--numbers_in_topic", "in", "--numbers_in_brokers", "k1:9092,k2",
              "--kafka_sink_topic", "out", "--kafka_sink_brokers", "k1:9092",
              "--kafka_sink_max_produce_buffer_ms", "10"]


def test_kafka_cli_parsers_compile_to_the_same_vertices_as_the_0_4_configs() -> None:
    from fidelity import kafka_parsers as m

    def configs_0_4(args: list[str]) -> list[tuple]:
        ab = wallaroo.ApplicationBuilder("Kafka Parsers")
        ab.new_pipeline("letters", wallaroo.KafkaSourceConfig(
            *wallaroo.kafka_parse_source_options(args, "numbers_in"), m.decode))
        ab.to(m.upper)
        ab.to_sink(wallaroo.KafkaSinkConfig(*wallaroo.kafka_parse_sink_options(args), m.encode))
        return ab.build()

    from nfbuilder.loader import app_from_actions

    def app_of(setup: Any) -> Any:
        return app_from_actions(setup(["app", *KAFKA_ARGS]), returned_by="setup", where="setup",
                                args=KAFKA_ARGS)

    parsed, plain = app_of(m.application_setup), app_of(configs_0_4)
    assert plan(parsed).digest == plan(plain).digest
    (doc,) = plan(parsed).docs
    src, sink = doc.vertex("source"), doc.vertex("sink")
    assert (src.topic, src.brokers) == ("in", ("k1:9092", "k2:9092"))  # type: ignore[attr-defined]
    assert (sink.topic, sink.producer) == ("out", (  # type: ignore[attr-defined]
        ("linger.ms", "10"), ("message.max.bytes", "100000")))
    custom = wallaroo.CustomKafkaSourceCLIParser(["--kafka_source_topic", "t"], m.decode)
    assert custom.to_tuple() == wallaroo.KafkaSourceConfig("t", [("", "9092")], "Warn",
                                                           m.decode).to_tuple()


def test_a_default_kafka_parser_without_its_flags_says_which_to_give() -> None:
    from nfbuilder.loader import AppLoadError

    with pytest.raises(AppLoadError) as err:
        load_app(str(APPS / "kafka_parsers.py"), ["--kafka_sink_topic", "out"])
    assert str(err.value).endswith(
        "the action list cannot be compiled: Kafka config 'numbers_in' (a Default*CLIParser) "
        "has no topic: give --numbers_in_topic TOPIC and --numbers_in_brokers HOST:PORT[,...] "
        "after '--' on the command line.")


def test_kafka_cli_parsers_on_the_engine(kafka_broker: Any,  # noqa: F811
                                        tmp_path: Path) -> None:
    import uuid

    tag = uuid.uuid4().hex[:8]
    in_topic, out_topic = f"parsers-in-{tag}", f"parsers-out-{tag}"
    kafka_broker.create_topics(in_topic, out_topic)
    kafka_broker.produce(in_topic, [b"apple", b"fig", b"kiwi"])
    args = ["--numbers_in_topic", in_topic, "--numbers_in_brokers", kafka_broker.address,
            "--kafka_sink_topic", out_topic, "--kafka_sink_brokers", kafka_broker.address]

    asyncio.run(until_delivered(load_app(str(APPS / "kafka_parsers.py"), args), 3,
                                str(tmp_path / "run"), PlanOptions(state_store="memory://")))
    assert sorted(v for _, v in kafka_broker.consume(out_topic, 3)) == [b"APPLE", b"FIG", b"KIWI"]


def test_gen_source_in_the_harness() -> None:
    outs = run_app(str(APPS / "gen_source.py"), ["--out", "127.0.0.1:7002", "--count", "6"],
                   {"numbers": 100})  # the generator ends after 6
    assert outs == {"sink": [b"1 1\n", b"2 2\n", b"3 4\n", b"4 6\n", b"5 9\n", b"6 12\n"]}
    three = run_app(str(APPS / "gen_source.py"), ["--out", "127.0.0.1:7002"], {"numbers": 3})
    assert three == {"sink": [b"1 1\n", b"2 2\n", b"3 4\n"]}
    with pytest.raises(TypeError, match="or, for this pipeline's generator or user source, "
                                        "how many messages to take from it"):
        run_app(str(APPS / "gen_source.py"), ["--out", "127.0.0.1:7002"], {"numbers": "x"})


def test_gen_source_compiles_to_a_udsource_and_runs_on_the_engine(tmp_path: Path) -> None:
    from nfbuilder.emit.manifest import emit
    from nfbuilder.plan import UserSourceVertex

    loaded = load_app(str(APPS / "gen_source.py"), ["--out", "127.0.0.1:7002"])
    graph = plan(loaded.app)
    source = graph.find("source")[1]
    assert isinstance(source, UserSourceVertex) and source.generated
    docs = emit(graph)
    assert [d["kind"] for d in docs] == ["Pipeline"]  # no Service: nothing listens
    assert "udsource" in docs[0]["spec"]["vertices"][0]["source"]

    async def go() -> bytes:
        rx = await TcpReceiver.start()
        try:
            await until_delivered(load_app(str(APPS / "gen_source.py"), [
                "--out", f"127.0.0.1:{rx.address[1]}", "--count", "300"]), 300,
                str(tmp_path / "run"))
        finally:
            await rx.close()
        return rx.data()

    lines = asyncio.run(go()).split(b"\n")[:-1]
    assert len(lines) == 300
    last = {int(n) % 2: int(t) for n, t in (line.split() for line in lines)}
    assert last == {1: sum(range(1, 301, 2)), 0: sum(range(2, 301, 2))}
