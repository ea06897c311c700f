"""How objects travel between vertices and into state snapshots.

The defaults: pickle protocol 5, falling back to cloudpickle for what pickle cannot handle (lambdas,
classes defined in ``__main__``...). An app module that defines both ``serialize`` and
``deserialize`` at top level replaces them, as in Wallaroo::

    codec = Codec.for_module(app_module)
    codec.loads(codec.dumps({"a": 1}))   # {'a': 1}
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from types import ModuleType
from typing import Any

import attrs


def serialize(obj: Any) -> bytes:
    """Wallaroo's default ``serialize``: pickle (protocol 5), cloudpickle when pickle cannot."""
    try:
        return pickle.dumps(obj, protocol=5)
    except (pickle.PicklingError, AttributeError, TypeError):
        import cloudpickle  # only paid for by the objects that need it

        return cloudpickle.dumps(obj, protocol=5)


def deserialize(data: bytes) -> Any:
    """Wallaroo's default ``deserialize`` (reads what ``serialize`` and cloudpickle wrote)."""
    return pickle.loads(data)


@attrs.frozen
class Codec:
    """The pair of functions an app uses for payloads and snapshots."""

    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]
    custom: bool = False

    @classmethod
    def for_module(cls, module: ModuleType | None) -> Codec:
        """The module's own ``serialize``/``deserialize`` if it defines both, else the defaults."""
        ser = getattr(module, "serialize", None)
        de = getattr(module, "deserialize", None)
        if callable(ser) and callable(de) and ser is not serialize and de is not deserialize:
            return cls(ser, de, custom=True)
        return cls(serialize, deserialize)
