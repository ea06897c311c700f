"""The one step-execution core: decode -> compute / compute_multi -> state -> key -> encode.

Servicers, the embedded engine and ``nfbuilder.testing`` all run messages through
``VertexProgram``, so the None/list/state rules cannot drift between them::

    program = VertexProgram(app, vertex, Codec.for_module(module), StateTable(None, codec))
    outs = program.process(pipeline=0, payload=frame, msg_id="source-7-0")
    # [Out(value=b'...', keys=('a',), tags=())]

``process`` is two stages: the payload is decoded (a source's decoder, else ``codec.loads``),
then ``process_object`` runs the steps on the object and keys, tags and serializes (or encodes)
the outputs. The in-process harness calls ``process_object`` directly and may ask for the
output objects themselves (``serialize=False``) instead of their bytes.

Rules (Wallaroo's, with 0.5's fixes): a decoder or ``compute`` returning None filters the message;
``compute_multi`` must return a list (None filters; None elements are skipped); a state step returns
``(output, save_state)`` where output may be None (no message) or, for ``_multi``, a list; only
``save_state is True`` persists. An exception in user code becomes ``UserCodeError`` naming the
pipeline, the step and the user function.
"""

from __future__ import annotations

import logging
import pickle
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

from nfbuilder.codec import Codec
from nfbuilder.plan import Vertex, Work
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.statetable import StateTable
from nfbuilder.topology import Application, Pipeline, Step

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


def _user_error(place: str, obj: Any, method: str, exc: Exception) -> UserCodeError:
    """The ``UserCodeError`` for ``exc`` raised by user code; call inside the ``except``."""
    return UserCodeError(f"{place}: {_fn_of(obj, method)} raised {exc!r}", traceback.format_exc())


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
            raise _user_error(where, part, "partition", exc) from exc
        if u64 and (not isinstance(key, int) or isinstance(key, bool) or key < 0):
            raise UserCodeError(
                f"{where}: to_state_partition_u64 needs a non-negative int key, "
                f"got {key!r} from {_fn_of(part, 'partition')}"
            )
        return key if type(key) is str else str(key)

    return keyer


#: ``stage(obj, msg_id, key, serialize) -> outputs``: a vertex's work for one pipeline from the
#: decoded object on (see ``VertexProgram.process_object`` for the arguments).
Stage = Callable[[Any, str, "str | None", bool], list[Out]]
_Finish = Callable[[list[Any], bool], list[Out]]
_new = tuple.__new__  # builds an Out without a Python-level __new__ frame (hot path)


class _Compiled:
    """A ``Work`` resolved once into closures (``stage``, ``finish``) that hold what each
    message needs: the step functions, the state step, the keyer, the tags of the outputs.
    Every rule of the module docstring is applied here, and only here."""

    __slots__ = ("decode", "p", "stage", "work")

    def __init__(self, program: VertexProgram, work: Work) -> None:
        p = program.app.pipelines[work.pipeline]
        self.p = p
        self.work = work
        self.decode = work.decode
        finish, one = _finishers(program, p, work)
        first = p.steps[work.steps[0]] if work.steps else None
        if first is not None and first.state is not None:
            # the planner gives a state step a vertex of its own
            self.stage: Stage = _state_stage(program, p, first, finish, one)
        else:
            self.stage = _steps_stage(p, [p.steps[i] for i in work.steps], finish, one)


def _method(step: Step) -> str:
    return "compute_multi" if step.multi else "compute"


def _where(p: Pipeline, step: Step) -> str:
    return f"pipeline {p.name!r}, step {step.name!r}"


def _finishers(program: VertexProgram, p: Pipeline, work: Work) -> tuple[_Finish, Stage]:
    """Key, tag or encode the step outputs: ``finish(objs, serialize)`` for a list of them and,
    for the common single output, ``one(obj, msg_id, key, serialize)`` (a stage by itself for
    a vertex without steps: a sink)."""
    if not work.emit:
        return (lambda objs, serialize: []), (lambda obj, msg_id, key, serialize: [])
    if work.encode is not None:
        return _encoders(p, work.encode)
    tags: tuple[str, ...] = (work.tag,) if work.tag else ()
    keyer = (_keyer(_where(p, p.steps[work.key_by]), p.steps[work.key_by])
             if work.key_by is not None else None)
    dumps = program.codec.dumps

    def finish(objs: list[Any], serialize: bool) -> list[Out]:
        if serialize:
            if keyer is None:
                return [_new(Out, (dumps(o), (), tags)) for o in objs]
            return [_new(Out, (dumps(o), (keyer(o),), tags)) for o in objs]
        if keyer is None:
            return [_new(Out, (o, (), tags)) for o in objs]
        return [_new(Out, (o, (keyer(o),), tags)) for o in objs]

    def one(obj: Any, msg_id: str, key: str | None, serialize: bool) -> list[Out]:
        keys = () if keyer is None else (keyer(obj),)
        return [_new(Out, (dumps(obj) if serialize else obj, keys, tags))]

    return finish, one


