"""How a vertex's ``Work`` becomes its stage: closures that run one decoded object through the
steps, the state step, the keyer and the encoder, applying the step rules (see
:mod:`nfbuilder.runtime.core`; this module is where they are applied, and the only place).

``VertexProgram`` builds one :class:`Compiled` per pipeline it serves and calls its ``stage``::

    c = Compiled(program, work)
    outs = c.stage(obj, msg_id, key, serialize)     # list[Out]

Everything resolvable ahead of the first message (the user functions, the keyer, the tags, the
durable store) is resolved here once, so the per-message closures do as little as possible.
The stages are parts of ``VertexProgram`` kept in a module of their own for size: they use its
private ``_record`` and ``_replay``. ``Out``, ``SINGLE_KEY`` and ``Stage`` are
defined here (so that the imports go one way, core -> stages) and exported by the core.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from nfbuilder.plan import Work
from nfbuilder.plan.routing import DROP, drop_value
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.steploop import asynchronous
from nfbuilder.topology import KafkaSink, Sink, Step, partition_key

if TYPE_CHECKING:
    from nfbuilder.runtime.core import VertexProgram

# The core's logger name, kept from before the stages had a module of their own: users and tests
# filter on it.
log = logging.getLogger("nfbuilder.core")

SINGLE_KEY = "_"  # the one key of a to_stateful state
_BYTES = (bytes, bytearray, memoryview)


class Out(NamedTuple):
    """One output message: payload bytes (the object itself when asked for with
    ``process_object(..., serialize=False)``), routing keys and tags.

        Out(b"...", ("a",))
    """

    value: Any
    keys: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    #: the event time a decoder gave its message (``EventTime``); None: the input's
    event_time_ns: int | None = None


def _fn_of(obj: Any, method: str) -> str:
    describe = getattr(obj, "describe", None)
    if callable(describe):
        return str(describe())
    return f"{type(obj).__qualname__}.{method}"


def _direct(obj: Any, method: str) -> Callable[..., Any]:
    """What to call for ``obj.method``: the user's function itself when ``obj`` is one of the
    dsl's decorator wrappers whose method only forwards to it (one Python frame less per call,
    on every message), else the bound method."""
    bound = getattr(obj, method)
    # The runtime may not import the dsl (layering), so the forwarders are recognised by module.
    declared = getattr(type(obj), method, None)
    func = getattr(obj, "function", None)
    if getattr(declared, "__module__", None) == "nfbuilder.dsl.decorators" and callable(func):
        return func  # type: ignore[no-any-return]
    return bound  # type: ignore[no-any-return]


def user_error(place: str, obj: Any, method: str, exc: Exception,
               step: str | None = None) -> UserCodeError:
    """The ``UserCodeError`` for ``exc`` raised by user code (of ``step``: None for a decoder or
    an encoder); call inside the ``except``."""
    fn = _fn_of(obj, method)
    return UserCodeError(f"{place}: {fn} raised {exc!r}", traceback.format_exc(), step=step,
                         function=fn)


def _keyer(where: str, step: Step) -> Callable[[Any], str]:
    """A state step's partition function, ready to call: ``keyer(obj) -> str``."""
    assert step.state is not None
    part = step.state.partition_function
    fn = _direct(part, "partition")
    u64 = step.state.u64

    def keyer(obj: Any) -> str:
        try:
            key = fn(obj)
        except UserCodeError:
            raise
        except Exception as exc:
            raise user_error(where, part, "partition", exc, step.name) from exc
        if u64:
            if not isinstance(key, int) or isinstance(key, bool) or key < 0:
                raise UserCodeError(
                    f"{where}: to_state_partition_u64 needs a non-negative int key, "
                    f"got {key!r} from {_fn_of(part, 'partition')}", step=step.name,
                    function=_fn_of(part, "partition"))
        elif type(key) is str:
            return key
        try:
            return partition_key(key, u64)
        except ValueError as exc:
            raise UserCodeError(f"{where}: {_fn_of(part, 'partition')} returned {exc}",
                                step=step.name, function=_fn_of(part, "partition")) from None

    return keyer


#: ``stage(obj, msg_id, key, serialize) -> outputs``: a vertex's work for one pipeline from the
#: decoded object on (see ``VertexProgram.process_object`` for the arguments).
Stage = Callable[[Any, str, "str | None", bool], list[Out]]
_Finish = Callable[[list[Any], bool], list[Out]]
_new = tuple.__new__  # builds an Out without a Python-level __new__ frame (hot path)


