"""The one step-execution core: decode -> compute / compute_multi -> state -> key -> encode.

Servicers, the embedded engine and ``nfbuilder.testing`` all run messages through
``VertexProgram``, so the None/list/state rules cannot drift between them::

    program = VertexProgram(vertex, Codec.for_module(module), StateTable(None, codec))
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

import base64
import contextlib
import json
import logging
import pickle
import time
from typing import Any

from nfbuilder.codec import Codec
from nfbuilder.plan import DEAD_LETTER, Vertex, Work
from nfbuilder.records import EventTime
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.stages import SINGLE_KEY, Compiled, Out, Stage, _fn_of, user_error
from nfbuilder.runtime.state.signing import PREFIX as SIGNED
from nfbuilder.runtime.statetable import StateTable
from nfbuilder.topology import FAIL

# Out, SINGLE_KEY and Stage live with the stages that make them and are part of this module's API.
__all__ = ["SINGLE_KEY", "Out", "Stage", "VertexProgram", "dead_letter"]

#: the first byte of a recorded single output (a pickle of protocol 2 or later starts with 0x80)
_ONE_VALUE = b"\x00"
#: what a single output's bytes must not start with: after the marker, a signed blob's prefix
_SIGNED_AFTER_MARKER = SIGNED.removeprefix(_ONE_VALUE)
log = logging.getLogger("nfbuilder.core")


#: how much of an object's repr a dead-letter record shows
_SHOWN = 2000


def dead_letter(pipeline: str, vertex: str, exc: UserCodeError, msg_id: str, payload: bytes,
                attempts: int, shown: str | None = None) -> bytes:
    """The dead-letter record of a message, as one line of JSON: where it failed (pipeline,
    vertex, step, function), why (error, traceback), which message (id, payload in base64 and,
    when it is text, as text; ``object``: the repr of the object a payload between vertices
    stands for), when (``time``, Unix seconds) and after how many attempts::

        {"pipeline": "p", "vertex": "parse", "step": "parse", "function": "parse (app.py:9)",
         "error": "pipeline 'p', step 'parse': ... raised ValueError('x')", "traceback": "...",
         "id": "source-MTc6MA==-0", "time": 1764590000.5, "attempts": 4,
         "payload_b64": "eA==", "payload": "x"}
    """
    record: dict[str, Any] = {
        "pipeline": pipeline, "vertex": vertex, "step": exc.step, "function": exc.function,
        "error": exc.message, "traceback": exc.traceback_text, "id": msg_id,
        "time": round(time.time(), 3), "attempts": attempts,
        "payload_b64": base64.b64encode(payload).decode(),
    }
    if shown is not None:
        record["object"] = shown
    else:
        with contextlib.suppress(UnicodeDecodeError):
            record["payload"] = payload.decode("utf-8")
    return json.dumps(record).encode() + b"\n"


def _time_of(c: Compiled, stamped: EventTime) -> int:
    try:
        return stamped.time_ns
    except TypeError as exc:
        raise UserCodeError(f"pipeline {c.work.pipeline_name!r} decoder: {exc}; return "
                            "EventTime(value, datetime_or_epoch_seconds)",
                            function=_fn_of(c.work.decoder, "decode")) from None


def _at(outs: list[Out], time_ns: int) -> list[Out]:
    """``outs`` with the event time their message's decoder gave."""
    return [o._replace(event_time_ns=time_ns) for o in outs]


