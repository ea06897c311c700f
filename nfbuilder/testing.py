"""Run a whole application in-process, for users' unit tests: no sockets, no processes, no threads.

The app is planned exactly as ``compile`` and ``run`` plan it, every vertex gets the same
``VertexProgram`` the containers run, and messages are routed along the plan's edges (tag
conditions with ``or`` semantics, the reserved DROP tag), so what passes here follows the same step
rules as a deployment::

    from nfbuilder.testing import run, run_app

    outs = run_app("apps/reverse.py", ["--in", "h:7010", "--out", "h:7002"],
                   {"reverse": [b"\\x00\\x00\\x00\\x03abc"]})
    outs            # {'sink': [b'cba\\n']}

    result = run(word_count, ["--in", "h:1", "--out", "h:2"], {0: ["a b a"]})
    result.state("word totals", "a").word_totals    # {'a': 2}

Inputs are fed pipeline by pipeline **in the order of the ``inputs`` keys** (a dict keeps its
insertion order), every item of a pipeline before the next pipeline; each message goes all the way
to the sinks before the next one is read. Give the pipelines in the order a test needs (e.g.
``market_spread`` wants its market data before its orders).

Message ids follow Numaflow's ``<vertex>-<n>-<i>`` (output ``i`` of the ``n``-th message the vertex
read) and are the same on every run: with a durable ``state_store`` reused across runs, a second
run's messages are recognised as redeliveries of the first run's: not applied again, their
recorded outputs re-emitted, exactly as after a crash. Use a fresh store per test (e.g. under
``tmp_path``).

**Objects or payloads between vertices** (``serialize``). A deployment sends every message from
one vertex to the next as ``serialize(obj)`` bytes and the next vertex deserializes it. By
default the harness passes the objects themselves, through the same step core (several times
faster: no pickle round trip per hop). Two things only a serializing run shows:

- an output the codec cannot serialize (an open file, a lock, a generator...) fails here as it
  would in a deployment, instead of passing silently;
- every vertex works on its own copy. With objects, a step that changes an object it received
  changes it for the vertex that sent it too (e.g. a state step that returns its state's own
  list, and a later step that appends to it, changes the state).

Pass ``serialize=True`` to get both (what a deployment does, at the cost of speed), e.g. in one
test per app::

    run_app("apps/word_count.py", args, inputs, serialize=True)

Either way the partition key of a message is computed once, by the vertex before the state
vertex (as Numaflow routes it), and handed to the state step with the message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import attrs

from nfbuilder._harness import BYTES, Graph
from nfbuilder.codec import Codec
from nfbuilder.loader import AppLoadError, app_from_actions, load_app
from nfbuilder.plan.names import slug
from nfbuilder.runtime.core import SINGLE_KEY
from nfbuilder.runtime.statetable import StateTable
from nfbuilder.topology import Application, GenSource, StateSpec, UserSource, partition_key

__all__ = ["RunResult", "run", "run_app"]

AppLike = str | ModuleType | Callable[[list[str]], list]


@attrs.frozen
class RunResult:
    """What an in-process run produced.

    ``outputs``: per sink vertex, the bytes it would write (a TCP sink's encoder output, a Kafka
    sink's record values), in order. ``unknown_keys``: per state vertex, how many messages were
    dropped because their partition key was not among the declared ``partition_keys``.

        result = run("apps/alphabet.py", ["--in", "h:1", "--out", "h:2"], {0: frames})
        result.outputs["sink"][-1]
        result.state("letter state").letters["a"]
    """

    outputs: dict[str, list[bytes]]
    unknown_keys: dict[str, int]
    table: StateTable = attrs.field(repr=False)
    specs: dict[str, StateSpec] = attrs.field(factory=dict, repr=False)

    def output(self) -> bytes:
        """Every sink's bytes joined, sinks in plan order: ``parse_output(result.output())``."""
        return b"".join(b"".join(chunks) for chunks in self.outputs.values())

    def state(self, state_name: str, key: Any = None) -> Any:
        """The live state object of ``state_name`` for partition ``key`` (omit ``key`` for a
        ``to_stateful`` state). ``key`` is converted as the runtime converts a partition
        function's result (``b"a"`` and ``"a"`` are one key; an int is ``chr(key)``, except for
        ``to_state_partition_u64``)."""
        spec = self.specs.get(state_name)
        k = SINGLE_KEY if key is None else partition_key(key, spec is not None and spec.u64)
        try:
            return self.table.get(state_name, k)
        except KeyError:
            known = sorted(self.table.keys(state_name))
            raise KeyError(
                f"no state object {state_name!r} for key {k!r}: no message reached it. Keys with "
                f"a state object: {known or 'none'}"
                + ("" if key is not None else " (pass key= for a partitioned state)")
            ) from None


def run_app(
    app: AppLike,
    args: Sequence[str] = (),
    inputs: Mapping[str | int, Sequence[Any] | int] | None = None,
    *,
    state_store: str | None = None,
    fuse: bool = False,
    serialize: bool = False,
) -> dict[str, list[bytes]]:
    """Run ``app`` on ``inputs`` and return ``{sink vertex name: [outputs in order]}``.

    ``app`` is a module path or ``.py`` file, a module, or an ``application_setup`` function;
    ``args`` are the app's arguments without the program name (``["--in", "h:p", ...]``).
    ``inputs`` maps a pipeline name or index to its items: ``bytes`` are framed messages as a TCP
    sender sends them (one or several whole frames per item) or, for a Kafka source, record
    values; anything else is an already-decoded object (the decoder is skipped). For a
    ``GenSourceConfig`` or ``UserSourceConfig`` pipeline an int says how many messages to take
    from its generator or source (fewer if it ends first; a source's records are acked once
    handled): ``{"numbers": 100}``.

        run_app(word_count, ["--in", "h:1", "--out", "h:2"], {"Split and Count": ["a b a"]})
        # {'sink': [b'a => 1\\n', b'b => 1\\n', b'a => 2\\n']}

    ``serialize=True`` sends each message between vertices as the app's serialized bytes, as
    a deployment does (slower; see the module docstring for what it catches that the default
    object passing does not).

    A user function that raises, or breaks a step rule, raises ``UserCodeError`` naming the
    pipeline, the step and the function.
    """
    return run(app, args, inputs, state_store=state_store, fuse=fuse, serialize=serialize).outputs


def run(
    app: AppLike,
    args: Sequence[str] = (),
    inputs: Mapping[str | int, Sequence[Any] | int] | None = None,
    *,
    state_store: str | None = None,
    fuse: bool = False,
    serialize: bool = False,
) -> RunResult:
    """Like :func:`run_app` but returns a :class:`RunResult` with the live state objects.

        result = run("apps/word_count.py", ["--in", "h:1", "--out", "h:2"], {0: [frame]})
        result.state("word totals", "r").word_totals["river"]
    """
    application, codec = _load(app, args)
    order = _feed_order(application, inputs or {})
    store = None
    if state_store is not None:
        from nfbuilder.runtime.state.store import open_store

        store = open_store(state_store, namespace=slug(application.name, "app"))
    table = StateTable(store, codec)
    try:
        graph = Graph(application, codec, table, fuse, serialize)
        for pipeline, items in order:
            graph.feed(pipeline, items)
    finally:
        if store is not None:
            store.close()
    return RunResult(graph.outputs, graph.unknown_keys(), table, graph.state_specs())


# -- loading --------------------------------------------------------------------------------
def _load(app: AppLike, args: Sequence[str]) -> tuple[Application, Codec]:
    if isinstance(args, (str, bytes)):
        raise TypeError(
            f"args must be a list of strings, got {type(args).__name__} {args!r}; "
            "write e.g. ['--in', 'h:7010', '--out', 'h:7002']"
        )
    if isinstance(app, str):
        loaded = load_app(app, args)
        return loaded.app, Codec.for_module(loaded.module)
    if isinstance(app, ModuleType):
        module: ModuleType | None = app
        setup = getattr(app, "application_setup", None)
        if not callable(setup):
            raise AppLoadError(
                f"module {app.__name__!r} defines no application_setup(args) function. Add one "
                "that returns ApplicationBuilder(...)...build(), or pass the function itself."
            )
    elif callable(app):
        module, setup = inspect.getmodule(app), app
    else:
        raise TypeError(
            f"app must be a module path, a module or an application_setup function, got "
            f"{type(app).__name__} {app!r}"
        )
    name = module.__name__ if module is not None else "app"
    # Exceptions from the user's own setup (e.g. WallarooParameterError) propagate unchanged:
    # in a unit test the original traceback is what the user wants to see.
    actions = setup([name, *args])
    who = str(getattr(setup, "__qualname__", setup))
    app_ = app_from_actions(actions, returned_by=who, where=who, args=args)
    return app_, Codec.for_module(module)


def _feed_order(
    app: Application, inputs: Mapping[Any, Sequence[Any] | int]
) -> list[tuple[int, Sequence[Any] | int]]:
    """``[(pipeline index, items)]`` in the order of the ``inputs`` keys, keys checked."""
    if not isinstance(inputs, Mapping):
        raise TypeError(
            f"inputs must be a mapping from pipeline name or index to a list of items, got "
            f"{type(inputs).__name__}; write e.g. {{0: [b'...']}}"
        )
    names = ", ".join(f"{p.index} = {p.name!r}" for p in app.pipelines)
    order: list[tuple[int, Sequence[Any] | int]] = []
    given: dict[int, Any] = {}
    for key, items in inputs.items():
        index = None
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(app.pipelines):
            index = key
        elif isinstance(key, str):
            index = next((p.index for p in app.pipelines if p.name == key), None)
        if index is None:
            raise KeyError(
                f"inputs key {key!r} names no pipeline of {app.name!r}; use a pipeline name "
                f"or index: {names}"
            )
        if index in given:
            raise ValueError(
                f"inputs give pipeline {app.pipelines[index].name!r} twice (as {given[index]!r} "
                f"and {key!r}); put all its items in one list"
            )
        generated = isinstance(app.pipelines[index].source, (GenSource, UserSource))
        if generated and isinstance(items, int) and not isinstance(items, bool):
            if items < 0:
                raise ValueError(f"inputs[{key!r}]: how many generated messages to take must "
                                 f"be >= 0, got {items}")
        elif isinstance(items, (str, *BYTES)) or not isinstance(items, Sequence):
            also = (" or, for this pipeline's generator or user source, how many messages to "
                    "take from it (an int)") if generated else ""
            raise TypeError(
                f"inputs[{key!r}] must be a list of items{also}, got {type(items).__name__}; "
                f"wrap a single item in a list: {{{key!r}: [item]}}"
            )
        given[index] = key
        order.append((index, items))
    return order