class Compiled:
    """A ``Work`` resolved once into closures (``stage``, ``finish``) that hold what each
    message needs: the step functions, the state step, the keyer, the tags of the outputs.
    Every rule of ``nfbuilder.runtime.core``'s docstring is applied here, and only here."""

    __slots__ = ("decode", "encoded", "stage", "work")

    def __init__(self, program: VertexProgram, work: Work) -> None:
        self.work = work
        self.decode = work.decode
        self.encoded = work.encoded
        finish, one = _finishers(program, work)
        first = work.steps[0] if work.steps else None
        if first is not None and first.state is not None:
            # the planner gives a state step a vertex of its own
            self.stage: Stage = _state_stage(program, work.pipeline_name, first, finish, one,
                                             bool(work.sinks))
        else:
            self.stage = _steps_stage(work.pipeline_name, work.steps, finish, one)


class _DropLog:
    """Logs messages dropped for an undeclared partition key: the first at once, then at most
    one line per ``interval_s`` with the count since (a bad key can come with every message)."""

    def __init__(self, where: str, interval_s: float = 5.0) -> None:
        self.where, self.interval_s = where, interval_s
        self.since = 0
        self.next_at = 0.0

    def __call__(self, key: str, msg_id: str) -> None:
        self.since += 1
        now = time.monotonic()
        if now < self.next_at:
            return
        log.warning(
            "%s: %d message(s) dropped: partition key not among the declared partition_keys "
            "(e.g. %r, message %s). Declare the key, or leave partition_keys out for keys made "
            "on demand.", self.where, self.since, key, msg_id or "?")
        self.since = 0
        self.next_at = now + self.interval_s


def _step_fn(step: Step) -> Callable[..., Any]:
    """What to call for ``step``'s computation; an ``async def`` one awaits on the step loop
    (within its timeout) and returns the result, so every stage stays synchronous."""
    fn = _direct(step.computation, step.method)
    if step.asynchronous:
        return asynchronous(fn, step.execution.timeout_s)
    return fn


def _where(pipeline: str, step: Step) -> str:
    return f"pipeline {pipeline!r}, step {step.name!r}"


def _finishers(program: VertexProgram, work: Work) -> tuple[_Finish, Stage]:
    """Key, tag or encode the step outputs: ``finish(objs, serialize)`` for a list of them and,
    for the common single output, ``one(obj, msg_id, key, serialize)`` (a stage by itself for
    a vertex without steps: a sink)."""
    if not work.emit:
        return (lambda objs, serialize: []), (lambda obj, msg_id, key, serialize: [])
    tags: tuple[str, ...] = (work.tag,) if work.tag else ()
    if work.sinks:
        per_sink: list[tuple[str, ...]] = (
            [(t,) for t in work.sink_tags] if work.sink_tags else [tags] * len(work.sinks))
        return _encoders(work.pipeline_name, work.sinks, per_sink)
    key_by = work.key_by
    keyer = _keyer(_where(work.pipeline_name, key_by), key_by) if key_by is not None else None
    dumps = _dumps(program, work)

    def finish(objs: list[Any], serialize: bool) -> list[Out]:
        if serialize:
            if keyer is None:
                return [_new(Out, (dumps(o), (), tags, None)) for o in objs]
            return [_new(Out, (dumps(o), (keyer(o),), tags, None)) for o in objs]
        if keyer is None:
            return [_new(Out, (o, (), tags, None)) for o in objs]
        return [_new(Out, (o, (keyer(o),), tags, None)) for o in objs]

    def one(obj: Any, msg_id: str, key: str | None, serialize: bool) -> list[Out]:
        keys = () if keyer is None else (keyer(obj),)
        return [_new(Out, (dumps(obj) if serialize else obj, keys, tags, None))]

    return finish, one


