"""Build-time validation of Wallaroo's action list (Wallaroo 0.5's rules and wording, without its
bugs, plus the checks nfbuilder needs to compile an app). Every error names the pipeline and the
step and says what to do."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from nfbuilder.dsl.args import KAFKA_INTERNAL
from nfbuilder.dsl.decorators import (
    Computation,
    ComputationMulti,
    StateComputation,
    StateComputationMulti,
)
from nfbuilder.dsl.errors import WallarooParameterError

_STATE_STEPS = ("to_stateful", "to_state_partition", "to_state_partition_u64")
_STEPS = ("to", "to_parallel") + _STATE_STEPS
_SINKS = ("to_sink", "to_sinks")


class _Pipeline:
    def __init__(self, name: str) -> None:
        self.name = name
        self.states: set[str] = set()
        self.steps = 0


def validate_actions(actions: Sequence[tuple[Any, ...]]) -> None:
    """Raise ``WallarooParameterError`` for the first problem in ``actions``."""
    if not actions or actions[0][0] != "name" or not isinstance(actions[0][1], str):
        raise WallarooParameterError(
            "The action list must start with ('name', <application name>)."
        )
    pipelines: dict[str, _Pipeline] = {}
    states: dict[str, tuple[Any, Any]] = {}
    current: _Pipeline | None = None
    previous = ""
    has_sink = False
    for action in actions[1:]:
        kind = action[0]
        if kind == "new_pipeline":
            name = action[1]
            if not isinstance(name, str) or not name:
                raise WallarooParameterError(
                    f"new_pipeline needs a non-empty string name, got {name!r}."
                )
            if name in pipelines:
                raise WallarooParameterError(
                    f"A pipeline with the name {name!r} has already been defined. "
                    "Pipeline names must be unique: rename one of them."
                )
            current = pipelines[name] = _Pipeline(name)
            _check_source(name, action[2])
        elif kind == "done":
            if previous in _SINKS or current is None and previous == "done":
                pass  # the Wallaroo docs show done() after to_sink: a harmless no-op
            elif current is None:
                raise WallarooParameterError(
                    "done() was called before any pipeline was declared. "
                    "Call new_pipeline(name, source_config) first."
                )
            elif current.steps == 0:
                raise WallarooParameterError(
                    f"Pipeline {current.name!r} has no steps and no sink; add steps or a sink "
                    "before done()."
                )
            current = None
        elif kind == "on_error":
            on_error_policy("ab.on_error", action[1:])
            continue  # not a pipeline action: ``previous`` stays what it was
        elif kind in _STEPS or kind in _SINKS:
            if current is None:
                if previous in _SINKS:
                    raise WallarooParameterError(
                        "Unable to add a computation step after a sink. "
                        "Please declare a new pipeline first."
                    )
                raise WallarooParameterError(
                    "Please declare a new pipeline before adding computation steps."
                )
            if kind in _SINKS:
                configs = [action[1]] if kind == "to_sink" else action[1]
                if kind == "to_sinks" and (not isinstance(configs, list) or not configs):
                    raise WallarooParameterError(
                        f"Pipeline {current.name!r}: to_sinks needs a non-empty list of sink "
                        f"configs, got {configs!r}."
                    )
                for config in configs:
                    _check_sink(current.name, config)
                has_sink = True
                current = None
            else:
                current.steps += 1
                _check_step(current, kind, action, states)
        else:
            raise WallarooParameterError(f"Unknown action {kind!r} in the action list.")
        previous = kind
    if not pipelines:
        raise WallarooParameterError(
            "The application declares no pipeline. Add ab.new_pipeline(name, source_config)."
        )
    if not has_sink:
        raise WallarooParameterError("At least one pipeline must define a sink")


def on_error_policy(where: str, value: Any) -> tuple[str, int | None, float | None]:
    """``value`` (an action name, or ``(action, retries, backoff_s)``) as that triple, or the
    ``WallarooParameterError`` that says what is wrong with it."""
    parts = (value,) if isinstance(value, str) else tuple(value) if isinstance(
        value, (tuple, list)) else (value,)
    action, retries, backoff = (parts + (None, None))[:3]
    problem = None
    if action not in ("dead-letter", "fail"):
        problem = f"the action must be 'dead-letter' or 'fail', got {action!r}"
    elif retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)
                                  or retries < 0):
        problem = f"retries must be an int >= 0, got {retries!r}"
    elif backoff is not None and (isinstance(backoff, bool)
                                  or not isinstance(backoff, (int, float)) or not backoff >= 0):
        problem = f"backoff must be a number of seconds >= 0, got {backoff!r}"
    if problem:
        raise WallarooParameterError(
            f"{where}: {problem}. Use \"dead-letter\" or \"fail\", or (action, retries, "
            "backoff_seconds).")
    return action, retries, backoff


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def execution(where: str, func: Any, *, stateful: bool, timeout: Any = None,
              concurrency: Any = None, processes: Any = None) -> dict[str, Any]:
    """The execution keywords of a step decorator as ``topology.Execution`` fields, or the
    ``WallarooParameterError`` that says what is wrong with them::

        execution("fetch (app.py:3)", fetch, stateful=False, timeout=2.0)   # {'timeout_s': 2.0}
    """
    asynchronous = inspect.iscoroutinefunction(func)
    out: dict[str, Any] = {}
    if timeout is not None:
        if not _number(timeout) or not timeout > 0:
            raise WallarooParameterError(
                f"{where}: timeout must be a number of seconds > 0, got {timeout!r}.")
        if not asynchronous:
            raise WallarooParameterError(
                f"{where}: timeout is for async def steps (an awaited call can be cancelled; "
                "a plain function cannot be interrupted). Make the step async def, or leave "
                "timeout out.")
        out["timeout_s"] = float(timeout)
    if concurrency is not None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise WallarooParameterError(
                f"{where}: concurrency must be an int >= 1, got {concurrency!r}.")
        if not asynchronous:
            raise WallarooParameterError(
                f"{where}: concurrency is how many messages an async def step awaits at once; "
                "this step is a plain function. Use processes= for a CPU-bound step, or make "
                "it async def.")
        out["concurrency"] = concurrency
    if processes is not None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise WallarooParameterError(
                f"{where}: processes must be an int >= 1, got {processes!r}.")
        if stateful:
            raise WallarooParameterError(
                f"{where}: a state step runs in one process (its state lives there); "
                "processes is for stateless CPU-bound steps.")
        if asynchronous:
            raise WallarooParameterError(
                f"{where}: an async def step waits rather than computes; give it "
                "concurrency= instead of processes=.")
        out["processes"] = processes
    return out


def _where(pipeline: _Pipeline, kind: str, comp: Any) -> str:
    name = _step_name(comp)
    label = f" {name!r}" if name else ""
    return f"Pipeline {pipeline.name!r}, step {pipeline.steps} ({kind}{label})"


def _step_name(comp: Any) -> str | None:
    name = getattr(comp, "name", None)
    if callable(name):
        try:
            value = name()
        except Exception:  # noqa: BLE001 - a broken name() is reported by the caller
            return None
        return value if isinstance(value, str) else None
    return None


def _check_step(
    pipeline: _Pipeline, kind: str, action: tuple[Any, ...], states: dict[str, tuple[Any, Any]]
) -> None:
    comp = action[1]
    where = _where(pipeline, kind, comp)
    stateful = kind in _STATE_STEPS
    has_compute = callable(getattr(comp, "compute", None)) or callable(
        getattr(comp, "compute_multi", None)
    )
    name = _step_name(comp)
    if not has_compute or name is None:
        deco = "@wallaroo.state_computation" if stateful else "@wallaroo.computation"
        raise WallarooParameterError(
            f"{where}: expected a computation object, got {comp!r}. "
            f"Decorate the function with {deco}(name=...) (or the _multi variant)."
        )
    if stateful and isinstance(comp, (Computation, ComputationMulti)):
        raise WallarooParameterError(
            f"{where}: {kind} needs a state computation taking (data, state), got the stateless "
            f"{comp!r}. Use @wallaroo.state_computation(name=...), or add it with to()."
        )
    if not stateful and isinstance(comp, (StateComputation, StateComputationMulti)):
        raise WallarooParameterError(
            f"{where}: {kind} got the state computation {comp!r}, which needs a state. "
            "Use to_stateful(...) or to_state_partition(...) for it."
        )
    if not stateful:
        return
    builder, state_name = action[2], action[3]
    state_cls = getattr(builder, "state_cls", None)
    if not isinstance(state_name, str) or not state_name:
        raise WallarooParameterError(
            f"{where}: the state name must be a non-empty string, got {state_name!r}."
        )
    _check_state_class(where, state_cls)
    if state_name in pipeline.states:
        raise WallarooParameterError(
            f"{where}: the state {state_name!r} is already used by an earlier step of this "
            "pipeline; a pipeline may visit a state once. Merge the two steps into one."
        )
    pipeline.states.add(state_name)
    keys: Any = None
    if kind != "to_stateful":
        partition_fn, keys = action[4], action[5]
        if not getattr(partition_fn, "partition", None):
            raise WallarooParameterError(
                "Partition function is missing partition method. "
                "Did you forget to use the @wallaroo.partition_function decorator? "
                f"({where}: got {partition_fn!r}; decorate it with @wallaroo.partition.)"
            )
        _check_keys(where, kind, keys)
        keys = list(keys)
    if state_name in states:
        prev_cls, prev_keys = states[state_name]
        if prev_cls is not state_cls:
            raise WallarooParameterError(
                f"A state with the name {state_name!r} has already been defined with an different "
                f"type {_cls_name(prev_cls)}, instead of {_cls_name(state_cls)}. ({where}: steps "
                "that share a state name must use the same state class.)"
            )
        if prev_keys != keys:
            raise WallarooParameterError(
                f"A state with the name {state_name!r} has already been defined with a different "
                f"paritioning scheme {prev_keys!r}, instead of {keys!r}. ({where}: steps that "
                "share a state name must use the same partition keys.)"
            )
    else:
        states[state_name] = (state_cls, keys)


def _cls_name(cls: Any) -> str:
    return getattr(cls, "__qualname__", repr(cls))


def _check_state_class(where: str, state_cls: Any) -> None:
    if not callable(state_cls):
        raise WallarooParameterError(
            f"{where}: the state class must be a class (called with no arguments to make a fresh "
            f"state), got {state_cls!r}."
        )
    try:
        inspect.signature(state_cls).bind()
    except TypeError:
        raise WallarooParameterError(
            f"{where}: the state class {_cls_name(state_cls)} cannot be built with no arguments "
            "(nfbuilder calls State() for each new key). Give its __init__ parameters defaults."
        ) from None
    except ValueError:
        pass  # no signature available (builtin): assume it works


def _check_keys(where: str, kind: str, keys: Any) -> None:
    if type(keys) is not list:
        raise WallarooParameterError(
            f"Partitions lists should be of type list. Got a {type(keys).__name__} instead. "
            f"({where})"
        )
    try:
        unique = len(set(keys)) == len(keys)
    except TypeError:
        unique = False
    if not unique:
        raise WallarooParameterError(
            "Partition labels should be uniquely identified via equality and support hashing. "
            f"You might have duplicates or objects which can't be hashed in your list. ({where})"
        )
    if kind == "to_state_partition_u64":
        for key in keys:
            if type(key) is not int or key < 0:
                raise WallarooParameterError(
                    f"{key!r} is an invalid partition label. to_state_partition_u64 requires "
                    f"non-negative integers as partition labels. ({where})"
                )


_SOURCE_SHAPES = {"tcp": 4, "kafka": 5, KAFKA_INTERNAL: 3, "gen": 2, "user": 3}
_SINK_SHAPES = {"tcp": 4, "kafka": 7, KAFKA_INTERNAL: 3}


def _shaped(config: Any, shapes: dict[str, int]) -> bool:
    return bool(isinstance(config, tuple) and config and shapes.get(config[0]) == len(config))


def _check_source(pipeline: str, config: Any) -> None:
    if not _shaped(config, _SOURCE_SHAPES):
        raise WallarooParameterError(
            f"Pipeline {pipeline!r}: the source must be a TCPSourceConfig, KafkaSourceConfig, "
            f"a Kafka source CLI parser, a GenSourceConfig or a UserSourceConfig, got {config!r}."
        )
    if config[0] == "user":
        _check_user_source(pipeline, config[1], config[2])
        return
    if config[0] == "gen":
        gen = config[1]
        for method in ("initial_value", "apply"):
            if not callable(getattr(gen, method, None)):
                raise WallarooParameterError(
                    f"Pipeline {pipeline!r}: the GenSourceConfig's generator {gen!r} has no "
                    f"{method} method; give an object with initial_value() and apply(previous)."
                )
        return
    decoder = config[-1]
    if not callable(getattr(decoder, "decode", None)):
        raise WallarooParameterError(
            f"Pipeline {pipeline!r}: the source's decoder {decoder!r} has no decode method. "
            "Decorate the function with @wallaroo.decoder(header_length=4, length_fmt='>I')."
        )
    if config[0] == "tcp":
        _check_port(f"Pipeline {pipeline!r} source", config[2])
        for method in ("header_length", "payload_length"):
            if not callable(getattr(decoder, method, None)):
                raise WallarooParameterError(
                    f"Pipeline {pipeline!r}: the TCP source's decoder {decoder!r} has no {method} "
                    "method. Decorate it with @wallaroo.decoder(...)."
                )


def _check_user_source(pipeline: str, source: Any, decoder: Any) -> None:
    for method in ("read", "ack"):
        if not callable(getattr(source, method, None)):
            raise WallarooParameterError(
                f"Pipeline {pipeline!r}: the UserSourceConfig's source {source!r} has no "
                f"{method} method; give an object with read(n, timeout_s) and ack(offsets) "
                "(and, if it can, nack(offsets), pending() and partitions()).")
    if decoder is not None and not callable(getattr(decoder, "decode", None)):
        raise WallarooParameterError(
            f"Pipeline {pipeline!r}: the UserSourceConfig's decoder {decoder!r} has no decode "
            "method. Decorate the function with @wallaroo.decoder(), or leave the decoder out "
            "for a source whose records are the messages themselves.")


def _check_sink(pipeline: str, config: Any) -> None:
    if not _shaped(config, _SINK_SHAPES):
        raise WallarooParameterError(
            f"Pipeline {pipeline!r}: a sink must be a TCPSinkConfig, KafkaSinkConfig or a Kafka "
            f"sink CLI parser, got {config!r}."
        )
    if not callable(getattr(config[-1], "encode", None)):
        raise WallarooParameterError(
            f"Pipeline {pipeline!r}: the sink's encoder {config[-1]!r} has no encode method. "
            "Decorate the function with @wallaroo.encoder."
        )
    if config[0] == "tcp":
        _check_port(f"Pipeline {pipeline!r} sink", config[2])


def _check_port(where: str, port: Any) -> None:
    try:
        value = int(port)
    except (TypeError, ValueError):
        value = -1
    if isinstance(port, bool) or not 0 <= value <= 65535:
        raise WallarooParameterError(
            f"{where}: port {port!r} is not a port number; give a string like '7010'."
        )
