"""Wallaroo's decorators: they turn plain functions into the step objects the builder takes.

Each decorator returns an *instance* whose methods carry Wallaroo's names (``name``, ``compute``,
``compute_multi``, ``partition``, ``header_length``, ``payload_length``, ``decode``, ``encode``) and
which still calls the user's function when called directly, so it can be unit tested::

    @computation(name="reverse")
    def reverse(data):
        return data[::-1]

    reverse.name()          # 'reverse'
    reverse.compute("abc")  # 'cba'
    reverse("abc")          # 'cba'

The instances pickle by module and name (like Wallaroo's objects did), so a decorated object that
lives at module top level survives ``pickle``/``cloudpickle`` round trips as the same object.
"""

from __future__ import annotations

import functools
import inspect
import struct
from collections.abc import Callable
from typing import Any, TypeVar

from nfbuilder.dsl.errors import WallarooParameterError

__all__ = [
    "Computation",
    "ComputationMulti",
    "Decoder",
    "Encoder",
    "Partition",
    "StateComputation",
    "StateComputationMulti",
    "computation",
    "computation_multi",
    "decoder",
    "encoder",
    "partition",
    "state_computation",
    "state_computation_multi",
]


def _check_arity(func: Any, n: int) -> None:
    """Raise Wallaroo 0.5's errors when ``func`` cannot take ``n`` positional arguments."""
    if not callable(func):
        raise WallarooParameterError(
            f"Expected a callable object but got a {type(func).__name__}: {func!r}"
        )
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature: trust the user
        return
    try:
        sig.bind(*range(n))
    except TypeError:
        raise WallarooParameterError(
            f"Incompatible function arity, your function must allow {n} arguments. "
            f"{_describe(func)} has the signature {sig}."
        ) from None


def _describe(func: Any) -> str:
    name = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
    code = getattr(func, "__code__", None)
    if code is not None:
        return f"{name} ({code.co_filename}:{code.co_firstlineno})"
    return str(name)


class _Wrapped:
    """Common base: holds the user function, copies its identity, pickles by module + name."""

    arity = 1

    def __init__(self, func: Callable[..., Any]) -> None:
        _check_arity(func, self.arity)
        self._func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    @property
    def function(self) -> Callable[..., Any]:
        """The user's undecorated function."""
        return self._func

    def describe(self) -> str:
        """``qualname (file:line)`` of the user function, for error messages."""
        return _describe(self._func)

    def __call__(self, *args: Any) -> Any:
        return self._func(*args)

    def __reduce__(self) -> str:
        # pickle looks the name up in self.__module__ (copied from the function): the module's
        # attribute *is* this object, so unpickling yields the same singleton.
        return str(getattr(self, "__qualname__", self.__class__.__name__))

    def __repr__(self) -> str:
        kind = type(self).__name__.split("__")[0]  # Computation, not Computation__double
        return f"<{kind} {getattr(self, '__qualname__', '?')}>"


class _Named(_Wrapped):
    def __init__(self, func: Callable[..., Any], name: str, on_error: Any = None,
                 run: dict[str, Any] | None = None) -> None:
        super().__init__(func)
        # validate imports this module, hence the late imports
        if on_error is not None:
            from nfbuilder.dsl.validate import on_error_policy

            # checked now, so a bad policy is an error where the step is declared; topology
            # reads the attribute (its name: topology.ON_ERROR_ATTR)
            self.nfbuilder_on_error = on_error_policy(f"{_describe(func)}: on_error", on_error)
        if run:
            from nfbuilder.dsl.validate import execution

            # topology.EXECUTION_ATTR
            self.nfbuilder_execution = execution(
                _describe(func), func, stateful=self.arity == 2, **run)
        if not isinstance(name, str) or not name:
            raise WallarooParameterError(
                f"A computation needs a non-empty string name, got {name!r} for {_describe(func)}."
                " Write @computation(name=\"my step\")."
            )
        self._name = name

    def name(self) -> str:
        return self._name