def _dumps(program: VertexProgram, work: Work) -> Callable[[Any], bytes]:
    """The codec's ``dumps`` for the outputs of ``work``; an app's own ``serialize`` is checked:
    what crosses to the next vertex must be bytes."""
    dumps = program.codec.dumps
    step = work.steps[-1].name if work.steps else None
    where = f"pipeline {work.pipeline_name!r}, step {step or 'decoder'!r}"
    if not program.codec.custom:

        def pickled(obj: Any) -> bytes:
            try:
                return dumps(obj)  # pickle: always bytes
            except Exception as exc:
                raise UserCodeError(
                    f"{where}: an output of type {type(obj).__name__} cannot be pickled to "
                    f"cross to the next vertex: {exc!r}. Return picklable objects, or give the "
                    "app serialize/deserialize functions.", traceback.format_exc(), step=step,
                    function="pickle.dumps") from exc

        return pickled

    def checked(obj: Any) -> bytes:
        try:
            data = dumps(obj)
        except Exception as exc:
            raise user_error(f"{where}: serializing an output", dumps, "serialize",
                             exc, step) from exc
        if type(data) is bytes:
            return data
        if isinstance(data, (bytearray, memoryview)):
            return bytes(data)
        raise UserCodeError(
            f"{where}: the app's serialize returned {type(data).__name__} for an output of "
            f"type {type(obj).__name__}; it must return bytes (what crosses to the next "
            "vertex). Make serialize handle this type, or return another type from the step.",
            step=step, function=_fn_of(dumps, "serialize"))

    return checked


def _steps_stage(pipeline: str, steps: tuple[Step, ...], finish: _Finish, one: Stage) -> Stage:
    """The stage of a vertex running stateless steps (or none: a sink's encoding only)."""
    resolved = [(s.computation, _step_fn(s), s.multi, s.method, _where(pipeline, s), s.name)
                for s in steps]
    if not resolved:
        return one

    def stage(obj: Any, msg_id: str, key: str | None, serialize: bool) -> list[Out]:
        objs = [obj]
        for comp, fn, multi, method, where, name in resolved:
            nxt: list[Any] = []
            for o in objs:
                try:
                    result = fn(o)
                except UserCodeError:
                    raise
                except Exception as exc:
                    raise user_error(where, comp, method, exc, name) from exc
                if result is None:
                    continue
                if not multi:
                    nxt.append(result)
                elif isinstance(result, list):
                    nxt.extend([r for r in result if r is not None])
                else:
                    raise _not_a_list(where, comp, result, name)
            if not nxt:
                return []
            objs = nxt
        return finish(objs, serialize)

    return stage


def _state_stage(
    program: VertexProgram, pipeline: str, step: Step, finish: _Finish, one: Stage,
    work_encodes: bool,
) -> Stage:
    """Apply a state step once per message id; a redelivered id gets its recorded outputs.

    Ids and outputs are only recorded with a durable store: without one nothing survives the
    process that could be redelivered, so there is nothing to look up or record."""
    spec = step.state
    assert spec is not None
    where = _where(pipeline, step)
    comp, method, multi = step.computation, step.method, step.multi
    fn = _step_fn(step)
    keyer = _keyer(where, step) if spec.partitioned else None
    declared = spec.declared()
    states = program.states
    entries = states.entries(spec.name)
    durable = states.durable
    dumps_state = program.codec.dumps
    # encoded outputs are bytes whatever ``serialize`` says: recorded and replayed as they are
    encodes = work_encodes
    warn_drop = _DropLog(where)

    def stage(obj: Any, msg_id: str, key: str | None, serialize: bool) -> list[Out]:
        if keyer is None:
            key = SINGLE_KEY
        elif key is None:
            key = keyer(obj)
        if declared is not None and key not in declared:
            program.unknown_keys += 1
            warn_drop(key, msg_id)
            return [_new(Out, (drop_value(step.name, key), (), (DROP,), None))]
        entry = entries.get(key)
        if entry is None:
            entry = states.entry(spec, key)
        if durable and msg_id:
            recorded = entry.outputs_for(msg_id)
            if recorded is not None:
                program.replayed += 1
                log.info("%s: message %s is already in the state of key %r: not applied again, "
                         "its %s re-emitted", where, msg_id, key, "outputs")
                return program._replay(recorded, serialize or encodes)
        # with saves held for a batch, a key changed earlier in it is not in the store yet:
        # keep what it was before this message, to go back to if the computation fails
        before = dumps_state(entry.obj) if entry.held else None
        try:
            result = fn(obj, entry.obj)
            if not isinstance(result, tuple) or len(result) != 2:
                raise UserCodeError(
                    f"{where}: a state computation must return (output, save_state), got "
                    f"{type(result).__name__} from {_fn_of(comp, 'compute')}", step=step.name,
                    function=_fn_of(comp, "compute"))
            output, save = result
            if output is None:
                outs: list[Out] = []
            elif not multi:
                outs = one(output, msg_id, None, serialize)
            elif isinstance(output, list):
                outs = finish([r for r in output if r is not None], serialize)
            else:
                raise _not_a_list(where, comp, output, step.name)
        except Exception as exc:
            # The computation may have changed the state before it failed: with a store, go
            # back to the state before it (held for the batch), or forget the cached object so
            # the next message of the key (or a retry) starts from the saved one (saves are all
            # that changed it). In memory there is nothing to go back to.
            if before is not None:
                entry.obj = program.codec.loads(before)
            elif durable:
                entries.pop(key, None)
            if isinstance(exc, UserCodeError):
                raise
            raise user_error(where, comp, method, exc, step.name) from exc
        if durable:
            states.applied(spec, key, entry, msg_id, save is True,
                           program._record(outs, serialize or encodes))
        return outs

    return stage