def _steps_stage(p: Pipeline, steps: list[Step], finish: _Finish, one: Stage) -> Stage:
    """The stage of a vertex running stateless steps (or none: a sink's encoding only)."""
    resolved = [(s.computation, _direct(s.computation, _method(s)), s.multi, _method(s),
                 _where(p, s)) for s in steps]
    if not resolved:
        return one

    def stage(obj: Any, msg_id: str, key: str | None, serialize: bool) -> list[Out]:
        objs = [obj]
        for comp, fn, multi, method, where in resolved:
            nxt: list[Any] = []
            for o in objs:
                try:
                    result = fn(o)
                except UserCodeError:
                    raise
                except Exception as exc:
                    raise _user_error(where, comp, method, exc) from exc
                if result is None:
                    continue
                if not multi:
                    nxt.append(result)
                elif isinstance(result, list):
                    nxt.extend([r for r in result if r is not None])
                else:
                    raise _not_a_list(where, comp, result)
            if not nxt:
                return []
            objs = nxt
        return finish(objs, serialize)

    return stage


def _state_stage(
    program: VertexProgram, p: Pipeline, step: Step, finish: _Finish, one: Stage
) -> Stage:
    """Apply a state step once per message id; a redelivered id gets its recorded outputs.

    Ids and outputs are only recorded with a durable store: without one nothing survives the
    process that could be redelivered, so there is nothing to look up or record."""
    spec = step.state
    assert spec is not None
    where = _where(p, step)
    comp, method, multi = step.computation, _method(step), step.multi
    fn = _direct(comp, method)
    keyer = _keyer(where, step) if spec.partitioned else None
    declared = program._declared.get(spec.name)
    states = program.states
    entries = states.entries(spec.name)
    durable = states.durable

    def stage(obj: Any, msg_id: str, key: str | None, serialize: bool) -> list[Out]:
        if keyer is None:
            key = SINGLE_KEY
        elif key is None:
            key = keyer(obj)
        if declared is not None and key not in declared:
            program.unknown_keys += 1
            log.warning(
                "%s: partition key %r is not among the declared partition_keys; message %s "
                "dropped (%d so far). Declare the key or leave partition_keys out for keys "
                "made on demand.", where, key, msg_id or "?", program.unknown_keys,
            )
            return []
        entry = entries.get(key)
        if entry is None:
            entry = states.entry(spec, key)
        if durable and msg_id:
            recorded = entry.outputs_for(msg_id)
            if recorded is not None:
                program.replayed += 1
                log.info("%s: message %s is already in the state of key %r: not applied again, "
                         "its %s re-emitted", where, msg_id, key, "outputs")
                return program._replay(recorded, serialize)
        try:
            result = fn(obj, entry.obj)
        except UserCodeError:
            raise
        except Exception as exc:
            raise _user_error(where, comp, method, exc) from exc
        if not isinstance(result, tuple) or len(result) != 2:
            raise UserCodeError(
                f"{where}: a state computation must return (output, save_state), got "
                f"{type(result).__name__} from {_fn_of(comp, 'compute')}"
            )
        output, save = result
        if output is None:
            outs: list[Out] = []
        elif not multi:
            outs = one(output, msg_id, None, serialize)
        elif isinstance(output, list):
            outs = finish([r for r in output if r is not None], serialize)
        else:
            raise _not_a_list(where, comp, output)
        if durable:
            states.applied(spec, key, entry, msg_id, save is True,
                           program._record(outs, serialize))
        return outs

    return stage


def _encoders(p: Pipeline, index: int) -> tuple[_Finish, Stage]:
    """A sink's encoder applied to each output (``encode(objs, serialize)``) or to one
    (``one(obj, msg_id, key, serialize)``): bytes (str is UTF-8 encoded), and for a Kafka sink
    ``(value, key[, partition])`` too; None writes nothing. Encoded outputs are always bytes."""
    sink = p.sinks[index]
    enc = sink.encoder
    fn = _direct(enc, "encode")
    where = f"pipeline {p.name!r} encoder"
    kafka = sink.kind == "kafka"

    def call(obj: Any) -> Any:
        try:
            return fn(obj)
        except UserCodeError:
            raise
        except Exception as exc:
            raise _user_error(where, enc, "encode", exc) from exc

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
        return Out(bytes(data), key_s)

    def encode(objs: list[Any], serialize: bool) -> list[Out]:
        outs = []
        for obj in objs:
            data = call(obj)
            if data is None:
                continue
            # plain bytes for a TCP sink is the common case, checked first
            outs.append(_new(Out, (data, (), ())) if type(data) is bytes and not kafka
                        else convert(data))
        return outs

    def one(obj: Any, msg_id: str, key: str | None, serialize: bool) -> list[Out]:
        try:
            data = fn(obj)  # inline (not ``call``): one frame less for every sink message
        except UserCodeError:
            raise
        except Exception as exc:
            raise _user_error(where, enc, "encode", exc) from exc
        if data is None:
            return []
        if type(data) is bytes and not kafka:
            return [_new(Out, (data, (), ()))]
        return [convert(data)]

    return encode, one