class Computation(_Named):
    """A stateless step returning one output (``None`` filters the message)."""

    def compute(self, data: Any) -> Any:
        return self._func(data)


class ComputationMulti(_Named):
    """A stateless step returning a list of outputs."""

    def compute_multi(self, data: Any) -> Any:
        return self._func(data)


class StateComputation(_Named):
    """A state step: ``compute(data, state) -> (output, save_state)``."""

    arity = 2

    def compute(self, data: Any, state: Any) -> Any:
        return self._func(data, state)


class StateComputationMulti(_Named):
    """A state step: ``compute_multi(data, state) -> (list_of_outputs, save_state)``."""

    arity = 2

    def compute_multi(self, data: Any, state: Any) -> Any:
        return self._func(data, state)


def _not_async(func: Callable[..., Any], what: str) -> None:
    if inspect.iscoroutinefunction(func):
        raise WallarooParameterError(
            f"{what} {_describe(func)} is an async def; only computations may be. Make it a "
            "plain def (await in a computation instead).")


class Partition(_Wrapped):
    """A partition function: message -> partition key."""

    def __init__(self, func: Callable[..., Any]) -> None:
        _not_async(func, "the partition function")
        super().__init__(func)

    def partition(self, data: Any) -> Any:
        return self._func(data)


class Decoder(_Wrapped):
    """A source decoder with Wallaroo's framing: a ``header_length``-byte header whose
    ``struct.unpack(length_fmt, header)[0]`` is the payload length."""

    def __init__(self, func: Callable[..., Any], header_length: int, length_fmt: str) -> None:
        _not_async(func, "the decoder")
        super().__init__(func)
        if not isinstance(header_length, int) or isinstance(header_length, bool) or not (
            1 <= header_length <= 8
        ):
            raise WallarooParameterError(
                f"decoder {_describe(func)}: header_length must be an int from 1 to 8, "
                f"got {header_length!r}."
            )
        try:
            size = struct.calcsize(length_fmt)
        except (struct.error, TypeError):
            raise WallarooParameterError(
                f"decoder {_describe(func)}: length_fmt {length_fmt!r} is not a struct format;"
                " use e.g. '>I' (4-byte big-endian unsigned)."
            ) from None
        if size != header_length:
            raise WallarooParameterError(
                f"decoder {_describe(func)}: length_fmt {length_fmt!r} reads {size} bytes but "
                f"header_length is {header_length}; make them agree."
            )
        self._header_length = header_length
        self._length_fmt = length_fmt

    @property
    def length_fmt(self) -> str:
        return self._length_fmt

    def header_length(self) -> int:
        return self._header_length

    def payload_length(self, bs: bytes) -> int:
        return int(struct.unpack(self._length_fmt, bs)[0])

    def decode(self, bs: bytes) -> Any:
        return self._func(bs)


