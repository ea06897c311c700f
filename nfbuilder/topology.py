"""The frozen intermediate representation of a Wallaroo application.

``from_actions`` parses the list that ``ApplicationBuilder.build()`` returns (already validated)::

    app = from_actions(ab.build())
    app.pipelines[0].steps[0].name     # 'reverse'

This module is pure data: it imports nothing else of nfbuilder. User objects (computations,
decoders, encoders, state classes, partition functions) are kept as they are and used by duck
typing (Wallaroo's method names).
"""

from __future__ import annotations

import inspect
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


#: what a step does with a message its user code cannot handle
DEAD_LETTER, FAIL = "dead-letter", "fail"


@attrs.frozen
class ErrorPolicy:
    """What happens to a message that user code (decoder, step, encoder, serialize) cannot
    handle: retried ``retries`` times, ``backoff_s`` apart (doubling each time), then
    ``dead-letter``: recorded and skipped, processing goes on; or ``fail``: the vertex exits and
    is restarted, as Numaflow itself does (the message comes back).

        ErrorPolicy()                       # dead-letter after 3 retries, 50 ms, 100 ms, 200 ms
        ErrorPolicy(FAIL)

    The dsl validates what the user gives (``dsl.validate.on_error_policy``).
    """

    action: str = DEAD_LETTER
    retries: int = 3
    backoff_s: float = 0.05

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0 first), capped at 2 s."""
        return float(min(self.backoff_s * 2 ** attempt, 2.0))

    @classmethod
    def of(cls, value: Any) -> ErrorPolicy:
        """An ``ErrorPolicy`` from what the API takes: an action name, or
        ``(action, retries, backoff_s)`` with None for a default."""
        if isinstance(value, str):
            return cls(value)
        action, retries, backoff = (tuple(value) + (None, None))[:3]
        default = cls()
        return cls(action, default.retries if retries is None else retries,
                   default.backoff_s if backoff is None else backoff)


#: the attribute a decorated step carries its own policy in (``@computation(on_error=...)``)
ON_ERROR_ATTR = "nfbuilder_on_error"


@attrs.frozen
class Execution:
    """How a step's code runs, beyond what it computes.

    An ``async def`` step gets ``timeout_s`` per message (then it is a step error, dead-lettered
    under the step's policy) and, on an unordered (``to_parallel``) vertex, has up to
    ``concurrency`` messages awaiting at once; an ordered vertex awaits one message at a time.
    ``processes``: worker processes running a CPU-bound stateless step inside one container.

        Execution()                        # 60 s, 64 at once, 1 process
        Execution(processes=2)

    The dsl validates what the user gives (``dsl.validate.execution``).
    """

    timeout_s: float = 60.0
    concurrency: int = 64
    processes: int = 1


#: the attribute a decorated step carries its ``Execution`` fields in, as a dict
#: (``@computation(timeout=...)``)
EXECUTION_ATTR = "nfbuilder_execution"


def is_async(obj: Any, method: str) -> bool:
    """True when ``obj.method`` (or the user function a decorator wraps) is an ``async def``."""
    func = getattr(obj, "function", None)
    if not callable(func):
        func = getattr(obj, method, None)
    return inspect.iscoroutinefunction(func)


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
    decoder = None


@attrs.frozen
class UserSource:
    """A ``UserSourceConfig``: records read from the user's ``source`` object (``read``,
    ``ack`` and optionally ``nack``, ``pending``, ``partitions``); ``decoder`` None: each
    record's value is the message object itself."""

    source: Any
    decoder: Any = None

    kind = "user"


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


Source = TcpSource | KafkaSource | GenSource | UserSource
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
    #: this step's own error policy (None: the application's)
    on_error: ErrorPolicy | None = None
    execution: Execution = Execution()

    @property
    def multi(self) -> bool:
        return hasattr(self.computation, "compute_multi")

    @property
    def method(self) -> str:
        """The computation's method Wallaroo calls: ``compute`` or ``compute_multi``."""
        return "compute_multi" if self.multi else "compute"

    @property
    def asynchronous(self) -> bool:
        """An ``async def`` step: its coroutine is awaited (``runtime.steploop``)."""
        return is_async(self.computation, self.method)

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
    #: the error policy of every step that has none of its own (``ab.on_error(...)``)
    on_error: ErrorPolicy = ErrorPolicy()

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
    if config[0] == "user":
        return UserSource(config[1], config[2])
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
    own = getattr(comp, ON_ERROR_ATTR, None)
    policy = None if own is None else ErrorPolicy.of(own)
    own_run = getattr(comp, EXECUTION_ATTR, None)  # a dict of Execution's fields
    execution = Execution(**own_run) if own_run else Execution()
    if kind in (TO, TO_PARALLEL):
        return Step(kind, name, comp, on_error=policy, execution=execution)
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
    return Step(kind, name, comp, state, on_error=policy, execution=execution)


def from_actions(actions: Sequence[Sequence[Any]]) -> Application:
    """Parse Wallaroo's action list into an ``Application``."""
    if not actions or actions[0][0] != "name":
        raise TopologyError("the action list must start with ('name', app_name)")
    app_name = actions[0][1]
    pipelines: list[Pipeline] = []
    open_: dict[str, Any] | None = None
    on_error = ErrorPolicy()

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
        elif kind == "on_error":
            on_error = ErrorPolicy.of(action[1:])
        else:
            raise TopologyError(f"unknown action {kind!r}")
    close(())
    return Application(app_name, tuple(pipelines), on_error)