class VertexProgram:
    """What one vertex does to a message of each pipeline it serves."""

    def __init__(self, app: Application, vertex: Vertex, codec: Codec, states: StateTable) -> None:
        self.app = app
        self.vertex = vertex
        self.codec = codec
        self.states = states
        self.unknown_keys = 0  # messages dropped because their partition key was not declared
        self.replayed = 0  # redelivered messages answered from the recorded outputs
        self._works = {w.pipeline: w for w in vertex.works}
        self._declared = {
            name: frozenset(str(k) for k in spec.keys)
            for name, spec in app.states().items()
            if spec.keys
        }
        self._compiled = {w.pipeline: _Compiled(self, w) for w in vertex.works}
        self._only = next(iter(self._compiled.values())) if len(self._compiled) == 1 else None

    @property
    def pipelines(self) -> tuple[int, ...]:
        return tuple(self._works)

    def work(self, pipeline: int | None) -> Work:
        """The work for ``pipeline`` (the only one when the vertex serves one pipeline)."""
        return self._compile(pipeline).work

    def stage(self, pipeline: int | None) -> Stage:
        """This vertex's work for ``pipeline`` from the decoded object on, as one function:
        ``stage(obj, msg_id, key, serialize)`` is ``process_object(pipeline, obj, msg_id, key,
        serialize)`` without the look-up of the pipeline (for callers that loop)::

            apply = program.stage(0)
            outs = apply("a b", "", None, False)
        """
        return self._compile(pipeline).stage

    def _compile(self, pipeline: int | None) -> _Compiled:
        found = self._compiled.get(pipeline) if pipeline is not None else None
        if found is not None:
            return found
        if self._only is not None:
            return self._only
        raise UserCodeError(
            f"vertex {self.vertex.name!r} serves pipelines {sorted(self._works)} and got a "
            f"message for pipeline {pipeline!r}; the message lost its pipeline metadata"
        )

    # -- the pipeline of operations ---------------------------------------------------------
    def process(
        self, pipeline: int | None, payload: bytes, msg_id: str = "", key: str | None = None,
        serialize: bool = True,
    ) -> list[Out]:
        """Run one message (payload bytes) through this vertex's work for ``pipeline``.

        ``key`` and ``serialize`` as for :meth:`process_object`."""
        c = self._compile(pipeline)
        if c.decode:
            decoder = c.p.source.decoder
            try:
                obj = decoder.decode(payload)
            except UserCodeError:
                raise
            except Exception as exc:
                raise _user_error(f"pipeline {c.p.name!r} decoder", decoder, "decode", exc) from exc
            if obj is None:
                return []
        else:
            obj = self.codec.loads(payload)
        return c.stage(obj, msg_id, key, serialize)

    def process_object(
        self, pipeline: int | None, obj: Any, msg_id: str = "", key: str | None = None,
        serialize: bool = True,
    ) -> list[Out]:
        """Run one already-decoded object through this vertex's work (the decoder is skipped).

        ``key``: the partition key the upstream vertex gave the message (``Out.keys[0]``);
        a partitioned state step uses it instead of calling the partition function again.
        ``serialize=False`` returns the output objects themselves as ``Out.value`` (encoded
        sink outputs stay bytes), for callers that pass objects between vertices in-process::

            outs = program.process_object(0, "a b", serialize=False)   # [Out('a', ...), ...]
        """
        return self._compile(pipeline).stage(obj, msg_id, key, serialize)

    def _record(self, outs: list[Out], serialized: bool) -> bytes:
        """The outputs as recorded with a snapshot: always in their serialized form, so a store
        written by one caller of the core replays the same for any other."""
        if not outs:
            return b""
        if serialized:
            return pickle.dumps([tuple(o) for o in outs], protocol=5)
        dumps = self.codec.dumps
        return pickle.dumps([(dumps(o.value), o.keys, o.tags) for o in outs], protocol=5)

    def _replay(self, recorded: bytes, serialize: bool) -> list[Out]:
        if not recorded:
            return []
        outs = [Out(*o) for o in pickle.loads(recorded)]
        if serialize:
            return outs
        # The recorded values are payload bytes; a caller passing objects gets the objects back.
        # (An encoded sink output is never recorded: state vertices do not encode.)
        loads = self.codec.loads
        return [Out(loads(o.value), o.keys, o.tags) for o in outs]


def _not_a_list(where: str, comp: Any, result: Any) -> UserCodeError:
    return UserCodeError(
        f"{where}: compute_multi must return a list, got "
        f"{type(result).__name__} from {_fn_of(comp, 'compute_multi')}"
    )