class VertexProgram:
    """What one vertex does to a message of each pipeline it serves."""

    def __init__(self, vertex: Vertex, codec: Codec, states: StateTable) -> None:
        self.vertex = vertex
        self.codec = codec
        self.states = states
        self.unknown_keys = 0  # messages dropped because their partition key was not declared
        self.replayed = 0  # redelivered messages answered from the recorded outputs
        self.dead_lettered = 0  # messages given up on by ``handle``
        self._works = {w.pipeline: w for w in vertex.works}
        self._compiled = {w.pipeline: Compiled(self, w) for w in vertex.works}
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

    def _compile(self, pipeline: int | None) -> Compiled:
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
        """Run one message (payload bytes) through this vertex's work for ``pipeline`` (at a
        sink vertex: the payload as it came, already encoded).

        ``key`` and ``serialize`` as for :meth:`process_object`."""
        c = self._compile(pipeline)
        if c.encoded:  # a sink vertex: the vertex before it encoded the message
            return [Out(payload)]
        if c.decode:
            decoder = c.work.decoder
            try:
                obj = decoder.decode(payload)
            except UserCodeError:
                raise
            except Exception as exc:
                where = f"pipeline {c.work.pipeline_name!r} decoder"
                raise user_error(where, decoder, "decode", exc) from exc
            if obj is None:
                return []
            if type(obj) is EventTime:  # the decoder says when the message happened
                return _at(c.stage(obj.value, msg_id, key, serialize), _time_of(c, obj))
        else:
            obj = self.codec.loads(payload)
        return c.stage(obj, msg_id, key, serialize)

    def handle(self, pipeline: int | None, payload: bytes, msg_id: str = "",
               key: str | None = None) -> list[Out]:
        """:meth:`process`, under the error policy of the step that fails: a message its user
        code cannot handle is retried (after ``policy.delay(attempt)`` seconds) and then, with
        ``dead-letter``, becomes one output tagged :data:`DEAD_LETTER` whose value is the
        dead-letter record (:func:`dead_letter`); with ``fail`` the ``UserCodeError`` is raised
        (the vertex exits, as on Numaflow). What the servicers call for each message."""
        attempt = 0
        while True:
            try:
                return self.process(pipeline, payload, msg_id, key)
            except UserCodeError as exc:
                work = self.work(pipeline)
                policy = work.policy(exc.step)
                if policy.action == FAIL:
                    raise
                if attempt < policy.retries:
                    time.sleep(policy.delay(attempt))
                    attempt += 1
                    continue
                self.dead_lettered += 1
                record = dead_letter(work.pipeline_name, self.vertex.name, exc, msg_id, payload,
                                     attempt + 1, self._shown(pipeline, payload))
                log.warning("dead letter: %s (message %s, %d attempt(s))", exc.message,
                            msg_id or "?", attempt + 1)
                return [Out(record, (), (DEAD_LETTER,))]

    def _shown(self, pipeline: int | None, payload: bytes) -> str | None:
        """``repr`` of the object a payload between vertices stands for (None at a source, whose
        payload is the sender's bytes, or when it cannot be read back)."""
        c = self._compile(pipeline)
        if c.decode or c.encoded:
            return None
        try:
            return repr(self.codec.loads(payload))[:_SHOWN]
        except Exception:  # noqa: BLE001 - the record is written whatever the payload is
            return None

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
        written by one caller of the core replays the same for any other. The usual record, one
        output without keys, tags or event time, is its bytes after :data:`_ONE_VALUE`; any
        other is a pickle (which never starts with that byte). Bytes that would make the record
        start as a signed blob does (:data:`.signing.PREFIX`) are pickled too: a store without a
        key refuses such a blob as signed."""
        if not outs:
            return b""
        if len(outs) == 1:
            value, keys, tags, event_time = outs[0]
            if not keys and not tags and event_time is None:
                data = value if serialized else self.codec.dumps(value)
                if type(data) is bytes and not data.startswith(_SIGNED_AFTER_MARKER):
                    return _ONE_VALUE + data
        if serialized:
            return pickle.dumps([tuple(o) for o in outs], protocol=5)
        dumps = self.codec.dumps
        return pickle.dumps([(dumps(o.value), o.keys, o.tags) for o in outs], protocol=5)

    def _replay(self, recorded: bytes, serialize: bool) -> list[Out]:
        if not recorded:
            return []
        if recorded[:1] == _ONE_VALUE:
            outs = [Out(recorded[1:])]
        else:
            outs = [Out(*o) for o in pickle.loads(recorded)]
        if serialize:
            return outs
        # The recorded values are payload bytes; a caller passing objects gets the objects back.
        # (A state vertex that encodes for the sinks asks for its bytes: ``serialize=True``.)
        loads = self.codec.loads
        return [Out(loads(o.value), o.keys, o.tags) for o in outs]
