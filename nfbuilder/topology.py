"""The frozen intermediate representation of a Wallaroo application.

``from_actions`` parses the list that ``ApplicationBuilder.build()`` returns (already validated)::

    app = from_actions(ab.build())
    app.pipelines[0].steps[0].name     # 'reverse'

This module is pure data: it imports nothing else of nfbuilder. User objects (computations,
decoders, encoders, state classes, partition functions) are kept as they are and used by duck
typing (Wallaroo's method names).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

TO = "to"
TO_PARALLEL = "to_parallel"
TO_STATEFUL = "to_stateful"
TO_STATE_PARTITION = "to_state_partition"
TO_STATE_PARTITION_U64 = "to_state_partition_u64"
STATE_KINDS = (TO_STATEFUL, TO_STATE_PARTITION, TO_STATE_PARTITION_U64)


class TopologyError(ValueError):
    """The action list has a shape that cannot be parsed (build() normally prevents this)."""


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(tuple(v) if isinstance(v, list) else v for v in value)


@attrs.frozen
class TcpSource:
    host: str
    port: str
    decoder: Any

    kind = "tcp"


@attrs.frozen
class KafkaSource:
    topic: str
    brokers: tuple[tuple[str, str], ...] = attrs.field(converter=_tuple)
    log_level: str
    decoder: Any

    kind = "kafka"


@attrs.frozen
class GenSource:
    """Wallaroo 0.5.4's ``GenSourceConfig``: messages from ``generator.initial_value()`` and then
    ``generator.apply(previous)`` until one is None (objects: no decoder)."""

    generator: Any

    kind = "gen"


@attrs.frozen
class TcpSink:
    host: str
    port: str
    encoder: Any

    kind = "tcp"


@attrs.frozen
class KafkaSink:
    topic: str
    brokers: tuple[tuple[str, str], ...] = attrs.field(converter=_tuple)
    log_level: str
    max_produce_buffer_ms: int
    max_message_size: int
    encoder: Any

    kind = "kafka"


Source = TcpSource | KafkaSource | GenSource
Sink = TcpSink | KafkaSink


def partition_key(value: Any, u64: bool = False) -> str:
    """The state key of a partition function's result or of a declared partition key, as
    Wallaroo 0.5.4 (Python 3) made it: ``str`` as it is, UTF-8 ``bytes`` as the same text (so
    ``b"kw"`` and ``"kw"`` are one key), an ``int`` as ``chr(int)``; for
    ``to_state_partition_u64`` the integer's digits. Anything else becomes ``str(value)``::

        partition_key(b"kw") == partition_key("kw") == "kw"
        partition_key(117)            # 'u'
        partition_key(117, u64=True)  # '117'

    Raises ``ValueError`` (saying what to return instead) for bytes that are not UTF-8 and for
    an int that is no Unicode code point.
    """
    if type(value) is str:
        return value
    if u64:
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"partition key {bytes(value)!r} is not UTF-8 text ({exc.reason} at byte "
                f"{exc.start}); return a str, or bytes that are UTF-8"
            ) from None
    if isinstance(value, int):  # Wallaroo 0.5.4's wrapper: chr(result) for an int (bool too)
        try:
            return chr(value)
        except (ValueError, OverflowError):
            raise ValueError(
                f"partition key {value!r}: an int key becomes chr(key) (as in Wallaroo 0.5.4) and "
                f"must be in 0..{0x10FFFF}; return a str, or use to_state_partition_u64 for "
                "integer keys"
            ) from None
    return value if isinstance(value, str) else str(value)


@attrs.frozen
class StateSpec:
    """A named state. ``keys`` is None for ``to_stateful`` (one state object), ``()`` for keys
    created on demand, else the declared partition keys."""

    name: str
    state_class: Any
    partition_function: Any = None
    keys: tuple[Any, ...] | None = None
    u64: bool = False

    @property
    def partitioned(self) -> bool:
        return self.partition_function is not None

    def declared(self) -> frozenset[str] | None:
        """The declared keys as state keys (:func:`partition_key`), or None: keys on demand."""
        if not self.keys:
            return None
        return frozenset(partition_key(k, self.u64) for k in self.keys)


@attrs.frozen
class Step:
    """One ``to*`` call of a pipeline."""

    kind: str
    name: str
    computation: Any
    state: StateSpec | None = None

    @property
    def multi(self) -> bool:
        return hasattr(self.computation, "compute_multi")

    @property
    def stateful(self) -> bool:
        return self.state is not None

    @property
    def parallel(self) -> bool:
        return self.kind == TO_PARALLEL


@attrs.frozen
class Pipeline:
    """``new_pipeline`` ... up to its sink(s) or ``done()``; ``index`` is its declaration order."""

    index: int
    name: str
    source: Source
    steps: tuple[Step, ...]
    sinks: tuple[Sink, ...]


@attrs.frozen
class Application:
    name: str
    pipelines: tuple[Pipeline, ...]

    def states(self) -> dict[str, StateSpec]:
        """Every state name used, with its spec (shared names appear once)."""
        found: dict[str, StateSpec] = {}
        for pipeline in self.pipelines:
            for step in pipeline.steps:
                if step.state is not None:
                    found.setdefault(step.state.name, step.state)
        return found


def _source(config: Any) -> Source:
    if config[0] == "tcp":
        return TcpSource(str(config[1]), str(config[2]), config[3])
    if config[0] == "kafka":
        return KafkaSource(config[1], config[2], config[3], config[4])
    if config[0] == "gen":
        return GenSource(config[1])
    raise TopologyError(f"unknown source config {config!r}")


def _sink(config: Any) -> Sink:
    if config[0] == "tcp":
        return TcpSink(str(config[1]), str(config[2]), config[3])
    if config[0] == "kafka":
        return KafkaSink(*config[1:7])
    raise TopologyError(f"unknown sink config {config!r}")


def _step(action: Sequence[Any]) -> Step:
    kind, comp = action[0], action[1]
    name = comp.name()
    if kind in (TO, TO_PARALLEL):
        return Step(kind, name, comp)
    builder, state_name = action[2], action[3]
    if kind == TO_STATEFUL:
        state = StateSpec(state_name, builder.state_cls)
    else:
        state = StateSpec(
            state_name,
            builder.state_cls,
            action[4],
            tuple(action[5] or ()),
            u64=kind == TO_STATE_PARTITION_U64,
        )
        try:
            state.declared()
        except ValueError as exc:
            raise TopologyError(f"step {name!r}, state {state_name!r}: declared {exc}") from None
    return Step(kind, name, comp, state)


def from_actions(actions: Sequence[Sequence[Any]]) -> Application:
    """Parse Wallaroo's action list into an ``Application``."""
    if not actions or actions[0][0] != "name":
        raise TopologyError("the action list must start with ('name', app_name)")
    app_name = actions[0][1]
    pipelines: list[Pipeline] = []
    open_: dict[str, Any] | None = None

    def close(sinks: tuple[Sink, ...]) -> None:
        nonlocal open_
        if open_ is not None:
            pipelines.append(
                Pipeline(
                    len(pipelines), open_["name"], open_["source"], tuple(open_["steps"]), sinks
                )
            )
        open_ = None

    for action in actions[1:]:
        kind = action[0]
        if kind == "new_pipeline":
            close(())
            open_ = {"name": action[1], "source": _source(action[2]), "steps": []}
        elif kind in (TO, TO_PARALLEL, *STATE_KINDS):
            if open_ is None:
                raise TopologyError(f"{kind} outside a pipeline")
            open_["steps"].append(_step(action))
        elif kind == "to_sink":
            close((_sink(action[1]),))
        elif kind == "to_sinks":
            close(tuple(_sink(c) for c in action[1]))
        elif kind == "done":
            close(())
        else:
            raise TopologyError(f"unknown action {kind!r}")
    close(())
    return Application(app_name, tuple(pipelines))
