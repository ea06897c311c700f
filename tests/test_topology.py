"""topology.from_actions on every example app and on hand-built action lists."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import attrs
import pytest
import wallaroo_objects as w

from nfbuilder import ApplicationBuilder
from nfbuilder.topology import (
    TO,
    TO_PARALLEL,
    TO_STATE_PARTITION,
    TO_STATE_PARTITION_U64,
    TO_STATEFUL,
    Application,
    KafkaSink,
    KafkaSource,
    TcpSink,
    TcpSource,
    TopologyError,
    from_actions,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the example apps live in the repository, not in the package
    sys.path.insert(0, str(ROOT))
from apps import goldens  # noqa: E402 - importable only after ROOT is on sys.path
from apps.data import APPS  # noqa: E402 - importable only after ROOT is on sys.path


def app_module(name: str) -> ModuleType:
    if str(ROOT / "apps") not in sys.path:
        sys.path.insert(0, str(ROOT / "apps"))
    return importlib.import_module(name)


def parse(name: str) -> tuple[ModuleType, Application]:
    module = app_module(name)
    return module, from_actions(module.application_setup([name, *goldens.ARGS[name]]))


def test_every_app_has_golden_args() -> None:
    assert set(APPS) <= set(goldens.ARGS)  # and the apps without data (test_golden.py)


def test_reverse() -> None:
    m, app = parse("reverse")
    assert app.name == "Reverse Word"
    (p,) = app.pipelines
    assert (p.index, p.name) == (0, "reverse")
    assert p.source == TcpSource("127.0.0.1", "7010", m.decoder)
    assert [(s.kind, s.name, s.computation) for s in p.steps] == [(TO, "reverse", m.reverse)]
    assert p.steps[0].state is None and not p.steps[0].multi and not p.steps[0].parallel
    assert p.sinks == (TcpSink("127.0.0.1", "7002", m.encoder),)
    assert app.states() == {}


def test_celsius() -> None:
    m, app = parse("celsius")
    (p,) = app.pipelines
    assert [s.name for s in p.steps] == ["multiply by 1.8", "add 32"]
    assert [s.computation for s in p.steps] == [m.multiply, m.add]
    assert p.sinks[0].encoder is m.encoder


def test_celsius_kafka() -> None:
    m, app = parse("celsius_kafka")
    (p,) = app.pipelines
    assert p.source == KafkaSource("test-in", (("127.0.0.1", "9092"),), "Warn", m.decoder)
    assert p.sinks == (KafkaSink("test-out", (("127.0.0.1", "9092"),), "Warn", 10, 100000,
                                 m.encoder),)
    assert isinstance(p.source.brokers, tuple)  # frozen IR: lists became tuples


def test_alphabet_to_stateful() -> None:
    m, app = parse("alphabet")
    (step,) = app.pipelines[0].steps
    assert (step.kind, step.name) == (TO_STATEFUL, "add votes")
    assert step.state is not None
    assert (step.state.name, step.state.state_class) == ("letter state", m.AllVotes)
    assert step.state.keys is None and not step.state.partitioned


def test_alphabet_partitioned() -> None:
    m, app = parse("alphabet_partitioned")
    (step,) = app.pipelines[0].steps
    assert step.kind == TO_STATE_PARTITION
    assert step.state is not None and step.state.partitioned and not step.state.u64
    assert step.state.partition_function is m.partition
    assert step.state.keys == tuple("abcdefghijklmnopqrstuvwxyz")


def test_word_count() -> None:
    _, app = parse("word_count")
    split, count = app.pipelines[0].steps
    assert (split.kind, split.parallel, split.multi) == (TO_PARALLEL, True, True)
    assert count.kind == TO_STATE_PARTITION and count.stateful
    assert count.state is not None and count.state.keys is not None
    assert count.state.keys[-1] == "!" and len(count.state.keys) == 27
    assert list(app.states()) == ["word totals"]


def test_market_spread_two_pipelines_share_a_state() -> None:
    m, app = parse("market_spread")
    orders, market = app.pipelines
    assert [(p.index, p.name) for p in app.pipelines] == [(0, "Orders"), (1, "Market Data")]
    assert orders.source == TcpSource("127.0.0.1", "7010", m.order_decoder)
    assert market.source == TcpSource("127.0.0.1", "7011", m.market_data_decoder)
    assert orders.sinks == (TcpSink("127.0.0.1", "7002", m.order_result_encoder),)
    assert market.sinks == ()  # ended by done()
    a, b = orders.steps[0], market.steps[0]
    assert (a.name, b.name) == ("check order", "update market data")
    assert a.kind == b.kind == TO_STATE_PARTITION_U64
    assert a.state == b.state and a.state is not None
    assert a.state.u64 and a.state.state_class is m.SymbolData
    assert a.state.keys is not None and len(a.state.keys) == len(m.SYMBOLS)
    assert list(app.states()) == ["symbol-data"]


def test_sequence_window() -> None:
    m, app = parse("sequence_window")
    first, second = app.pipelines[0].steps
    assert (first.kind, first.multi) == (TO, True)
    assert second.state is not None and second.state.keys == (0, 1)
    assert second.state.partition_function is m.partition


@pytest.mark.parametrize("name", sorted(APPS))
def test_ir_is_frozen(name: str) -> None:
    _, app = parse(name)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        app.pipelines[0].name = "x"  # type: ignore[misc]
    assert isinstance(app.pipelines, tuple) and isinstance(app.pipelines[0].steps, tuple)


def test_to_sinks_and_on_demand_keys() -> None:
    actions = (
        ApplicationBuilder("app").new_pipeline("p", w.tcp_source())
        .to_state_partition(w.count, w.Counter, "s", w.by_parity)
        .to_sinks([w.tcp_sink("7002"), w.kafka_sink("out")]).build()
    )
    app = from_actions(actions)
    p = app.pipelines[0]
    assert [s.kind for s in p.sinks] == ["tcp", "kafka"]
    state = p.steps[0].state
    assert state is not None and state.keys == () and state.partitioned  # keys on demand


def test_int_port_becomes_string() -> None:
    actions = [("name", "a"), ("new_pipeline", "p", ("tcp", "h", 7010, w.decode)),
               ("to_sink", ("tcp", "h", 7002, w.encode))]
    p = from_actions(actions).pipelines[0]
    assert (p.source.port, p.sinks[0].port) == ("7010", "7002")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "actions, text",
    [
        ([], "the action list must start with ('name', app_name)"),
        ([("name", "a"), ("to", w.double)], "to outside a pipeline"),
        ([("name", "a"), ("bogus",)], "unknown action 'bogus'"),
        ([("name", "a"), ("new_pipeline", "p", ("udp", "h", "1", w.decode))],
         "unknown source config ('udp'"),
    ],
)
def test_topology_errors(actions: list, text: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(TopologyError) as err:
        from_actions(actions)
    assert str(err.value).startswith(text)
