"""Compatibility module: ``import wallaroo`` gives nfbuilder's Wallaroo API, so a Wallaroo
application runs unchanged."""

from nfbuilder import *  # noqa: F403
from nfbuilder import __all__  # noqa: F401


def __getattr__(name: str) -> type:
    """Wallaroo 0.5's per-function classes: ``wallaroo.Computation__double``."""
    from nfbuilder.dsl.decorators import function_class

    return function_class(name, __name__)