class Encoder(_Wrapped):
    """A sink encoder: output object -> bytes (TCP) or ``(value, key)`` (Kafka)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        _not_async(func, "the encoder")
        super().__init__(func)

    def encode(self, data: Any) -> Any:
        return self._func(data)


#: Wallaroo 0.5.2+ made one class per decorated function, ``<Base>__<function name>``, and put
#: it on the ``wallaroo`` module (its API test looks them up: ``wallaroo.Computation__double``).
#: The same classes, by name; ``nfbuilder`` and ``wallaroo`` resolve these attribute names here.
FUNCTION_CLASSES: dict[str, type[_Wrapped]] = {}

W = TypeVar("W", bound=_Wrapped)


def _own_class(base: type[W], func: Callable[..., Any]) -> type[W]:
    """The per-function subclass of ``base`` for ``func`` (a later function of the same name
    takes the name over, as it did in Wallaroo)."""
    name = f"{base.__name__}__{getattr(func, '__name__', 'function')}"
    cls = type(name, (base,), {"__doc__": base.__doc__})
    FUNCTION_CLASSES[name] = cls
    return cls


def _run(timeout: Any, concurrency: Any, processes: Any) -> dict[str, Any]:
    """The execution keywords given (None: not given)."""
    given = {"timeout": timeout, "concurrency": concurrency, "processes": processes}
    return {k: v for k, v in given.items() if v is not None}


def computation(
    name: str, *, on_error: Any = None, timeout: Any = None, concurrency: Any = None,
    processes: Any = None,
) -> Callable[[Callable[..., Any]], Computation]:
    """``@computation(name="double")`` — a stateless one-in/one-out step.

    ``on_error``: this step's own error policy (see ``ApplicationBuilder.on_error``); the
    rest: how it runs (``timeout``, ``concurrency`` for an async def, ``processes``; see
    ``nfbuilder.topology.Execution``)."""
    run = _run(timeout, concurrency, processes)
    return lambda func: _own_class(Computation, func)(func, name, on_error, run)


def computation_multi(
    name: str, *, on_error: Any = None, timeout: Any = None, concurrency: Any = None,
    processes: Any = None,
) -> Callable[[Callable[..., Any]], ComputationMulti]:
    """``@computation_multi(name="split")`` — a stateless step returning a list.

    ``on_error``: this step's own error policy (see ``ApplicationBuilder.on_error``); the
    rest: how it runs (``timeout``, ``concurrency`` for an async def, ``processes``; see
    ``nfbuilder.topology.Execution``)."""
    run = _run(timeout, concurrency, processes)
    return lambda func: _own_class(ComputationMulti, func)(func, name, on_error, run)


def state_computation(
    name: str, *, on_error: Any = None, timeout: Any = None, concurrency: Any = None,
    processes: Any = None,
) -> Callable[[Callable[..., Any]], StateComputation]:
    """``@state_computation(name="add votes")`` — ``f(data, state) -> (out, save)``.

    ``on_error``: this step's own error policy (see ``ApplicationBuilder.on_error``); the
    rest: how it runs (``timeout``, ``concurrency`` for an async def, ``processes``; see
    ``nfbuilder.topology.Execution``)."""
    run = _run(timeout, concurrency, processes)
    return lambda func: _own_class(StateComputation, func)(func, name, on_error, run)


def state_computation_multi(
    name: str, *, on_error: Any = None, timeout: Any = None, concurrency: Any = None,
    processes: Any = None,
) -> Callable[[Callable[..., Any]], StateComputationMulti]:
    """``@state_computation_multi(name="...")`` — ``f(data, state) -> ([outs], save)``.

    ``on_error``: this step's own error policy (see ``ApplicationBuilder.on_error``); the
    rest: how it runs (``timeout``, ``concurrency`` for an async def, ``processes``; see
    ``nfbuilder.topology.Execution``)."""
    run = _run(timeout, concurrency, processes)
    return lambda func: _own_class(StateComputationMulti, func)(func, name, on_error, run)


def partition(func: Callable[..., Any]) -> Partition:
    """``@partition`` — a partition function for ``to_state_partition``."""
    return _own_class(Partition, func)(func)


def encoder(func: Callable[..., Any]) -> Encoder:
    """``@encoder`` — turns outputs into bytes for a sink."""
    return _own_class(Encoder, func)(func)


def decoder(
    header_length: int = 4, length_fmt: str = ">I"
) -> Callable[[Callable[..., Any]], Decoder]:
    """``@decoder(header_length=4, length_fmt=">I")`` — turns source frames into objects."""
    return lambda func: _own_class(Decoder, func)(func, header_length, length_fmt)


def function_class(name: str, module: str) -> type[_Wrapped]:
    """``FUNCTION_CLASSES[name]`` for a module's ``__getattr__`` (PEP 562), else the
    ``AttributeError`` Python would raise."""
    found = FUNCTION_CLASSES.get(name)
    if found is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return found
