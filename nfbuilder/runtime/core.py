"""The one step-execution core: decode -> compute / compute_multi -> state -> key -> encode.

Servicers, the embedded engine and ``nfbuilder.testing`` all run messages through
``VertexProgram.process``, so the None/list/state rules cannot drift between them::

    program = VertexProgram(app, vertex, Codec.for_module(module), StateTable(None, codec, "app"))
    outs = program.process(pipeline=0, payload=frame, msg_id="source-7-0")
    # [Out(value=b'...', keys=('a',), tags=())]

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
from typing import Any

import attrs

from nfbuilder.codec import Codec
from nfbuilder.plan import Vertex, Work
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.statetable import StateTable
from nfbuilder.topology import Application, Pipeline, Step

log = logging.getLogger("nfbuilder.core")

SINGLE_KEY = "_"  # the one key of a to_stateful state


@attrs.frozen
class Out:
    """One output message: payload bytes, routing keys and tags."""

    value: bytes
    keys: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


def _fn_of(obj: Any, method: str) -> str:
    describe = getattr(obj, "describe", None)
    if callable(describe):
        return str(describe())
    return f"{type(obj).__qualname__}.{method}"


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

    @property
    def pipelines(self) -> tuple[int, ...]:
        return tuple(self._works)

    def work(self, pipeline: int | None) -> Work:
        """The work for ``pipeline`` (the only one when the vertex serves one pipeline)."""
        if pipeline is None or pipeline not in self._works:
            if len(self._works) == 1:
                return next(iter(self._works.values()))
            raise UserCodeError(
                f"vertex {self.vertex.name!r} serves pipelines {sorted(self._works)} and got a "
                f"message for pipeline {pipeline!r}; the message lost its pipeline metadata"
            )
        return self._works[pipeline]

    def _call(
        self, where: str | Callable[[], str], obj: Any, method: str, fn: Callable[..., Any],
        *args: Any,
    ) -> Any:
        try:
            return fn(*args)
        except UserCodeError:
            raise
        except Exception as exc:
            place = where if isinstance(where, str) else where()
            raise UserCodeError(
                f"{place}: {_fn_of(obj, method)} raised {exc!r}", traceback.format_exc()
            ) from exc

    # -- the pipeline of operations ---------------------------------------------------------
    def process(self, pipeline: int | None, payload: bytes, msg_id: str = "") -> list[Out]:
        """Run one message through this vertex's work for ``pipeline``."""
        work = self.work(pipeline)
        p = self.app.pipelines[work.pipeline]
        if work.decode:
            decoder = p.source.decoder
            obj = self._call(
                lambda: f"pipeline {p.name!r} decoder", decoder, "decode", decoder.decode, payload
            )
            if obj is None:
                return []
            objs = [obj]
        else:
            objs = [self.codec.loads(payload)]
        if work.steps and p.steps[work.steps[0]].state is not None:
            # the planner gives a state step a vertex of its own
            return self._stateful(p, work, p.steps[work.steps[0]], objs[0], msg_id)
        for index in work.steps:
            step = p.steps[index]
            nxt: list[Any] = []
            for obj in objs:
                nxt.extend(self._results(p, step, self._compute(p, step, obj)))
            objs = nxt
            if not objs:
                return []
        return self._finish(p, work, objs)

    def _finish(self, p: Pipeline, work: Work, objs: list[Any]) -> list[Out]:
        """Key, tag or encode the step outputs."""
        if not work.emit or not objs:
            return []
        if work.encode is not None:
            return self._encode(p, work.encode, objs)
        tags = (work.tag,) if work.tag else ()
        key_step = p.steps[work.key_by] if work.key_by is not None else None
        outs = []
        for obj in objs:
            keys = (self._key(p, key_step, obj),) if key_step is not None else ()
            outs.append(Out(self.codec.dumps(obj), keys, tags))
        return outs

    def _compute(self, p: Pipeline, step: Step, *args: Any) -> Any:
        comp = step.computation
        method = "compute_multi" if step.multi else "compute"
        # The location text is built only on failure: this line runs for every message.
        return self._call(lambda: self._where(p, step), comp, method, getattr(comp, method), *args)

    def _stateful(self, p: Pipeline, work: Work, step: Step, obj: Any, msg_id: str) -> list[Out]:
        """Apply a state step once per message id; a redelivered id gets its recorded outputs."""
        spec = step.state
        assert spec is not None
        where = self._where(p, step)
        key = self._key(p, step, obj) if spec.partitioned else SINGLE_KEY
        declared = self._declared.get(spec.name)
        if declared is not None and key not in declared:
            self.unknown_keys += 1
            log.warning(
                "%s: partition key %r is not among the declared partition_keys; message %s "
                "dropped (%d so far). Declare the key or leave partition_keys out for keys "
                "made on demand.", where, key, msg_id or "?", self.unknown_keys,
            )
            return []
        entry = self.states.entry(spec, key)
        if msg_id:
            recorded = entry.outputs_for(msg_id)
            if recorded is not None:
                self.replayed += 1
                log.info("%s: message %s is already in the state of key %r: not applied again, "
                         "its %s re-emitted", where, msg_id, key, "outputs")
                return [Out(*o) for o in pickle.loads(recorded)] if recorded else []
        result = self._compute(p, step, obj, entry.obj)
        if not isinstance(result, tuple) or len(result) != 2:
            raise UserCodeError(
                f"{where}: a state computation must return (output, save_state), got "
                f"{type(result).__name__} from {_fn_of(step.computation, 'compute')}"
            )
        output, save = result
        outs = self._finish(p, work, self._results(p, step, output))
        recorded = pickle.dumps([attrs.astuple(o) for o in outs], protocol=5) if outs else b""
        self.states.applied(spec, key, entry, msg_id, save is True, recorded)
        return outs

    def _where(self, p: Pipeline, step: Step) -> str:
        return f"pipeline {p.name!r}, step {step.name!r}"

    def _results(self, p: Pipeline, step: Step, result: Any) -> list[Any]:
        if result is None:
            return []
        if step.multi:
            if not isinstance(result, list):
                raise UserCodeError(
                    f"{self._where(p, step)}: compute_multi must return a list, got "
                    f"{type(result).__name__} from {_fn_of(step.computation, 'compute_multi')}"
                )
            return [r for r in result if r is not None]
        return [result]

    def _key(self, p: Pipeline, step: Step, obj: Any) -> str:
        assert step.state is not None
        fn = step.state.partition_function
        key = self._call(self._where(p, step), fn, "partition", fn.partition, obj)
        if step.state.u64 and (not isinstance(key, int) or isinstance(key, bool) or key < 0):
            raise UserCodeError(
                f"{self._where(p, step)}: to_state_partition_u64 needs a non-negative int key, "
                f"got {key!r} from {_fn_of(fn, 'partition')}"
            )
        return str(key)

    def _encode(self, p: Pipeline, index: int, objs: list[Any]) -> list[Out]:
        sink = p.sinks[index]
        enc = sink.encoder
        where = f"pipeline {p.name!r} encoder"
        outs = []
        for obj in objs:
            data = self._call(where, enc, "encode", enc.encode, obj)
            if data is None:
                continue
            key: Any = None
            if sink.kind == "kafka" and isinstance(data, tuple):  # (value, key[, partition])
                data, key = (data + (None,))[:2]
            if isinstance(data, str):
                data = data.encode("utf-8")
            if not isinstance(data, (bytes, bytearray, memoryview)):
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
            outs.append(Out(bytes(data), key_s))
        return outs