def _encoders(
    pipeline: str, sinks: tuple[Sink, ...], tags: list[tuple[str, ...]]
) -> tuple[_Finish, Stage]:
    """The sinks' encoders applied to each output (``encode(objs, serialize)``) or to one
    (``one(obj, msg_id, key, serialize)``): one encoded output per sink, tagged with that sink's
    ``tags``. Encoded outputs are always bytes, whatever ``serialize`` says."""
    each = [_encoder(pipeline, sink, t) for sink, t in zip(sinks, tags, strict=True)]
    if len(each) == 1:
        single = each[0]

        def encode(objs: list[Any], serialize: bool) -> list[Out]:
            return [out for out in map(single, objs) if out is not None]

        def one(obj: Any, msg_id: str, key: str | None, serialize: bool) -> list[Out]:
            out = single(obj)
            return [] if out is None else [out]

        return encode, one

    def encode_all(objs: list[Any], serialize: bool) -> list[Out]:
        return [out for obj in objs for e in each if (out := e(obj)) is not None]

    def one_all(obj: Any, msg_id: str, key: str | None, serialize: bool) -> list[Out]:
        return [out for e in each if (out := e(obj)) is not None]

    return encode_all, one_all


def _encoder(pipeline: str, sink: Sink, tags: tuple[str, ...]) -> Callable[[Any], Out | None]:
    """``sink``'s encoder as ``encode(obj) -> Out | None``: bytes (str is UTF-8 encoded), and
    for a Kafka sink ``(value, key[, partition])`` too; None writes nothing."""
    enc = sink.encoder
    fn = _direct(enc, "encode")
    where = f"pipeline {pipeline!r} encoder"
    kafka = isinstance(sink, KafkaSink)

    def convert(data: Any) -> Out:
        """What the encoder returned, other than None and plain bytes for a TCP sink."""
        key: Any = None
        if kafka and isinstance(data, tuple):  # (value, key[, partition])
            data, key = (data + (None,))[:2]
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, _BYTES):
            raise UserCodeError(
                f"{where}: {_fn_of(enc, 'encode')} must return bytes or str, got "
                f"{type(data).__name__}"
            )
        if isinstance(key, str):
            key_s: tuple[str, ...] = (key,)
        elif isinstance(key, (bytes, bytearray)):
            key_s = (bytes(key).decode("utf-8", "replace"),)
        else:
            key_s = ()
        return Out(bytes(data), key_s, tags)

    def encode(obj: Any) -> Out | None:
        try:
            data = fn(obj)
        except UserCodeError:
            raise
        except Exception as exc:
            raise user_error(where, enc, "encode", exc) from exc
        if data is None:
            return None
        # plain bytes for a TCP sink is the common case, checked first
        if type(data) is bytes and not kafka:
            return _new(Out, (data, (), tags, None))  # type: ignore[no-any-return]
        return convert(data)

    return encode


def _not_a_list(where: str, comp: Any, result: Any, step: str) -> UserCodeError:
    fn = _fn_of(comp, "compute_multi")
    return UserCodeError(
        f"{where}: compute_multi must return a list, got {type(result).__name__} from {fn}",
        step=step, function=fn)
