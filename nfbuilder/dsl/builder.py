"""``ApplicationBuilder``: Wallaroo's chainable builder whose ``build()`` returns the action list.

::

    ab = ApplicationBuilder("Reverse Word")
    ab.new_pipeline("reverse", TCPSourceConfig("127.0.0.1", "7010", decode))
    ab.to(reverse)
    ab.to_sink(TCPSinkConfig("127.0.0.1", "7002", encode))
    actions = ab.build()   # [("name", "Reverse Word"), ("new_pipeline", ...), ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nfbuilder.dsl.configs import StateBuilder
from nfbuilder.dsl.validate import validate_actions


class ApplicationBuilder:
    """Collects Wallaroo actions; every method but ``build`` returns ``self``."""

    def __init__(self, name: str) -> None:
        self._actions: list[tuple[Any, ...]] = [("name", name)]

    def new_pipeline(self, name: str, source_config: Any) -> ApplicationBuilder:
        self._actions.append(("new_pipeline", name, _to_tuple(source_config)))
        return self

    def to(self, computation: Any) -> ApplicationBuilder:
        self._actions.append(("to", computation))
        return self

    def to_parallel(self, computation: Any) -> ApplicationBuilder:
        self._actions.append(("to_parallel", computation))
        return self

    def to_stateful(
        self, computation: Any, state_class: Any, state_name: str
    ) -> ApplicationBuilder:
        self._actions.append(
            ("to_stateful", computation, StateBuilder(state_name, state_class), state_name)
        )
        return self

    def to_state_partition(
        self,
        computation: Any,
        state_class: Any,
        state_name: str,
        partition_function: Any,
        partition_keys: Any = None,
    ) -> ApplicationBuilder:
        """``partition_keys=None`` (or ``[]``) creates keys on demand, as Wallaroo 0.5 did."""
        self._actions.append(
            (
                "to_state_partition",
                computation,
                StateBuilder(state_name, state_class),
                state_name,
                partition_function,
                [] if partition_keys is None else partition_keys,
            )
        )
        return self

    def to_state_partition_u64(
        self,
        computation: Any,
        state_class: Any,
        state_name: str,
        partition_function: Any,
        partition_keys: Any = None,
    ) -> ApplicationBuilder:
        """As ``to_state_partition`` with non-negative integer keys (Wallaroo 0.4)."""
        self._actions.append(
            (
                "to_state_partition_u64",
                computation,
                StateBuilder(state_name, state_class),
                state_name,
                partition_function,
                [] if partition_keys is None else partition_keys,
            )
        )
        return self

    def to_sink(self, sink_config: Any) -> ApplicationBuilder:
        self._actions.append(("to_sink", _to_tuple(sink_config)))
        return self

    def to_sinks(self, sink_configs: Sequence[Any]) -> ApplicationBuilder:
        """Broadcast every output to each of ``sink_configs``."""
        self._actions.append(("to_sinks", [_to_tuple(c) for c in sink_configs]))
        return self

    def on_error(self, action: str, retries: int | None = None,
                 backoff: float | None = None) -> ApplicationBuilder:
        """What every step (unless its decorator says otherwise) does with a message its code
        cannot handle: retry ``retries`` times (default 3), ``backoff`` seconds apart (default
        0.05, doubling), then ``"dead-letter"`` (record it, go on: the default) or ``"fail"``
        (the vertex exits and is restarted, as Numaflow does). An nfbuilder extension::

            ab.on_error("dead-letter", retries=1)
        """
        self._actions.append(("on_error", action, retries, backoff))
        return self

    def done(self) -> ApplicationBuilder:
        self._actions.append(("done",))
        return self

    def build(self) -> list[tuple[Any, ...]]:
        """Validate (Wallaroo 0.5 rules and ours) and return the action list itself."""
        validate_actions(self._actions)
        return self._actions


def _to_tuple(config: Any) -> Any:
    # Anything without to_tuple() is kept as given; validation reports it with its position.
    to_tuple = getattr(config, "to_tuple", None)
    return to_tuple() if callable(to_tuple) else config
